"""Configuration of the xLSTM-7B architecture ("xLSTM Large", docs/checkpoints.md).

Field names and defaults are those of the 7B checkpoint's config: the Hugging Face
`transformers` `xLSTMConfig` (model_type "xlstm") and the `xlstm` package's `xLSTMLargeConfig`
use the same names for the architecture, so `xLSTMLargeConfig.from_dict(json.load(...))` reads
either. Fields there that only pick a kernel (`chunkwise_kernel`, `step_kernel`, `mode`, ...)
are accepted and ignored; `chunk_size` here is the chunk of our `mlstm_chunkwise` (None: the
op picks one per sequence length).

Derived sizes (as in `transformers`):
    qk_dim = int(embedding_dim * qk_dim_factor)       q, k projections (E -> qk_dim)
    v_dim  = int(embedding_dim * v_dim_factor)        v, output gate, per-head norm (E -> v_dim)
    ffn_dim = embedding_dim * ffn_proj_factor rounded up to ffn_round_up_to_multiple_of
    head dims: qk_dim / num_heads (DQK), v_dim / num_heads (DV)
7B: E=4096, NH=8, DQK=256, DV=512, 32 blocks, vocab 50304, ffn_dim 10944.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from ...checks import check_chunk_size

__all__ = ["xLSTMLargeConfig"]

WEIGHT_MODES = ("single", "fused")

# Names a transformers / xlstm config may carry for our fields (first found wins).
_ALIASES = {"embedding_dim": ("embedding_dim", "hidden_size"),
            "num_blocks": ("num_blocks", "num_hidden_layers"),
            "tie_word_embeddings": ("tie_word_embeddings",)}


def _round_up(x: float, multiple_of: int) -> int:
    """Rounding of the FFN width exactly as `transformers` computes it (x may be fractional)."""
    return int(((x + multiple_of - 1) // multiple_of) * multiple_of)


@dataclass
class xLSTMLargeConfig:
    """Architecture of `xLSTMLarge`; defaults give xLSTM-7B.

    weight_mode "single" keeps separate q, k, v, ogate_preact, igate_preact, fgate_preact and
    FFN proj_up_gate / proj_up weights; "fused" concatenates q|k|v|ogate into `qkv_opreact`,
    igate|fgate into `ifgate_preact` and gate|up into `proj_up_gate_z` (fewer, larger matmuls).

    tie_word_embeddings is read from config.json and kept (it round-trips), but it does not tie
    anything: transformers' xLSTMForCausalLM (5.23) declares no tied weights, so with either
    value it builds, saves and loads `lm_head.weight` as a parameter of its own, and the logits
    use it. `xLSTMLarge` does the same, so both compute the same logits from one checkpoint.
    """
    vocab_size: int = 50304
    embedding_dim: int = 4096
    num_blocks: int = 32
    num_heads: int = 8
    use_bias: bool = False
    add_out_norm: bool = True
    norm_eps: float = 1e-6
    norm_reduction_force_float32: bool = True
    qk_dim_factor: float = 0.5
    v_dim_factor: float = 1.0
    gate_soft_cap: Optional[float] = 15.0
    output_logit_soft_cap: Optional[float] = 30.0
    ffn_proj_factor: float = 2.667
    ffn_round_up_to_multiple_of: int = 64
    weight_mode: str = "single"
    eps: float = 1e-6                       # of the mLSTM normalizer
    chunk_size: Optional[int] = None        # of mlstm_chunkwise; None: chosen per length
    tie_word_embeddings: bool = False

    def __post_init__(self):
        self.validate()

    # ------------------------------------------------------------------ derived sizes
    @property
    def qk_dim(self) -> int:
        return int(self.embedding_dim * self.qk_dim_factor)

    @property
    def v_dim(self) -> int:
        return int(self.embedding_dim * self.v_dim_factor)

    @property
    def qk_head_dim(self) -> int:
        return self.qk_dim // self.num_heads

    @property
    def v_head_dim(self) -> int:
        return self.v_dim // self.num_heads

    @property
    def ffn_dim(self) -> int:
        return _round_up(self.embedding_dim * self.ffn_proj_factor, self.ffn_round_up_to_multiple_of)

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise ValueError naming the first field that cannot build a model."""
        for name in ("vocab_size", "embedding_dim", "num_blocks", "num_heads", "ffn_round_up_to_multiple_of"):
            val = getattr(self, name)
            if not isinstance(val, int) or isinstance(val, bool) or val <= 0:
                raise ValueError(f"xLSTMLargeConfig.{name}: expected an int > 0, got {val!r}")
        if self.weight_mode not in WEIGHT_MODES:
            raise ValueError(f"xLSTMLargeConfig.weight_mode: expected one of {WEIGHT_MODES}, "
                             f"got {self.weight_mode!r}")
        for name in ("qk_dim", "v_dim"):
            dim = getattr(self, name)
            if dim <= 0 or dim % self.num_heads:
                raise ValueError(f"xLSTMLargeConfig: {name} = int(embedding_dim * {name}_factor) = {dim} "
                                 f"must be > 0 and divisible by num_heads={self.num_heads}")
        if self.ffn_dim <= 0:
            raise ValueError(f"xLSTMLargeConfig.ffn_proj_factor: expected > 0, got {self.ffn_proj_factor!r}")
        check_chunk_size(self.chunk_size, "xLSTMLargeConfig.chunk_size")
        for name in ("gate_soft_cap", "output_logit_soft_cap"):
            val = getattr(self, name)
            if val is not None and not val > 0:
                raise ValueError(f"xLSTMLargeConfig.{name}: expected None or a number > 0, got {val!r}")
        if not self.norm_eps >= 0 or not self.eps >= 0:
            raise ValueError(f"xLSTMLargeConfig: norm_eps and eps must be >= 0, got "
                             f"{self.norm_eps!r}, {self.eps!r}")

    # ------------------------------------------------------------------ (de)serialization
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], **overrides) -> "xLSTMLargeConfig":
        """Build from a config dict: ours (`to_dict()`), a `transformers` config.json
        (model_type "xlstm") or an `xlstm` package xLSTMLargeConfig. Unknown keys (kernel
        choices, token ids, ...) are ignored, and so is `chunk_size` of a config that names
        another kernel (`chunkwise_kernel`); `overrides` replace fields."""
        if not isinstance(d, Mapping):
            raise TypeError(f"config: expected a mapping of config fields, got {type(d).__name__}")
        model_type = d.get("model_type")
        if model_type not in (None, "xlstm"):
            raise ValueError(f"config: model_type {model_type!r} is not an xLSTM-Large config "
                             f"(expected 'xlstm')")
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name == "chunk_size" and "chunkwise_kernel" in d:
                continue      # the chunk of another kernel (transformers: 64); ours picks its own
            for key in _ALIASES.get(f.name, (f.name,)):
                if d.get(key) is not None:
                    kwargs[f.name] = d[key]
                    break
        kwargs.update(overrides)
        return cls(**kwargs)

    @classmethod
    def from_transformers(cls, hf_config, **overrides) -> "xLSTMLargeConfig":
        """From a loaded `transformers.xLSTMConfig`. transformers' xLSTMModel always applies
        its final norm, so `add_out_norm` is True whatever the config says."""
        d = hf_config.to_dict() if hasattr(hf_config, "to_dict") else dict(vars(hf_config))
        d["add_out_norm"] = True
        return cls.from_dict(d, **overrides)
