"""The xLSTM-7B architecture ("xLSTM Large", docs/checkpoints.md) on xlstm-triton's kernels.

    x = embedding(input_ids)                                          (B, S, E)
    per block:  x = x + mLSTMLayer(RMSNorm(x));  x = x + SwiGLU(RMSNorm(x))
    logits = cap_30(lm_head(RMSNorm(x)))                              (B, S, V), float32

    mLSTMLayer(x):  q, k = x W_q, x W_k (E -> qk_dim);  v, o = x W_v, x W_o (E -> v_dim)
                    i, f = cap_15(x W_i + b_i), cap_15(x W_f + b_f)   (E -> NH)
                    h = mLSTM(q, k, v, i, f) per head                 (DQK = qk_dim/NH, DV = v_dim/NH)
                    y = out_proj(sigmoid(o) * MultiHeadLayerNorm(h))
    SwiGLU(x) = proj_down(silu(x W_gate) * x W_up)                    (E -> ffn_dim -> E)

with cap_c(x) = c * tanh(x / c). Parameter names and shapes are those of the `xlstm` package's
`xLSTMLarge` (`embedding.weight`, `backbone.blocks.{i}...`, `backbone.out_norm.weight`,
`lm_head.weight`; `docs/checkpoints.md`), in the "single" or the "fused" weight mode;
`xlstm_triton.models.checkpoint` maps them to and from the `transformers` names.

State: one `mLSTMState(c, n, m)` per block, float32: c (B, NH, DQK, DV), n (B, NH, DQK),
m (B, NH, 1) (the memory is c * exp(m)). A sequence of length 1 runs `mlstm_step` (decoding),
longer ones `mlstm_chunkwise` (prefill, training), both starting from the given state.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.mlstm import mlstm_chunkwise, mlstm_step
from ..nn.components import MultiHeadLayerNorm, small_init_, wang_init_
from ..checks import check_tensor
from ..generation import check_token_ids, generate_tokens, sample_tokens
from .config import xLSTMLargeConfig
from .fused import gated_head_norm, silu_mul, use_fused

__all__ = ["xLSTMLarge", "xLSTMLargeBackbone", "mLSTMLargeBlock", "mLSTMLargeLayer",
           "SwiGLUFeedForward", "RMSNorm", "mLSTMState", "soft_cap"]


class mLSTMState(NamedTuple):
    """Recurrent state of one block, float32: c (B, NH, DQK, DV), n (B, NH, DQK), m (B, NH, 1)."""
    c: torch.Tensor
    n: torch.Tensor
    m: torch.Tensor


ModelState = Sequence[mLSTMState]
StateLike = Union[Sequence[Sequence[torch.Tensor]], Mapping[int, Sequence[torch.Tensor]]]


def soft_cap(x: torch.Tensor, cap: Optional[float]) -> torch.Tensor:
    """cap * tanh(x / cap): smooth clamp to (-cap, cap); None: identity."""
    return x if cap is None else cap * torch.tanh(x / cap)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) over the last dim, then * weight (+ bias). The weight is the
    scale itself (init 1). With `force_float32_reductions` the normalization runs in float32
    and is cast back to the input dtype before the weight is applied. (..., E) -> (..., E)."""

    def __init__(self, num_features: int, eps: float = 1e-6, use_weight: bool = True,
                 use_bias: bool = False, force_float32_reductions: bool = True):
        super().__init__()
        self.num_features, self.eps = num_features, eps
        self.force_float32_reductions = force_float32_reductions
        self.weight = nn.Parameter(torch.ones(num_features)) if use_weight else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if use_bias else None

    def reset_parameters(self) -> None:
        with torch.no_grad():
            if self.weight is not None:
                self.weight.fill_(1.0)
            if self.bias is not None:
                self.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is None and use_fused(x):
            # one kernel (it reduces in float32 and rounds once) instead of four
            return F.rms_norm(x, (self.num_features,), self.weight, self.eps)
        y = x.float() if self.force_float32_reductions else x
        y = F.rms_norm(y, (self.num_features,), eps=self.eps).to(x.dtype)
        if self.weight is not None:
            y = y * self.weight
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, bias={self.bias is not None}"


