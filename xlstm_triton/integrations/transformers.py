"""Run a Hugging Face `transformers` xLSTM model (xLSTM-7B) on xlstm-triton's kernels, in place.

    from transformers import xLSTMForCausalLM
    from xlstm_triton.integrations.transformers import use_xlstm_triton
    model = use_xlstm_triton(xLSTMForCausalLM.from_pretrained("NX-AI/xLSTM-7b", torch_dtype=torch.bfloat16).cuda())
    out = model.generate(input_ids, max_new_tokens=32)          # transformers' generate, our kernels

The seam. Every transformers xLSTM layer (its own `xLSTMLayer`, or the `xlstm` package's
`mLSTMLayer` that transformers uses when `xlstm` is installed) computes projections, gates
and norms itself and hands the mLSTM cell to a parameter-free submodule `mlstm_backend`:

    h, (c, n, m) = layer.mlstm_backend(q, k, v, i, f, c_initial, n_initial, m_initial)
    # q, k (B, NH, S, DQK); v (B, NH, S, DV); i, f (B, NH, S); c (B, NH, DQK, DV), n (B, NH, DQK), m (B, NH, 1)

(keywords `q, k, v, i, f` for the `xlstm`/`mlstm_kernels` backend, `query, key, value, igate,
fgate` for transformers' built-in one). `use_xlstm_triton` replaces that submodule in every
layer with `TritonMLSTMBackend`, which runs `mlstm_chunkwise` for sequences (training and
prefill, any length, exact gradients) and `mlstm_step` for single tokens (decoding). The
weights, the state dict, `xLSTMCache`, `generate()` and the loss stay transformers' own; the
backend's `mode` ("train" / "inference") and `return_last_states` keep their meaning.
With `fuse_blocks` (the default) each block's forward is also replaced, by xlstm-triton's
`mLSTMLargeBlock` holding the block's own parameter objects: in inference it fuses what
transformers runs as several small kernels per step (the RMS norms, the gate soft cap, the
per-head norm with the output gate, SwiGLU's activation), which is most of a decoding
step's launches and host time; with autograd it is the same composition of PyTorch ops.
`remove_xlstm_triton` puts the original backends and forwards back.
"""

from __future__ import annotations

import sys
from typing import Optional

import torch
from torch import nn

from ..checks import check_chunk_size
from ..layers import mlstm_recurrence
from ..models.lm_loss import IGNORE_INDEX, check_labels, next_token_loss, shifted_labels
from ..models.packed import packed_offsets
from ..models.xlstm_large import mLSTMLargeBlock, xLSTMLargeConfig

__all__ = ["use_xlstm_triton", "remove_xlstm_triton", "TritonMLSTMBackend", "FusedBlockForward",
           "FusedLossForward"]

_MODES = ("train", "train_with_padding", "inference")


