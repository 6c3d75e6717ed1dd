"""The xLSTM-7B architecture ("xLSTM Large", docs/checkpoints.md) on xlstm-triton's kernels.

    x = embedding(input_ids)                                          (B, S, E)
    per block:  x = x + mLSTMLayer(RMSNorm(x));  x = x + SwiGLU(RMSNorm(x))
    logits = cap_30(lm_head(RMSNorm(x)))                              (B, S, V), float32

    mLSTMLayer: `xlstm_triton.layers.mlstm_large`
    SwiGLU(x) = proj_down(silu(x W_gate) * x W_up)                    (E -> ffn_dim -> E)

with cap_c(x) = c * tanh(x / c). Parameter names and shapes are those of the `xlstm` package's
`xLSTMLarge` (`embedding.weight`, `backbone.blocks.{i}...`, `backbone.out_norm.weight`,
`lm_head.weight`; `docs/checkpoints.md`), in the "single" or the "fused" weight mode;
`checkpoint.py` maps them to and from the `transformers` names.

State: one `mLSTMState(c, n, m)` per block, float32: c (B, NH, DQK, DV), n (B, NH, DQK),
m (B, NH, 1) (the memory is c * exp(m)). A sequence of length 1 runs `mlstm_step` (decoding),
longer ones `mlstm_chunkwise` (prefill, training), both starting from the given state.
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from ...checks import check_context_parallel_call
from ...generation import check_token_ids, generate_tokens, sample_tokens
from ...layers import mLSTMLargeLayer, mLSTMState
from ...modules import MultiHeadLayerNorm, RMSNorm, SwiGLUFeedForward, small_init_, soft_cap, wang_init_
from ..lm_loss import check_labels, cp_next_token_loss, next_token_loss
from ..parallel import cp_checked
from ..packed import packed_offsets
from ..residual import run_residual_stream
from .checkpoint import read_checkpoint, transformers_weights
from .config import xLSTMLargeConfig

__all__ = ["xLSTMLarge", "xLSTMLargeBackbone", "mLSTMLargeBlock", "load_checkpoint", "from_transformers"]


ModelState = Sequence[mLSTMState]

StateLike = Union[Sequence[Sequence[torch.Tensor]], Mapping[int, Sequence[torch.Tensor]]]



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
                update_state: bool = False, cu_seqlens: Optional[torch.Tensor] = None, cp_group=None):
        x, y, new = self.forward_residual(x, None, state, return_state, update_state, cu_seqlens, cp_group)
        x = x + y
        return (x, new) if return_state else x

    def forward_residual(self, x: torch.Tensor, branch: Optional[torch.Tensor], state: Optional[mLSTMState] = None,
                         return_state: bool = False, update_state: bool = False,
                         cu_seqlens: Optional[torch.Tensor] = None, cp_group=None):
        """The block on the residual stream x whose last branch output (the previous block's
        FFN, or None) is not added yet: each add is fused into the norm after it. Returns
        (stream, this block's FFN output, new state or None); `forward` adds the two."""
        h, x = self.norm_mlstm.add_forward(x, branch)
        out = self.mlstm_layer(h, state, return_state, update_state, cu_seqlens=cu_seqlens, cp_group=cp_group)
        y, new = out if return_state else (out, None)
        h, x = self.norm_ffn.add_forward(x, y)
        return x, self.ffn(h), new



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
                update_state: bool = False, cu_seqlens: Optional[torch.Tensor] = None, cp_group=None):
        states = self.normalize_state(state, x.shape[0])
        if update_state and state is None:
            raise ValueError("update_state=True needs a state to update (e.g. model.zero_state(B))")
        packed = {} if cu_seqlens is None else dict(cu_seqlens=cu_seqlens)
        if cp_group is not None:
            packed["cp_group"] = cp_group
        x, new_states = run_residual_stream(x, self.blocks, states, self.out_norm, return_state=return_state,
                                            update_state=update_state, **packed)
        return (x, new_states) if return_state else x