class SwiGLUFeedForward(nn.Module):
    """proj_down(silu(x W_gate) * x W_up), E -> ffn_dim -> E. Weights: single mode
    `proj_up_gate` and `proj_up` (ffn_dim, E); fused mode `proj_up_gate_z` (2 ffn_dim, E),
    gate rows first; `proj_down` (E, ffn_dim)."""

    def __init__(self, config: xLSTMLargeConfig):
        super().__init__()
        E, P, bias = config.embedding_dim, config.ffn_dim, config.use_bias
        self.fused = config.weight_mode == "fused"
        self.ffn_dim = P
        if self.fused:
            self.proj_up_gate_z = nn.Linear(E, 2 * P, bias=bias)
        else:
            self.proj_up_gate = nn.Linear(E, P, bias=bias)
            self.proj_up = nn.Linear(E, P, bias=bias)
        self.proj_down = nn.Linear(P, E, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            gate, up = self.proj_up_gate_z(x).split(self.ffn_dim, dim=-1)
        else:
            gate, up = self.proj_up_gate(x), self.proj_up(x)
        return self.proj_down(silu_mul(gate, up) if use_fused(x) else F.silu(gate) * up)


class mLSTMLargeLayer(nn.Module):
    """The mLSTM layer of xLSTM-7B (module docstring). x (B, S, E) -> y (B, S, E).

    Weights, single mode: q, k (qk_dim, E); v, ogate_preact (v_dim, E); igate_preact,
    fgate_preact (NH, E) + bias (NH); fused mode: qkv_opreact (2 qk_dim + 2 v_dim, E) with rows
    q|k|v|o, ifgate_preact (2 NH, E) + bias (2 NH) with rows i|f. Both: multihead_norm.weight
    (v_dim), out_proj (E, v_dim); biases of the projections only with `use_bias`.
    """

    def __init__(self, config: xLSTMLargeConfig):
        super().__init__()
        self.config = config
        E, NH, bias = config.embedding_dim, config.num_heads, config.use_bias
        self.qk_dim, self.v_dim, self.num_heads = config.qk_dim, config.v_dim, NH
        self.fused = config.weight_mode == "fused"
        if self.fused:
            self.qkv_opreact = nn.Linear(E, 2 * self.qk_dim + 2 * self.v_dim, bias=bias)
            self.ifgate_preact = nn.Linear(E, 2 * NH, bias=True)
        else:
            self.q = nn.Linear(E, self.qk_dim, bias=bias)
            self.k = nn.Linear(E, self.qk_dim, bias=bias)
            self.v = nn.Linear(E, self.v_dim, bias=bias)
            self.ogate_preact = nn.Linear(E, self.v_dim, bias=bias)
            self.igate_preact = nn.Linear(E, NH, bias=True)
            self.fgate_preact = nn.Linear(E, NH, bias=True)
        # Per-head LayerNorm whose weight is the scale itself (no "1 + w" offset).
        self.multihead_norm = MultiHeadLayerNorm(ndim=self.v_dim, weight=True, bias=bias,
                                                 eps=config.norm_eps, residual_weight=False)
        self.out_proj = nn.Linear(self.v_dim, E, bias=bias)

    def zero_state(self, batch_size: int, device=None) -> mLSTMState:
        NH, DQK, DV = self.num_heads, self.qk_dim // self.num_heads, self.v_dim // self.num_heads
        kw = dict(device=device if device is not None else self.out_proj.weight.device, dtype=torch.float32)
        return mLSTMState(torch.zeros(batch_size, NH, DQK, DV, **kw), torch.zeros(batch_size, NH, DQK, **kw),
                          torch.zeros(batch_size, NH, 1, **kw))

    def check_state(self, state, batch_size: int, name: str = "state") -> mLSTMState:
        """Validate a (c, n, m) triple for batch size B; returns it as an mLSTMState."""
        if not isinstance(state, (tuple, list)) or len(state) != 3:
            got = f"length {len(state)}" if isinstance(state, (tuple, list)) else type(state).__name__
            raise TypeError(f"{name}: expected a triple (c, n, m), got {got}")
        B, NH = batch_size, self.num_heads
        DQK, DV = self.qk_dim // NH, self.v_dim // NH
        for part, t, shape in zip("cnm", state, ((B, NH, DQK, DV), (B, NH, DQK), (B, NH, 1))):
            check_tensor(f"{name}.{part}", t, shape)
        return mLSTMState(*state)

    def _projections(self, x, cap: Optional[float]):
        if self.fused:
            q, k, v, o = self.qkv_opreact(x).split([self.qk_dim, self.qk_dim, self.v_dim, self.v_dim], dim=-1)
            i, f = soft_cap(self.ifgate_preact(x), cap).split(self.num_heads, dim=-1)
        else:
            q, k, v, o = self.q(x), self.k(x), self.v(x), self.ogate_preact(x)
            i = soft_cap(self.igate_preact(x), cap)
            f = soft_cap(self.fgate_preact(x), cap)
        return q, k, v, o, i, f

    def forward(self, x: torch.Tensor, state: Optional[mLSTMState] = None, return_state: bool = False,
                update_state: bool = False):
        """x (B, S, E); state (c, n, m) or None (zeros). Returns y (B, S, E) and, with
        `return_state`, the new mLSTMState (float32). `update_state` writes the new state into
        the given one (static buffers, e.g. for CUDA-graph decoding; no autograd)."""
        E = self.config.embedding_dim
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != E:
            raise ValueError(f"mLSTMLargeLayer: expected x of shape (B, S, {E}), got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        B, S, _ = x.shape
        NH = self.num_heads
        if update_state and state is None:
            raise ValueError("update_state=True needs a state to update (e.g. layer.zero_state(B))")
        # Inference on the GPU fuses the small steps: the gate soft cap into the decoding step,
        # the head norm and the output gate into one kernel (`fused`).
        fused = use_fused(x)
        cap = self.config.gate_soft_cap
        step_cap = cap if fused and S == 1 else None
        q, k, v, o, i, f = self._projections(x, None if step_cap is not None else cap)
        # (B, S, NH * D) -> (B, NH, S, D) views; the ops take strided inputs.
        q, k, v = (t.unflatten(-1, (NH, -1)).transpose(1, 2) for t in (q, k, v))
        i, f = i.transpose(1, 2), f.transpose(1, 2)                       # (B, NH, S)
        if S == 1:
            c, n, m = state if state is not None else self.zero_state(B, x.device)
            h, new = mlstm_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], i, f, c, n, m, eps=self.config.eps,
                                inplace=update_state, gate_soft_cap=step_cap)
            h = h[:, :, None]
        else:
            c, n, m = state if state is not None else (None, None, None)
            out = mlstm_chunkwise(q, k, v, i, f, c, n, m, return_last_states=return_state or update_state,
                                  eps=self.config.eps, chunk_size=self.config.chunk_size)
            h, new = out if return_state or update_state else (out, None)
            if update_state:
                for dst, src in zip(state, new):
                    dst.copy_(src)
                new = state
        h = h.transpose(1, 2)                                             # (B, S, NH, DV)
        if fused:
            norm = self.multihead_norm
            y = self.out_proj(gated_head_norm(h, o, norm.weight_proxy, norm.bias, norm.eps))
            return (y, mLSTMState(*new)) if return_state else y
        if self.config.norm_reduction_force_float32:
            h = self.multihead_norm(h.float()).to(x.dtype)
        else:
            h = self.multihead_norm(h)
        y = self.out_proj(torch.sigmoid(o) * h)
        return (y, mLSTMState(*new)) if return_state else y