class TritonMLSTMBackend(nn.Module):
    """Drop-in for the `mlstm_backend` of a transformers xLSTM layer, on xlstm-triton's ops.

    forward(q, k, v, i, f, c_initial=None, n_initial=None, m_initial=None,
            return_last_states=None, mode=None)        (or query=, key=, value=, igate=, fgate=)
        q, k (B, NH, S, DQK); v (B, NH, S, DV); i, f (B, NH, S); optional initial state
        c (B, NH, DQK, DV), n (B, NH, DQK), m (B, NH, 1) in any float dtype (used as float32).
    Returns h (B, NH, S, DV) in q's dtype and, in mode "inference" (always) or "train" with
    return_last_states, the last state (c, n, m).

    S == 1 runs `mlstm_step` (one kernel, no host sync); longer sequences `mlstm_chunkwise`
    (chunk_size None: picked per length). In decoding (S == 1, no autograd) a given state is
    updated in place, in its own dtype, and returned: the layers hand in their cache
    (`xLSTMCache`, bfloat16 in `generate`) and copy the returned state into it, which is then
    a no-op; this saves a conversion pass and a copy of c, the largest tensor, per layer and
    token. Otherwise the new state is float32. No parameters or buffers: the layer's state dict
    is unchanged. The replaced backend is kept in `original` (not a submodule).
    """

    def __init__(self, mode: str = "inference", return_last_states: bool = True, eps: float = 1e-6,
                 chunk_size: Optional[int] = None, original: Optional[nn.Module] = None):
        super().__init__()
        if mode not in _MODES:
            raise ValueError(f"mode: expected one of {_MODES}, got {mode!r}")
        check_chunk_size(chunk_size)
        self.mode, self.return_last_states, self.eps, self.chunk_size = mode, bool(return_last_states), eps, chunk_size
        object.__setattr__(self, "original", original)      # plain attribute, not a submodule

    @classmethod
    def replacing(cls, backend: nn.Module, chunk_size: Optional[int] = None) -> "TritonMLSTMBackend":
        """A backend with the settings (mode, return_last_states, eps) of `backend`, whose
        config is transformers' xLSTMConfig or mlstm_kernels' mLSTMBackendConfig."""
        cfg = getattr(backend, "config", None)
        return cls(mode=getattr(cfg, "mode", "inference"),
                   return_last_states=getattr(cfg, "return_last_states", True),
                   eps=getattr(cfg, "eps", 1e-6), chunk_size=chunk_size, original=backend)

    def forward(self, q=None, k=None, v=None, i=None, f=None, c_initial=None, n_initial=None,
                m_initial=None, return_last_states: Optional[bool] = None, mode: Optional[str] = None,
                *, query=None, key=None, value=None, igate=None, fgate=None):
        args = {}
        for short, t, long, t2 in (("q", q, "query", query), ("k", k, "key", key), ("v", v, "value", value),
                                   ("i", i, "igate", igate), ("f", f, "fgate", fgate)):
            if t is not None and t2 is not None:
                raise TypeError(f"TritonMLSTMBackend: got both {short} and {long}")
            args[short] = t if t is not None else t2
            if args[short] is None:
                raise TypeError(f"TritonMLSTMBackend: missing {short} (or {long})")
        q, k, v, i, f = (args[n] for n in "qkvif")
        mode = self.mode if mode is None else mode
        if mode not in _MODES:
            raise ValueError(f"mode: expected one of {_MODES}, got {mode!r}")
        if mode == "inference":
            return_states = True
        else:
            return_states = self.return_last_states if return_last_states is None else return_last_states
            if mode == "train_with_padding" and return_states:
                raise ValueError("return_last_states=True is not supported with mode 'train_with_padding'")
        if not isinstance(q, torch.Tensor) or q.dim() != 4:
            raise ValueError(f"q: expected a tensor of shape (B, NH, S, DQK), got "
                             f"{tuple(q.shape) if isinstance(q, torch.Tensor) else type(q).__name__}")
        B, NH, S, DQK = q.shape
        given = (c_initial, n_initial, m_initial)
        inplace = False
        if S == 1:
            inplace = (all(isinstance(t, torch.Tensor) and t.is_contiguous() for t in given)
                       and not (torch.is_grad_enabled()
                                and any(t.requires_grad for t in (q, k, v, i, f, *given))))
            if not inplace:              # a missing part of the state is zeros
                z = dict(device=q.device, dtype=torch.float32)
                given = tuple(torch.zeros(shape, **z) if t is None else t for t, shape in
                              zip(given, ((B, NH, DQK, v.shape[-1]), (B, NH, DQK), (B, NH, 1))))
        else:                            # the layer's cache may be bfloat16: the op takes float32
            given = tuple(t if t is None or t.dtype == torch.float32 else t.float() for t in given)
        out = mlstm_recurrence(q, k, v, i, f, given, return_state=return_states, eps=self.eps,
                               chunk_size=self.chunk_size, inplace=inplace)
        h, state = out if return_states else (out, None)
        return (h, tuple(state)) if return_states else h

    def extra_repr(self) -> str:
        return (f"mode={self.mode!r}, return_last_states={self.return_last_states}, eps={self.eps}, "
                f"chunk_size={self.chunk_size}")


def _is_causal_lm(model) -> bool:
    """A transformers xLSTMForCausalLM: an LM head over a backbone, with transformers' config."""
    return (getattr(getattr(model, "config", None), "model_type", None) == "xlstm"
            and hasattr(model, "lm_head") and hasattr(model, "backbone")
            and hasattr(sys.modules[type(model).__module__], "xLSTMCausalLMOutput"))


def _xlstm_layers(model):
    return [mod for _, mod in model.named_modules()
            if isinstance(getattr(mod, "mlstm_backend", None), nn.Module)]


def _xlstm_blocks(model):
    """The blocks (modules with `norm_mlstm`, `mlstm_layer`, `norm_ffn`, `ffn`), in order."""
    return [mod for _, mod in model.named_modules()
            if all(hasattr(mod, a) for a in ("norm_mlstm", "mlstm_layer", "norm_ffn", "ffn"))]