class xLSTMLarge(nn.Module):
    """xLSTM-7B language model on xlstm-triton's kernels (module docstring).

    forward(input_ids (B, S) int, state=None, return_state=False) -> logits (B, S, V) float32
        [, state: a tuple of one mLSTMState per block]
    decode_step(tokens (B,), state, temperature, top_k) -> (next_tokens (B,), state)
    generate(input_ids (B, S), max_new_tokens, temperature=1.0, top_k=None) -> (B, S + max_new_tokens)

    Loading: `xLSTMLarge.from_pretrained(dir)` (a safetensors checkpoint, sharded or not, with
    its config.json), `xLSTMLarge.from_transformers(hf_model)` (a loaded `transformers`
    xLSTMForCausalLM); `to_transformers_state_dict(model.state_dict())` goes back.

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
        buffers for a CUDA-graph decoding loop (see `xlstm_triton.generation.CUDAGraphDecoder`)."""
        return tuple(b.mlstm_layer.zero_state(batch_size, device) for b in self.backbone.blocks)

    # ------------------------------------------------------------------ forward
    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return soft_cap(self.lm_head(x).float(), self.config.output_logit_soft_cap)

    def forward(self, input_ids: torch.Tensor, state: Optional[StateLike] = None, return_state: bool = False,
                update_state: bool = False, labels: Optional[torch.Tensor] = None,
                cu_seqlens: Optional[torch.Tensor] = None, position_ids: Optional[torch.Tensor] = None,
                cp_group=None):
        """input_ids (B, S) int64 / int32 on the model's device (B may be 0; see the class
        docstring for the checks); state: None (zeros), a sequence (tuple or list) of num_blocks
        (c, n, m) or a dict {block: (c, n, m)}. Returns soft-capped logits (B, S, V) in float32 and, with
        `return_state`, the new state (a tuple of mLSTMState, float32). `update_state=True`
        writes the new state into the given one instead of new tensors (contiguous tensors, no
        autograd): a decoding loop with static buffers, such as a CUDA graph of one step,
        needs no copies (`state = model.zero_state(B)`; `logits = model(tok, state,
        update_state=True)`). With `labels` (B, S) (see `models.lm_loss`: shifted inside, -100
        not counted) it returns the mean next-token loss of the soft-capped logits instead of the
        logits, computed without materializing them (training).

        Packed documents (training, B = 1, no state): `cu_seqlens` (N + 1,) int offsets of the
        documents laid end to end in input_ids (1, S), or `position_ids` (1, S) restarting at 0
        at each document (converted once: one host read); no state or loss term crosses a
        document boundary (see `models/packed.py`).

        Context parallelism (training, no state): `cp_group`, a process group over which the
        sequences are split in contiguous pieces in rank order; input_ids (and labels) are this
        rank's piece (B, S_rank) of every sequence. The logits are the piece's; the loss is the
        whole sequences' mean (each piece's last position is scored against the next rank's
        first label), the same value on every rank, and its backward gives each rank its
        piece's part of the parameter gradients: sum them over the group
        (`models.cp_reduce_gradients`)."""
        check_context_parallel_call(cp_group, state, return_state, cu_seqlens, position_ids)
        return self._forward(input_ids, state, return_state, update_state, "input_ids", self.check_token_range,
                             labels, packed_offsets(input_ids, cu_seqlens, position_ids, state, return_state),
                             cp_group)

    def _forward(self, input_ids, state, return_state: bool, update_state: bool, name: str, check_range: bool,
                 labels=None, cu_seqlens=None, cp_group=None):
        check_token_ids(input_ids, name, self.config.vocab_size, self.embedding.weight.device, check_range)
        if labels is not None:
            check_labels(labels, input_ids, self.config.vocab_size, check_range)
        x = self.embedding(input_ids)
        cp = {} if cp_group is None else dict(cp_group=cp_group)
        with cp_checked(self, x, cp_group):
            out = self.backbone(x, state, return_state=return_state, update_state=update_state,
                                cu_seqlens=cu_seqlens, **cp)
        x, new = out if return_state else (out, None)
        if labels is None:
            out = self._logits(x)
        elif cp_group is not None:
            out = cp_next_token_loss(x, self.lm_head.weight, labels, self.config.output_logit_soft_cap, cp_group)
        else:
            out = next_token_loss(x, self.lm_head.weight, labels, self.config.output_logit_soft_cap, cu_seqlens)
        return (out, new) if return_state else out

    def decode_step(self, tokens: torch.Tensor, state: StateLike, temperature: float = 1.0,
                    top_k: Optional[int] = None, generator: Optional[torch.Generator] = None):
        """tokens (B,) int64, the last tokens; state: the model state before them. Returns
        (next_tokens (B,), new_state). Static shapes, no host sync (CUDA-graph capturable)."""
        logits, state = self._forward(tokens[:, None], state, True, False, "tokens", check_range=False)
        return sample_tokens(logits[:, -1], temperature, top_k, generator), state

    def prefill(self, input_ids: torch.Tensor):
        """One chunkwise pass over prompts (B, S) (no checks): (last-position logits (B, V), state)."""
        x, state = self.backbone(self.embedding(input_ids), return_state=True)
        return self._logits(x[:, -1]), state

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: Optional[int] = None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Continue each row of `input_ids` (B, S) by `max_new_tokens` tokens: one chunkwise
        prefill of the prompt, then one `decode_step` per token (constant cost per token).
        temperature 0 is greedy; top_k samples among the k most likely tokens. Returns
        (B, S + max_new_tokens) on the model's device."""
        return generate_tokens(self.prefill, self.decode_step, input_ids, max_new_tokens, temperature, top_k,
                               generator, self.embedding.weight.device, self.config.vocab_size,
                               self.check_token_range)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path, dtype: Optional[torch.dtype] = None, device=None,
                        weight_mode: Optional[str] = None, config: Optional[xLSTMLargeConfig] = None,
                        **config_overrides) -> "xLSTMLarge":
        """Load a safetensors checkpoint directory (see `load_checkpoint`)."""
        config, sd = read_checkpoint(path, dtype=dtype, device=device, weight_mode=weight_mode,
                                     config=config, **config_overrides)
        return _build(config, sd, f"checkpoint {str(path)!r}").eval()

    @classmethod
    def from_transformers(cls, hf_model, copy: bool = False, weight_mode: Optional[str] = None,
                          **config_overrides) -> "xLSTMLarge":
        """Build from a loaded `transformers` xLSTMForCausalLM (see `from_transformers`)."""
        config, sd = transformers_weights(hf_model, copy=copy, weight_mode=weight_mode, **config_overrides)
        return _build(config, sd, f"{type(hf_model).__name__} state dict").train(hf_model.training)



