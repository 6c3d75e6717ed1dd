"""A plain pre-norm Transformer language model, the attention baseline of the `model` and
`decode` suites.

    x = embedding(idx)
    per layer:  x = x + attention(LN(x));  x = x + mlp(LN(x))
    logits = lm_head(LN(x))      (or, with labels, the loss of xlstm_triton's fused linear + cross-entropy)

Attention: one fused q/k/v projection, rotary position embedding (RoPE) on q and k, causal
`F.scaled_dot_product_attention` (the SDPA backend is whatever the caller's `sdpa_kernel`
context allows), an output projection. MLP: SwiGLU, `down(silu(gate(x)) * up(x))`. LayerNorm
without bias; no dropout; untied LM head (like the xLSTM LM it is compared with).

`matching_config(params, ...)` picks the layer count and MLP width that give a parameter count
close to a target, so the baseline is "a Transformer of the same size".
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn


@dataclasses.dataclass
class TransformerConfig:
    vocab_size: int
    embedding_dim: int = 1024
    num_layers: int = 12
    head_dim: int = 64
    mlp_hidden: int = 2816
    rope_base: float = 10000.0

    @property
    def num_heads(self) -> int:
        return self.embedding_dim // self.head_dim

    def describe(self) -> str:
        return (f"Transformer {self.num_layers} layers d={self.embedding_dim} "
                f"{self.num_heads}x{self.head_dim} heads SwiGLU {self.mlp_hidden} RoPE")


def parameter_count(cfg: TransformerConfig) -> int:
    d, F_ = cfg.embedding_dim, cfg.mlp_hidden
    per_layer = 4 * d * d + 3 * d * F_ + 2 * d          # qkv + out, gate/up/down, two norms
    return 2 * cfg.vocab_size * d + cfg.num_layers * per_layer + d


def matching_config(params: int, vocab_size: int, embedding_dim: int, head_dim: int = 64,
                    multiple_of: int = 64) -> TransformerConfig:
    """The Transformer with `embedding_dim` and the usual SwiGLU width (8/3 d) whose layer count
    is closest to `params`, then the MLP width (a multiple of `multiple_of`) that brings it
    closest to `params`."""
    d = embedding_dim
    body = params - 2 * vocab_size * d - d
    usual = TransformerConfig(vocab_size, d, 1, head_dim, round(8 * d / 3 / multiple_of) * multiple_of)
    layers = max(1, round(body / (parameter_count(usual) - 2 * vocab_size * d - d)))
    per_layer = body / layers
    hidden = max(multiple_of, round((per_layer - 4 * d * d - 2 * d) / (3 * d) / multiple_of) * multiple_of)
    return TransformerConfig(vocab_size, d, layers, head_dim, hidden)


def rope_tables(positions: torch.Tensor, head_dim: int, base: float, dtype) -> tuple:
    """cos, sin of shape (len(positions), head_dim // 2) for rotate-half RoPE."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions.float()[:, None] * inv_freq[None, :]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, S, D); cos, sin (S, D/2)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.embedding_dim
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.out = nn.Linear(d, d, bias=False)

    def _heads(self, x):
        B, S, _ = x.shape
        q, k, v = self.qkv(x).view(B, S, 3, self.cfg.num_heads, self.cfg.head_dim).permute(2, 0, 3, 1, 4)
        return q, k, v                                              # each (B, H, S, D)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Causal self-attention over x (B, S, d)."""
        B, S, d = x.shape
        q, k, v = self._heads(x)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(B, S, d))

    def decode(self, x: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, pos: int,
               cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """One token per row: x (B, 1, d) at position `pos`. Writes its k, v into the caches
        (B, H, L, D) at `pos` and attends over positions 0..pos. cos, sin (1, D/2) for `pos`."""
        B, _, d = x.shape
        q, k, v = self._heads(x)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        k_cache[:, :, pos:pos + 1].copy_(k)
        v_cache[:, :, pos:pos + 1].copy_(v)
        y = F.scaled_dot_product_attention(q, k_cache[:, :, :pos + 1], v_cache[:, :, :pos + 1])
        return self.out(y.transpose(1, 2).reshape(B, 1, d))


class SwiGLU(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.gate_up = nn.Linear(cfg.embedding_dim, 2 * cfg.mlp_hidden, bias=False)
        self.down = nn.Linear(cfg.mlp_hidden, cfg.embedding_dim, bias=False)

    def forward(self, x):
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Layer(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.attn_norm = nn.LayerNorm(cfg.embedding_dim, bias=False)
        self.attn = Attention(cfg)
        self.mlp_norm = nn.LayerNorm(cfg.embedding_dim, bias=False)
        self.mlp = SwiGLU(cfg)

    def forward(self, x, cos, sin):
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x))


class TransformerLM(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.embedding_dim)
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_layers))
        self.final_norm = nn.LayerNorm(cfg.embedding_dim, bias=False)
        self.lm_head = nn.Linear(cfg.embedding_dim, cfg.vocab_size, bias=False)

    def forward(self, idx: torch.Tensor, labels: torch.Tensor | None = None, positions: torch.Tensor | None = None,
                targets: torch.Tensor | None = None) -> torch.Tensor:
        """idx (B, S) -> logits (B, S, vocab); with labels (B, S) the mean next-token loss, by the
        same fused linear + cross-entropy as the xLSTM models (labels shifted inside, -100 skipped).
        For PyTorch's context parallelism, which hands each rank a load-balanced shard of the
        sequence: `positions` (1, S) the shard's positions (RoPE), `targets` (B, S) the labels
        already shifted (each position's next token, -100 at the end), scored as they are."""
        x = self.embedding(idx)
        pos = torch.arange(idx.shape[1], device=idx.device) if positions is None else positions[0]
        cos, sin = rope_tables(pos, self.cfg.head_dim, self.cfg.rope_base, x.dtype)
        for layer in self.layers:
            x = layer(x, cos, sin)
        x = self.final_norm(x)
        if targets is not None:
            from xlstm_triton.modules import linear_cross_entropy
            return linear_cross_entropy(x, self.lm_head.weight, targets, ignore_index=-100)
        if labels is None:
            return self.lm_head(x)
        from xlstm_triton.models.lm_loss import next_token_loss
        return next_token_loss(x, self.lm_head.weight, labels)