class mLSTMLargeBlock(nn.Module):
    """x + mLSTMLayer(RMSNorm(x)), then x + SwiGLU(RMSNorm(x)). Submodules `norm_mlstm`,
    `mlstm_layer`, `norm_ffn`, `ffn`."""

    def __init__(self, config: xLSTMLargeConfig):
        super().__init__()
        norm = dict(eps=config.norm_eps, use_bias=config.use_bias,
                    force_float32_reductions=config.norm_reduction_force_float32)
        self.norm_mlstm = RMSNorm(config.embedding_dim, **norm)
        self.mlstm_layer = mLSTMLargeLayer(config)
        self.norm_ffn = RMSNorm(config.embedding_dim, **norm)
        self.ffn = SwiGLUFeedForward(config)

    def forward(self, x: torch.Tensor, state: Optional[mLSTMState] = None, return_state: bool = False,
                update_state: bool = False):
        out = self.mlstm_layer(self.norm_mlstm(x), state, return_state, update_state)
        y, new = out if return_state else (out, None)
        x = x + y
        x = x + self.ffn(self.norm_ffn(x))
        return (x, new) if return_state else x


class xLSTMLargeBackbone(nn.Module):
    """The blocks and the final norm (`blocks`, `out_norm`): (B, S, E) -> (B, S, E)."""

    def __init__(self, config: xLSTMLargeConfig):
        super().__init__()
        self.config = config
        self.blocks = nn.ModuleList(mLSTMLargeBlock(config) for _ in range(config.num_blocks))
        if config.add_out_norm:
            self.out_norm = RMSNorm(config.embedding_dim, eps=config.norm_eps, use_bias=config.use_bias,
                                    force_float32_reductions=config.norm_reduction_force_float32)
        else:
            self.out_norm = nn.Identity()

    def normalize_state(self, state: Optional[StateLike], batch_size: int) -> list:
        """A model state as a list with one mLSTMState (or None) per block. Accepts a sequence
        of (c, n, m) or a dict {block index: (c, n, m)} (the `xlstm` / `transformers` layout)."""
        L = len(self.blocks)
        if state is None:
            return [None] * L
        if isinstance(state, Mapping):
            missing = [j for j in range(L) if j not in state]
            if missing:
                raise ValueError(f"state: a dict state needs an entry for every block 0..{L - 1}; "
                                 f"missing {missing}")
            state = [state[j] for j in range(L)]
        if not isinstance(state, (tuple, list)) or len(state) != L:
            got = f"length {len(state)}" if isinstance(state, (tuple, list)) else type(state).__name__
            raise TypeError(f"state: expected a sequence of {L} (c, n, m) triples (one per block), got {got}")
        return [block.mlstm_layer.check_state(s, batch_size, f"state[{j}]")
                for j, (block, s) in enumerate(zip(self.blocks, state))]

    def forward(self, x: torch.Tensor, state: Optional[StateLike] = None, return_state: bool = False,
                update_state: bool = False):
        states = self.normalize_state(state, x.shape[0])
        if update_state and state is None:
            raise ValueError("update_state=True needs a state to update (e.g. model.zero_state(B))")
        new_states = []
        for block, s in zip(self.blocks, states):
            if return_state:
                x, s = block(x, s, return_state=True, update_state=update_state)
                new_states.append(s)
            else:
                x = block(x, s, update_state=update_state)
        x = self.out_norm(x)
        return (x, tuple(new_states)) if return_state else x


