"""xLSTM-7B checkpoints: parameter names, weight modes, safetensors loading, `transformers`.

Names. `xLSTMLarge` uses the `xlstm` package's names (docs/checkpoints.md); `transformers`'
`xLSTMForCausalLM` differs only in the embedding:

    ours / xlstm                          transformers
    embedding.weight                      backbone.embeddings.weight
    backbone.blocks.{j}.<...>             backbone.blocks.{j}.<...>        (same)
    backbone.out_norm.weight, lm_head.weight                              (same)

Weight modes. "fused" concatenates rows: qkv_opreact = q|k|v|ogate_preact, ifgate_preact =
igate_preact|fgate_preact (weights and biases), proj_up_gate_z = proj_up_gate|proj_up.
`convert_weight_mode` goes either way, so a checkpoint in one mode loads into a model in the
other.

Checkpoint directory (the format xLSTM-7B ships in): `config.json` (a `transformers`
xLSTMConfig) and either `model.safetensors.index.json` + the shards its `weight_map` names,
or a single `model.safetensors`. Either naming is recognized from the keys.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Mapping, Optional

import torch

from .config import WEIGHT_MODES, xLSTMLargeConfig

__all__ = ["to_transformers_state_dict", "from_transformers_state_dict", "detect_weight_mode",
           "convert_weight_mode", "load_safetensors_dir", "read_checkpoint", "transformers_weights",
           "INDEX_FILE", "SINGLE_FILE", "CONFIG_FILE"]

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
CONFIG_FILE = "config.json"

_OURS_EMB, _HF_EMB = "embedding.weight", "backbone.embeddings.weight"

# (fused name, [single names in row order]) per block; paths relative to backbone.blocks.{j}.
_FUSED_GROUPS = (
    ("mlstm_layer.qkv_opreact", ["mlstm_layer.q", "mlstm_layer.k", "mlstm_layer.v", "mlstm_layer.ogate_preact"]),
    ("mlstm_layer.ifgate_preact", ["mlstm_layer.igate_preact", "mlstm_layer.fgate_preact"]),
    ("ffn.proj_up_gate_z", ["ffn.proj_up_gate", "ffn.proj_up"]),
)


# ---------------------------------------------------------------------- names

def to_transformers_state_dict(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Our (= `xlstm` package) names -> `transformers` xLSTMForCausalLM names. Tensors are
    not copied. An all-zero `backbone.out_norm.bias` (ours with use_bias=True; transformers'
    final norm has none) is dropped; a non-zero one cannot be represented and raises."""
    if _OURS_EMB not in state_dict:
        raise KeyError(f"state_dict: expected our names ({_OURS_EMB!r} ...); got keys like "
                       f"{list(state_dict)[:3]}")
    out = {}
    for k, t in state_dict.items():
        if k == "backbone.out_norm.bias":
            if bool(torch.any(t != 0)):
                raise ValueError("state_dict: backbone.out_norm.bias is non-zero, but the final norm of "
                                 "transformers' xLSTMModel has no bias")
            continue
        out[_HF_EMB if k == _OURS_EMB else k] = t
    return out


