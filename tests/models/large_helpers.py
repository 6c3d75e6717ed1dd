"""Tiny xLSTM-7B models for the tests (tests/models, tests/integrations) and a float64
reference forward written from the architecture's equations (docs/checkpoints.md)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from reference.mlstm import mlstm_recurrent
from xlstm_triton.models import xLSTMLarge, xLSTMLargeConfig

BF16_TAME = dict(gate_scale=0.25, weight_scale=0.5)
E, NH, V, L = 128, 2, 256, 2          # DQK = 32, DV = 64, FFN = 384
CHUNK = 16
S_ODD = 37                             # not a multiple of the chunk


def tiny_config(**kw) -> xLSTMLargeConfig:
    fields = dict(vocab_size=V, embedding_dim=E, num_blocks=L, num_heads=NH, chunk_size=CHUNK)
    fields.update(kw)
    return xLSTMLargeConfig(**fields)


def randomize_(model: torch.nn.Module, seed: int = 0, gate_scale: float = 4.0,
               weight_scale: float = 1.0) -> torch.nn.Module:
    """Weights with O(1) activations everywhere: no zero gate weights (the init has them),
    gate pre-activations large enough to reach the soft cap (gate_scale 4), varied gate biases,
    norms != 1. Smaller gate_scale / weight_scale (projections other than the embedding) give
    a model whose bf16 rounding errors are amplified less (the GPU tests)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(p):
        return torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.device, p.dtype)

    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * rnd(p))
            elif name.endswith("ifgate_preact.bias"):
                p.copy_(rnd(p) + torch.tensor([0.0] * (p.shape[0] // 2) + [2.0] * (p.shape[0] // 2),
                                              device=p.device, dtype=p.dtype))
            elif name.endswith("gate_preact.bias"):
                p.copy_(rnd(p) + (2.0 if "fgate" in name else 0.0))
            elif p.dim() == 2:
                if "gate_preact" in name and "ogate" not in name:
                    scale = gate_scale
                else:
                    scale = 1.0 if "embedding" in name else weight_scale
                p.copy_(rnd(p) * scale / math.sqrt(p.shape[1]))
            else:
                p.copy_(0.1 * rnd(p))
    return model


def tiny_model(device="cpu", seed=0, gate_scale=4.0, weight_scale=1.0, **kw) -> xLSTMLarge:
    return randomize_(xLSTMLarge(tiny_config(**kw)), seed, gate_scale, weight_scale).to(device).eval()


# ---------------------------------------------------------------------- reference (docs/checkpoints.md)

def reference_logits(sd: dict, cfg: xLSTMLargeConfig, ids: torch.Tensor) -> torch.Tensor:
    """Float64 forward from the architecture's equations on a single-mode state dict (our names).
    Differentiable: float64 leaves in `sd` receive gradients."""
    sd = {k: t.double().cpu() for k, t in sd.items()}
    ids = ids.cpu()
    nh, eps_n = cfg.num_heads, cfg.norm_eps

    def rms(x, w):
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps_n) * w

    def cap(x, c):
        return c * torch.tanh(x / c)

    def heads(t):                                           # (B, S, NH*D) -> (B, NH, S, D)
        return t.reshape(*t.shape[:2], nh, -1).transpose(1, 2)

    x = sd["embedding.weight"][ids]
    for j in range(cfg.num_blocks):
        p = f"backbone.blocks.{j}."
        w = lambda name: sd[p + name]                       # noqa: E731
        a = rms(x, w("norm_mlstm.weight"))
        q, k, v, o = (a @ w(f"mlstm_layer.{n}.weight").T for n in ("q", "k", "v", "ogate_preact"))
        i = cap(a @ w("mlstm_layer.igate_preact.weight").T + w("mlstm_layer.igate_preact.bias"), cfg.gate_soft_cap)
        f = cap(a @ w("mlstm_layer.fgate_preact.weight").T + w("mlstm_layer.fgate_preact.bias"), cfg.gate_soft_cap)
        h = mlstm_recurrent(heads(q), heads(k), heads(v), i.transpose(1, 2), f.transpose(1, 2), eps=cfg.eps)
        h = h.transpose(1, 2)                                # (B, S, NH, DV)
        h = (h - h.mean(-1, keepdim=True)) / torch.sqrt(h.var(-1, unbiased=False, keepdim=True) + eps_n)
        h = h * w("mlstm_layer.multihead_norm.weight").view(nh, -1)
        x = x + (torch.sigmoid(o) * h.flatten(-2)) @ w("mlstm_layer.out_proj.weight").T
        b = rms(x, w("norm_ffn.weight"))
        up = F.silu(b @ w("ffn.proj_up_gate.weight").T) * (b @ w("ffn.proj_up.weight").T)
        x = x + up @ w("ffn.proj_down.weight").T
    x = rms(x, sd["backbone.out_norm.weight"])
    return cap(x @ sd["lm_head.weight"].T, cfg.output_logit_soft_cap)