class FusedBlockForward:
    """Stands in for a transformers xLSTM block's `forward(x, state=None) -> (x, state)`: runs
    `block`, an `mLSTMLargeBlock` whose parameters are the transformers block's own objects
    (training, `.to()`, optimizers and the state dict see one set). Without autograd a given
    state (the cache) is updated in place; otherwise a new float32 state is returned."""

    def __init__(self, block: mLSTMLargeBlock):
        self.block = block
        self.cu_seqlens = None         # packed documents of the current call (`FusedLossForward`)

    def __call__(self, x, state=None):
        if self.cu_seqlens is not None:
            if state is not None:
                raise ValueError("packed documents (position_ids / cu_seq_lens_q) run without a cache: pass "
                                 "use_cache=False")
            return self.block(x, cu_seqlens=self.cu_seqlens), None
        update = (state is not None and not torch.is_grad_enabled()
                  and all(isinstance(t, torch.Tensor) and t.is_contiguous() for t in state))
        x, new = self.block(x, state, return_state=True, update_state=update)
        return x, tuple(new)


class FusedLossForward:
    """Stands in for an xLSTMForCausalLM's `forward`. With `labels`, the loss comes from the fused
    linear + soft cap + cross-entropy (`xlstm_triton.models.lm_loss`) straight from the last
    hidden states: the float32 logits of the batch are never built, and the output's `logits`
    is None. The loss is transformers' (labels shifted inside, -100 not counted, the mean over
    counted tokens, or their sum over `num_items_in_batch` when that is given). Without labels
    it is the model's own forward.

    Packed documents, as transformers' packing collators pass them: `position_ids` of a batch
    of 1 that restart at 0 at each document, or flash-attention's `cu_seq_lens_q`. With fused
    blocks, each block's mLSTM then restarts at every document and the loss skips document ends
    (`models/packed.py`); `max_length_q`, `max_length_k`, `cu_seq_lens_k` are dropped."""

    PACKED_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")

    def __init__(self, model: nn.Module):
        self.model = model
        self.output_class = getattr(sys.modules[type(model).__module__], "xLSTMCausalLMOutput")

    def __call__(self, input_ids=None, inputs_embeds=None, cache_params=None, labels=None, use_cache=None,
                 **kwargs):
        model = self.model
        cu_seqlens = self._packed_offsets(input_ids, inputs_embeds, cache_params, kwargs)
        blocks = [b.__dict__["forward"] for b in _xlstm_blocks(model)
                  if isinstance(b.__dict__.get("forward"), FusedBlockForward)]
        if cu_seqlens is not None and not blocks:
            raise ValueError("packed documents (position_ids / cu_seq_lens_q) need use_xlstm_triton(model, "
                             "fuse_blocks=True)")
        for block in blocks:
            block.cu_seqlens = cu_seqlens
        try:
            return self._forward(model, input_ids, inputs_embeds, cache_params, labels, use_cache, cu_seqlens,
                                 kwargs)
        finally:
            for block in blocks:
                block.cu_seqlens = None

    def _packed_offsets(self, input_ids, inputs_embeds, cache_params, kwargs):
        """The checked offsets of packed documents in kwargs (removed from it), or None."""
        cu = kwargs.pop("cu_seq_lens_q", None)
        for key in self.PACKED_KEYS[1:]:
            kwargs.pop(key, None)
        position_ids = kwargs.pop("position_ids", None)
        tokens = input_ids if input_ids is not None else inputs_embeds
        if cu is None and (position_ids is None or tokens is None or tokens.shape[0] != 1):
            return None                 # a batch of rows: position ids are not document offsets here
        ids = tokens if tokens.dim() == 2 else tokens[..., 0]
        return packed_offsets(ids, cu, None if cu is not None else position_ids, cache_params)

    def _forward(self, model, input_ids, inputs_embeds, cache_params, labels, use_cache, cu_seqlens, kwargs):
        if labels is None:
            return type(model).forward(model, input_ids=input_ids, inputs_embeds=inputs_embeds,
                                       cache_params=cache_params, use_cache=use_cache, **kwargs)
        num_items = kwargs.pop("num_items_in_batch", None)
        check_labels(labels, input_ids if input_ids is not None else labels, model.config.vocab_size,
                     check_range=False)
        out = model.backbone(input_ids, cache_params=cache_params, inputs_embeds=inputs_embeds,
                             use_cache=use_cache, **kwargs)
        head = model.lm_head.weight
        loss = next_token_loss(out[0].to(head.dtype), head, labels, model.config.output_logit_soft_cap, cu_seqlens)
        if num_items is not None:
            loss = loss * (shifted_labels(labels, cu_seqlens) != IGNORE_INDEX).sum() / num_items
        return self.output_class(loss=loss, logits=None, cache_params=out.cache_params,
                                 hidden_states=out.hidden_states)