def _build(config: xLSTMLargeConfig, state_dict: Dict[str, torch.Tensor], source: str) -> xLSTMLarge:
    """An xLSTMLarge whose parameters are the tensors of `state_dict` (no copy)."""
    sd = dict(state_dict)
    if config.use_bias and config.add_out_norm and "backbone.out_norm.bias" not in sd and \
            "backbone.out_norm.weight" in sd:
        sd["backbone.out_norm.bias"] = torch.zeros_like(sd["backbone.out_norm.weight"])   # transformers has none
    with torch.device("meta"):
        model = xLSTMLarge(config)
    expected = {k: tuple(t.shape) for k, t in model.state_dict().items()}
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    wrong = [f"{k}: {tuple(sd[k].shape)} (expected {expected[k]})" for k in expected
             if k in sd and tuple(sd[k].shape) != expected[k]]
    if missing or unexpected or wrong:
        raise ValueError(f"{source} does not match the config ({config.num_blocks} blocks, E={config.embedding_dim}, "
                         f"NH={config.num_heads}, weight_mode={config.weight_mode!r}): missing {missing[:6]}, "
                         f"unexpected {unexpected[:6]}, wrong shapes {wrong[:6]}")
    model.load_state_dict(sd, strict=True, assign=True)
    return model



def load_checkpoint(path, dtype: Optional[torch.dtype] = None, device=None, weight_mode: Optional[str] = None,
                    config: Optional[xLSTMLargeConfig] = None, **config_overrides) -> xLSTMLarge:
    """Load an xLSTM-7B style checkpoint directory into an `xLSTMLarge`, in eval mode; the
    arguments are those of `checkpoint.read_checkpoint`. The LM head is the checkpoint's
    `lm_head.weight` even with `tie_word_embeddings` (as transformers loads it)."""
    return xLSTMLarge.from_pretrained(path, dtype=dtype, device=device, weight_mode=weight_mode,
                                      config=config, **config_overrides)


def from_transformers(hf_model, copy: bool = False, weight_mode: Optional[str] = None,
                      **config_overrides) -> xLSTMLarge:
    """An `xLSTMLarge` with the weights of a loaded `transformers` xLSTMForCausalLM.

    copy=False shares the weight tensors with `hf_model` (no extra memory; in-place updates
    show in both); copy=True clones them. weight_mode: None keeps transformers' mode, or
    "single" / "fused" (converted tensors are new or views). Device, dtype and training mode
    follow hf_model; config_overrides replace fields of the derived config (e.g. chunk_size).
    """
    return xLSTMLarge.from_transformers(hf_model, copy=copy, weight_mode=weight_mode, **config_overrides)