def from_transformers_state_dict(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """`transformers` names -> ours. Tensors are not copied. Accepts the state dict of an
    xLSTMForCausalLM (or of its `backbone`, an xLSTMModel: names without "backbone.", no
    lm_head)."""
    keys = list(state_dict)
    if "embeddings.weight" in state_dict and _HF_EMB not in state_dict:       # an xLSTMModel
        state_dict = {f"backbone.{k}": t for k, t in state_dict.items()}
    elif _HF_EMB not in state_dict:
        raise KeyError(f"state_dict: expected transformers names ({_HF_EMB!r} ...); got keys like {keys[:3]}")
    return {(_OURS_EMB if k == _HF_EMB else k): t for k, t in state_dict.items()}


# ---------------------------------------------------------------------- weight modes

def detect_weight_mode(state_dict: Mapping[str, torch.Tensor]) -> str:
    """"fused" if the state dict holds fused projections, else "single"."""
    fused = any(k.endswith(".mlstm_layer.qkv_opreact.weight") for k in state_dict)
    single = any(k.endswith(".mlstm_layer.q.weight") for k in state_dict)
    if fused and single:
        raise ValueError("state_dict: holds both fused (qkv_opreact) and single (q, k, v) weights")
    return "fused" if fused else "single"


def convert_weight_mode(state_dict: Mapping[str, torch.Tensor], config: xLSTMLargeConfig,
                        to: str) -> Dict[str, torch.Tensor]:
    """Return the state dict in weight mode `to` ("single" or "fused"); names of either
    convention. Concatenation makes new tensors; splitting returns views of the fused ones."""
    if to not in WEIGHT_MODES:
        raise ValueError(f"to: expected one of {WEIGHT_MODES}, got {to!r}")
    out = dict(state_dict)
    if detect_weight_mode(out) == to:
        return out
    qk, v, NH, P = config.qk_dim, config.v_dim, config.num_heads, config.ffn_dim
    sizes = {"mlstm_layer.qkv_opreact": [qk, qk, v, v], "mlstm_layer.ifgate_preact": [NH, NH],
             "ffn.proj_up_gate_z": [P, P]}
    for j in range(config.num_blocks):
        pre = f"backbone.blocks.{j}."
        for fused, parts in _FUSED_GROUPS:
            for kind in ("weight", "bias"):
                if to == "fused":
                    names = [f"{pre}{p}.{kind}" for p in parts]
                    present = [n in out for n in names]
                    if not any(present):
                        continue
                    if not all(present):
                        raise KeyError(f"state_dict: {[n for n, ok in zip(names, present) if not ok]} missing "
                                       f"(needed to build {pre}{fused}.{kind})")
                    out[f"{pre}{fused}.{kind}"] = torch.cat([out.pop(n) for n in names], dim=0)
                else:
                    name = f"{pre}{fused}.{kind}"
                    if name not in out:
                        continue
                    t = out.pop(name)
                    if t.shape[0] != sum(sizes[fused]):
                        raise ValueError(f"{name}: expected {sum(sizes[fused])} rows for the config, "
                                         f"got shape {tuple(t.shape)}")
                    for p, piece in zip(parts, t.split(sizes[fused], dim=0)):
                        out[f"{pre}{p}.{kind}"] = piece
    return out


# ---------------------------------------------------------------------- safetensors

def load_safetensors_dir(path, device="cpu", dtype: Optional[torch.dtype] = None) -> Dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory: the shards listed in `model.safetensors.index.json`
    (each checked to hold the keys the index assigns to it), or `model.safetensors`. Floating
    tensors are cast to `dtype` shard by shard (None keeps the stored dtype)."""
    try:
        from safetensors.torch import load_file
    except ImportError as e:   # pragma: no cover - safetensors is an install requirement
        raise ImportError("loading checkpoints needs the `safetensors` package (pip install safetensors)") from e
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"path: expected a checkpoint directory, got {str(path)!r} (not a directory)")
    index, single = path / INDEX_FILE, path / SINGLE_FILE
    if index.exists():
        with open(index) as fh:
            weight_map = json.load(fh).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index}: expected a non-empty 'weight_map' {{tensor name: shard file}}")
        shards: Dict[str, list] = {}
        for name, shard in weight_map.items():
            shards.setdefault(shard, []).append(name)
        missing = [s for s in shards if not (path / s).exists()]
        if missing:
            raise FileNotFoundError(f"{index} names shard files that are not in {str(path)!r}: {sorted(missing)}")
    elif single.exists():
        shards = {SINGLE_FILE: None}
    else:
        raise FileNotFoundError(f"{str(path)!r}: expected {INDEX_FILE} (a sharded checkpoint) or {SINGLE_FILE}")
    out: Dict[str, torch.Tensor] = {}
    for shard, names in shards.items():
        tensors = load_file(str(path / shard), device=str(device))
        if names is not None:
            absent = sorted(set(names) - set(tensors))
            if absent:
                raise KeyError(f"{shard}: the index assigns {absent[:5]}{' ...' if len(absent) > 5 else ''} "
                               f"to this shard, but it does not hold them")
        for name, t in tensors.items():
            if dtype is not None and t.is_floating_point():
                t = t.to(dtype)
            out[name] = t
    return out


def _resolve_mode(sd, config, weight_mode):
    target = weight_mode if weight_mode is not None else detect_weight_mode(sd)
    if target not in WEIGHT_MODES:
        raise ValueError(f"weight_mode: expected None or one of {WEIGHT_MODES}, got {weight_mode!r}")
    config.weight_mode = target
    return convert_weight_mode(sd, config, target)


def read_checkpoint(path, dtype: Optional[torch.dtype] = None, device=None, weight_mode: Optional[str] = None,
                    config: Optional[xLSTMLargeConfig] = None, **config_overrides):
    """Read an xLSTM-7B style checkpoint directory: its config and its weights under our names
    (what `xLSTMLarge.from_pretrained` / `load_checkpoint` build the model from).

    Args:
        path: directory with config.json and model.safetensors.index.json + shards (or
            model.safetensors); tensor names of `transformers` or of the `xlstm` package.
        dtype: cast floating weights to this dtype (None: as stored).
        device: where the weights are loaded (default CPU); no second copy is made.
        weight_mode: "single" / "fused" for the model (None: the checkpoint's); weights are
            converted if the checkpoint has the other mode.
        config: use this config instead of config.json; config_overrides replace its fields
            (e.g. chunk_size=64).
    Returns (config, state dict). The LM head is the checkpoint's `lm_head.weight` even with
    `tie_word_embeddings` (as transformers loads it).
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"path: expected a checkpoint directory, got {str(path)!r} (not a directory)")
    if config is None:
        cfg_file = path / CONFIG_FILE
        if not cfg_file.exists():
            raise FileNotFoundError(f"{str(path)!r}: no {CONFIG_FILE}; pass config=xLSTMLargeConfig(...)")
        with open(cfg_file) as fh:
            config = xLSTMLargeConfig.from_dict(json.load(fh), **config_overrides)
    elif not isinstance(config, xLSTMLargeConfig):
        raise TypeError(f"config: expected an xLSTMLargeConfig or None, got {type(config).__name__}")
    else:
        config = xLSTMLargeConfig(**{**config.to_dict(), **config_overrides})
    sd = load_safetensors_dir(path, device="cpu" if device is None else device, dtype=dtype)
    if _HF_EMB in sd:
        sd = from_transformers_state_dict(sd)
    return config, _resolve_mode(sd, config, weight_mode)


def transformers_weights(hf_model, copy: bool = False, weight_mode: Optional[str] = None,
                         **config_overrides):
    """The config and the weights (our names) of a loaded `transformers` xLSTMForCausalLM:
    what `xLSTMLarge.from_transformers` builds the model from. Returns (config, state dict).

    copy=False shares the weight tensors with `hf_model` (no extra memory; in-place updates
    show in both); copy=True clones them. weight_mode: None keeps transformers' mode, or
    "single" / "fused" (converted tensors are new or views). Device and dtype follow
    hf_model; config_overrides replace fields of the derived config (e.g. chunk_size).
    """
    cfg = getattr(hf_model, "config", None)
    if not isinstance(hf_model, torch.nn.Module) or getattr(cfg, "model_type", None) != "xlstm":
        raise TypeError(f"hf_model: expected a transformers xLSTMForCausalLM (config.model_type 'xlstm'), "
                        f"got {type(hf_model).__name__}")
    if not hasattr(hf_model, "lm_head") or not hasattr(hf_model, "backbone"):
        raise TypeError(f"hf_model: expected an xLSTMForCausalLM (with lm_head), got {type(hf_model).__name__}; "
                        f"an xLSTMModel has no LM head")
    config = xLSTMLargeConfig.from_transformers(cfg, **config_overrides)
    sd = from_transformers_state_dict(hf_model.state_dict())
    if copy:
        sd = {k: t.clone() for k, t in sd.items()}
    return config, _resolve_mode(sd, config, weight_mode)