def _bind_block(hf_block: nn.Module, config: xLSTMLargeConfig) -> mLSTMLargeBlock:
    """An mLSTMLargeBlock built on the meta device, then given hf_block's parameter objects
    (the names and shapes within a block are the same in transformers and here)."""
    with torch.device("meta"):
        ours = mLSTMLargeBlock(config)
    theirs = dict(hf_block.named_parameters())
    mine = {k: tuple(p.shape) for k, p in ours.named_parameters()}
    if mine != {k: tuple(p.shape) for k, p in theirs.items()}:
        diff = sorted(set(mine) ^ set(theirs)) or [k for k in mine if mine[k] != tuple(theirs[k].shape)]
        raise ValueError(f"use_xlstm_triton: a {type(hf_block).__name__} whose parameters differ from the "
                         f"xLSTM-7B block's ({diff[:4]}); call it with fuse_blocks=False")
    for name, p in theirs.items():
        owner, _, leaf = name.rpartition(".")
        setattr(ours.get_submodule(owner), leaf, p)
    return ours


def _check_model(model, fn):
    if not isinstance(model, nn.Module):
        raise TypeError(f"{fn}: expected a transformers xLSTM model (xLSTMForCausalLM / xLSTMModel), "
                        f"got {type(model).__name__}")
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in (None, "xlstm"):
        raise TypeError(f"{fn}: expected an xLSTM model (config.model_type 'xlstm'), got model_type {model_type!r}")
    layers = _xlstm_layers(model)
    if not layers:
        raise TypeError(f"{fn}: {type(model).__name__} has no xLSTM layer with an `mlstm_backend` submodule "
                        f"(expected a transformers xLSTMForCausalLM / xLSTMModel)")
    return layers


def use_xlstm_triton(model: nn.Module, chunk_size: Optional[int] = None, fuse_blocks: bool = True,
                     fused_loss: bool = True) -> nn.Module:
    """Make a loaded transformers xLSTM model (xLSTMForCausalLM or xLSTMModel; also the
    `xlstm` package's xLSTMLarge) run on xlstm-triton's kernels, in place.

    Replaces the `mlstm_backend` of every layer with a `TritonMLSTMBackend` and, with
    `fuse_blocks` (needs the model's `config`, a transformers xLSTMConfig), every block's
    forward with a `FusedBlockForward` (module docstring). Weights, device, dtype, cache and
    `generate()` are untouched. chunk_size: the chunk of `mlstm_chunkwise` (None: picked per
    sequence length; a power of two >= 16). With `fused_loss` an xLSTMForCausalLM's forward
    computes the loss of `labels` without logits (`FusedLossForward`). Calling it again
    updates chunk_size, fuse_blocks and fused_loss. Returns `model`.
    """
    layers = _check_model(model, "use_xlstm_triton")
    check_chunk_size(chunk_size)
    blocks = []
    if fuse_blocks:
        if getattr(getattr(model, "config", None), "model_type", None) != "xlstm":
            raise TypeError("use_xlstm_triton: fuse_blocks=True needs a transformers model with its xLSTMConfig "
                            "(model.config); pass fuse_blocks=False for other models")
        config = xLSTMLargeConfig.from_transformers(model.config, chunk_size=chunk_size)
        blocks = [(b, _bind_block(b, config)) for b in _xlstm_blocks(model)]     # all checked first
    for layer in layers:
        old = layer.mlstm_backend
        if isinstance(old, TritonMLSTMBackend):
            old.chunk_size = chunk_size
        else:
            layer.mlstm_backend = TritonMLSTMBackend.replacing(old, chunk_size)
    for block in _xlstm_blocks(model):
        if isinstance(block.__dict__.get("forward"), FusedBlockForward):
            del block.__dict__["forward"]
    for block, ours in blocks:
        block.forward = FusedBlockForward(ours)
    if isinstance(model.__dict__.get("forward"), FusedLossForward):
        del model.__dict__["forward"]
    if fused_loss and _is_causal_lm(model):
        model.forward = FusedLossForward(model)
    return model


def remove_xlstm_triton(model: nn.Module) -> nn.Module:
    """Undo `use_xlstm_triton`: put each layer's original backend and each block's own
    forward back. Returns `model`."""
    for layer in _check_model(model, "remove_xlstm_triton"):
        backend = layer.mlstm_backend
        if isinstance(backend, TritonMLSTMBackend) and backend.original is not None:
            layer.mlstm_backend = backend.original
    for block in _xlstm_blocks(model):
        if isinstance(block.__dict__.get("forward"), FusedBlockForward):
            del block.__dict__["forward"]
    if isinstance(model.__dict__.get("forward"), FusedLossForward):
        del model.__dict__["forward"]
    return model