class xLSTMLarge(nn.Module):
    """xLSTM-7B language model on xlstm-triton's kernels (module docstring).

    forward(input_ids (B, S) int, state=None, return_state=False) -> logits (B, S, V) float32
        [, state: a tuple of one mLSTMState per block]
    decode_step(tokens (B,), state, temperature, top_k) -> (next_tokens (B,), state)
    generate(input_ids (B, S), max_new_tokens, temperature=1.0, top_k=None) -> (B, S + max_new_tokens)

    Loading: `xLSTMLarge.from_pretrained(dir)` (a safetensors checkpoint, sharded or not, with
    its config.json), `xLSTMLarge.from_transformers(hf_model)` (a loaded `transformers`
    xLSTMForCausalLM); `convert.to_transformers_state_dict(model.state_dict())` goes back.

    Token ids: int64 or int32, on the model's device, each in [0, vocab_size); anything else
    raises an error naming the argument. The range check reads the ids on the host: on a GPU
    that is one sync per forward (and per `generate` call), so it runs there only while
    `check_token_range` is True (the default); set `model.check_token_range = False` for
    training or decoding loops that must not sync. On CPU it always runs; `decode_step`
    (whose tokens the model sampled itself), torch.compile and CUDA-graph capture skip it on
    the GPU.
    """

    config_class = xLSTMLargeConfig
    check_token_range: bool = True

    def __init__(self, config: xLSTMLargeConfig):
        super().__init__()
        if not isinstance(config, xLSTMLargeConfig):
            raise TypeError(f"config: expected an xLSTMLargeConfig, got {type(config).__name__}")
        config.validate()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.embedding_dim)
        self.backbone = xLSTMLargeBackbone(config)
        # Never tied to the embedding, whatever `tie_word_embeddings` says (see xLSTMLargeConfig).
        self.lm_head = nn.Linear(config.embedding_dim, config.vocab_size, bias=False)
        self.reset_parameters()

    # ------------------------------------------------------------------ init and state
    def reset_parameters(self) -> None:
        """The init of the xLSTM-7B recipe: small init (std sqrt(2 / 5E)) for the embedding,
        projections and LM head, "wang" init for out_proj and proj_down, zero gate weights with
        input-gate bias -10 and forget-gate biases linspace(3, 6) over the heads, norms 1,
        other biases 0."""
        cfg = self.config
        E, L, NH = cfg.embedding_dim, cfg.num_blocks, cfg.num_heads
        small_init_(self.embedding.weight, dim=E)
        small_init_(self.lm_head.weight, dim=E)
        for module in self.modules():
            if isinstance(module, (RMSNorm, MultiHeadLayerNorm)):
                module.reset_parameters()
        with torch.no_grad():
            for block in self.backbone.blocks:
                layer, ffn = block.mlstm_layer, block.ffn
                if layer.fused:
                    small_init_(layer.qkv_opreact.weight, dim=E)
                    gates = layer.ifgate_preact
                    gates.weight.zero_()
                    gates.bias[:NH] = -10.0
                    gates.bias[NH:] = torch.linspace(3.0, 6.0, NH)
                    ups = [ffn.proj_up_gate_z]
                    lins = [layer.qkv_opreact]
                else:
                    for lin in (layer.q, layer.k, layer.v, layer.ogate_preact):
                        small_init_(lin.weight, dim=E)
                    for gate in (layer.igate_preact, layer.fgate_preact):
                        gate.weight.zero_()
                    layer.igate_preact.bias.fill_(-10.0)
                    layer.fgate_preact.bias.copy_(torch.linspace(3.0, 6.0, NH))
                    ups = [ffn.proj_up_gate, ffn.proj_up]
                    lins = [layer.q, layer.k, layer.v, layer.ogate_preact]
                for up in ups:
                    small_init_(up.weight, dim=E)
                wang_init_(layer.out_proj.weight, dim=E, num_blocks=L)
                wang_init_(ffn.proj_down.weight, dim=cfg.ffn_dim, num_blocks=L)
                for lin in lins + ups + [layer.out_proj, ffn.proj_down]:
                    if lin.bias is not None:
                        lin.bias.zero_()

    def zero_state(self, batch_size: int, device=None) -> tuple:
        """The empty state (what `state=None` means), one mLSTMState per block, e.g. as static
        buffers for a CUDA-graph decoding loop (see `xlstm_triton.nn.model`)."""
        return tuple(b.mlstm_layer.zero_state(batch_size, device) for b in self.backbone.blocks)

    # ------------------------------------------------------------------ forward
    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return soft_cap(self.lm_head(x).float(), self.config.output_logit_soft_cap)

    def forward(self, input_ids: torch.Tensor, state: Optional[StateLike] = None, return_state: bool = False,
                update_state: bool = False):
        """input_ids (B, S) int64 / int32 on the model's device (B may be 0; see the class
        docstring for the checks); state: None (zeros), a sequence (tuple or list) of num_blocks
        (c, n, m) or a dict {block: (c, n, m)}. Returns soft-capped logits (B, S, V) in float32 and, with
        `return_state`, the new state (a tuple of mLSTMState, float32). `update_state=True`
        writes the new state into the given one instead of new tensors (contiguous tensors, no
        autograd): a decoding loop with static buffers, such as a CUDA graph of one step,
        needs no copies (`state = model.zero_state(B)`; `logits = model(tok, state,
        update_state=True)`)."""
        return self._forward(input_ids, state, return_state, update_state, "input_ids", self.check_token_range)

    def _forward(self, input_ids, state, return_state: bool, update_state: bool, name: str, check_range: bool):
        check_token_ids(input_ids, name, self.config.vocab_size, self.embedding.weight.device, check_range)
        x = self.embedding(input_ids)
        out = self.backbone(x, state, return_state=return_state, update_state=update_state)
        x, new = out if return_state else (out, None)
        logits = self._logits(x)
        return (logits, new) if return_state else logits

    def decode_step(self, tokens: torch.Tensor, state: StateLike, temperature: float = 1.0,
                    top_k: Optional[int] = None, generator: Optional[torch.Generator] = None):
        """tokens (B,) int64, the last tokens; state: the model state before them. Returns
        (next_tokens (B,), new_state). Static shapes, no host sync (CUDA-graph capturable)."""
        logits, state = self._forward(tokens[:, None], state, True, False, "tokens", check_range=False)
        return sample_tokens(logits[:, -1], temperature, top_k, generator), state

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: Optional[int] = None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Continue each row of `input_ids` (B, S) by `max_new_tokens` tokens: one chunkwise
        prefill of the prompt, then one `decode_step` per token (constant cost per token).
        temperature 0 is greedy; top_k samples among the k most likely tokens. Returns
        (B, S + max_new_tokens) on the model's device."""
        def prefill(ids):  # one chunkwise pass over the prompt
            x, state = self.backbone(self.embedding(ids), return_state=True)
            return self._logits(x[:, -1]), state
        return generate_tokens(prefill, self.decode_step, input_ids, max_new_tokens, temperature, top_k,
                               generator, self.embedding.weight.device, self.config.vocab_size,
                               self.check_token_range)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path, dtype: Optional[torch.dtype] = None, device=None,
                        weight_mode: Optional[str] = None, config: Optional[xLSTMLargeConfig] = None,
                        **config_overrides) -> "xLSTMLarge":
        """Load a safetensors checkpoint directory (see `convert.load_checkpoint`)."""
        from .checkpoint import load_checkpoint
        return load_checkpoint(path, dtype=dtype, device=device, weight_mode=weight_mode,
                               config=config, **config_overrides)

    @classmethod
    def from_transformers(cls, hf_model, copy: bool = False, weight_mode: Optional[str] = None,
                          **config_overrides) -> "xLSTMLarge":
        """Build from a loaded `transformers` xLSTMForCausalLM (see `convert.from_transformers`)."""
        from .checkpoint import from_transformers
        return from_transformers(hf_model, copy=copy, weight_mode=weight_mode, **config_overrides)
