"""Small building blocks of the xLSTM layers, in plain PyTorch.

- `LayerNorm`: layer norm whose weight is stored as an offset (scale = 1 + weight), bias optional.
- `MultiHeadLayerNorm`: the same norm applied per head (a group norm with one group per head).
- `CausalConv1d`: causal depthwise conv1d over time that can carry the last K-1 inputs as a state.
- `LinearHeadwise`: block-diagonal linear map, one dense block per head.
- `GatedFeedForward`: E -> (gate, up) -> act(gate) * up -> E.
- init helpers: `small_init_`, `wang_init_`, `bias_linspace_init_`.

These are memory-bound elementwise / small-matmul operations; PyTorch (and `torch.compile`)
handle them well, so none has a custom kernel.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import FeedForwardConfig

__all__ = ["LayerNorm", "MultiHeadLayerNorm", "CausalConv1d", "LinearHeadwise", "GatedFeedForward",
           "small_init_", "wang_init_", "bias_linspace_init_", "WeightDecayGroupsMixin"]


# ------------------------------------------------------------------------------------- init

def small_init_(param: torch.Tensor, dim: int) -> torch.Tensor:
    """Normal init with std sqrt(2 / (5 dim)) (Nguyen & Salazar, 2019, "Transformers without
    Tears"), as the `xlstm` package uses for input projections."""
    with torch.no_grad():
        return param.normal_(0.0, math.sqrt(2.0 / (5.0 * dim)))


def wang_init_(param: torch.Tensor, dim: int, num_blocks: int) -> torch.Tensor:
    """Normal init with std 2 / (num_blocks sqrt(dim)) (GPT-NeoX's "wang" init) for output
    projections of residual branches."""
    with torch.no_grad():
        return param.normal_(0.0, 2.0 / num_blocks / math.sqrt(dim))


def bias_linspace_init_(param: torch.Tensor, start: float = 3.4, end: float = 6.0) -> torch.Tensor:
    """A 1-d parameter set to evenly spaced values from start to end."""
    if param.dim() != 1:
        raise ValueError(f"bias_linspace_init_: expected a 1-d parameter, got shape {tuple(param.shape)}")
    with torch.no_grad():
        return param.copy_(torch.linspace(start, end, param.shape[0]))


# ------------------------------------------------------------------------------------- norms

class LayerNorm(nn.Module):
    """LayerNorm over the last dim with an optional bias. With `residual_weight` (the default) the
    weight parameter holds an offset: the scale is 1 + weight, and the weight starts at 0."""

    def __init__(self, ndim: int = -1, weight: bool = True, bias: bool = False, eps: float = 1e-5,
                 residual_weight: bool = True):
        super().__init__()
        if ndim <= 0:
            raise ValueError(f"LayerNorm: ndim must be > 0, got {ndim}")
        self.weight = nn.Parameter(torch.zeros(ndim)) if weight else None
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None
        self.eps = eps
        self.residual_weight = residual_weight
        self.ndim = ndim
        self.reset_parameters()

    @property
    def weight_proxy(self) -> Optional[torch.Tensor]:
        """The scale actually applied: 1 + weight (or weight without `residual_weight`)."""
        if self.weight is None:
            return None
        return 1.0 + self.weight if self.residual_weight else self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (self.ndim,), self.weight_proxy, self.bias, self.eps)

    def reset_parameters(self) -> None:
        if self.weight is not None:
            with torch.no_grad():
                self.weight.fill_(0.0 if self.residual_weight else 1.0)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        return (f"{self.ndim}, eps={self.eps}, weight={self.weight is not None}, "
                f"bias={self.bias is not None}, residual_weight={self.residual_weight}")


class MultiHeadLayerNorm(LayerNorm):
    """Per-head normalization: input (..., NH, DH), each head normalized over its DH features,
    then scaled (1 + weight) and shifted by the (NH * DH,) parameters. Returns (..., NH * DH).
    This is a group norm with NH groups over the flattened NH * DH features."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        NH, DH = x.shape[-2:]
        if NH * DH != self.ndim:
            raise ValueError(f"MultiHeadLayerNorm: expected input (..., NH, DH) with NH * DH = "
                             f"{self.ndim}, got shape {tuple(x.shape)}")
        y = F.layer_norm(x, (DH,), eps=self.eps)
        w, b = self.weight_proxy, self.bias
        if w is not None:
            y = y * w.view(NH, DH)
        if b is not None:
            y = y + b.view(NH, DH)
        return y.flatten(-2)


# ------------------------------------------------------------------------------------- conv

class CausalConv1d(nn.Module):
    """Causal depthwise convolution over time with a bias: y_t = b + sum_j w_j * x_{t-K+1+j}.

    Input and output (B, S, F). The parameters live in `self.conv` (an `nn.Conv1d` with
    groups=F: weight (F, 1, K), bias (F)), as in the `xlstm` package. The state is the last
    K-1 inputs, (B, K-1, F), oldest first; zeros (the default) mean "no history".
    `kernel_size=0` is the identity (no parameters, empty state).
    """

    def __init__(self, feature_dim: int, kernel_size: int = 4, bias: bool = True):
        super().__init__()
        if feature_dim <= 0:
            raise ValueError(f"CausalConv1d: feature_dim must be > 0, got {feature_dim}")
        if kernel_size < 0:
            raise ValueError(f"CausalConv1d: kernel_size must be >= 0, got {kernel_size}")
        self.feature_dim, self.kernel_size = feature_dim, kernel_size
        if kernel_size == 0:
            self.conv = None
        else:
            self.conv = nn.Conv1d(feature_dim, feature_dim, kernel_size, groups=feature_dim, bias=bias)
            # The xlstm package initializes this conv twice (constructor, then reset); doing the
            # same keeps seeded constructions identical.
            self.reset_parameters()

    @property
    def state_len(self) -> int:
        return max(self.kernel_size - 1, 0)

    def reset_parameters(self) -> None:
        if self.conv is not None:
            self.conv.reset_parameters()

    def zero_state(self, batch_size: int, device=None, dtype=None) -> torch.Tensor:
        ref = self.conv.weight if self.conv is not None else None
        device = device if device is not None else (ref.device if ref is not None else None)
        dtype = dtype if dtype is not None else (ref.dtype if ref is not None else torch.float32)
        return torch.zeros(batch_size, self.state_len, self.feature_dim, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, state: Optional[torch.Tensor] = None,
                return_state: bool = False):
        """x (B, S, F), state (B, K-1, F) or None. Returns y (B, S, F), and with
        `return_state` also the new state (the last K-1 inputs)."""
        B, S, Fd = x.shape
        K = self.kernel_size
        if state is not None and tuple(state.shape) != (B, self.state_len, Fd):
            raise ValueError(f"conv state: expected shape (B, K-1, F) = {(B, self.state_len, Fd)}, "
                             f"got {tuple(state.shape)}")
        if K == 0:
            y = x
            new_state = x.new_zeros(B, 0, Fd) if return_state else None
        else:
            if state is None:
                xs = F.pad(x, (0, 0, K - 1, 0))                  # zeros before the first step
            else:
                xs = torch.cat([state.to(x.dtype), x], dim=1)    # (B, K-1+S, F)
            w, b = self.conv.weight, self.conv.bias
            if S == 1:   # decoding: one weighted sum over the window, no conv launch
                y = torch.einsum("bkf,fk->bf", xs, w[:, 0, :].to(x.dtype))[:, None]
                if b is not None:
                    y = y + b.to(x.dtype)
            else:
                y = F.conv1d(xs.transpose(1, 2), w.to(x.dtype), None if b is None else b.to(x.dtype),
                             groups=Fd).transpose(1, 2)
            new_state = xs[:, xs.shape[1] - (K - 1):] if return_state else None
        return (y, new_state) if return_state else y

    def extra_repr(self) -> str:
        return f"feature_dim={self.feature_dim}, kernel_size={self.kernel_size}"


# ------------------------------------------------------------------------------------- linear

class LinearHeadwise(nn.Module):
    """Block-diagonal linear map: the last dim (in_features) is split into `num_heads` blocks
    and each block has its own dense (out/NH x in/NH) matrix. weight (NH, out/NH, in/NH),
    bias (out_features) or None. Init: normal, std sqrt(2 / (5 * in/NH))."""

    def __init__(self, in_features: int, num_heads: int, bias: bool = True,
                 out_features: Optional[int] = None):
        super().__init__()
        out_features = in_features if out_features is None else out_features
        if num_heads <= 0 or in_features % num_heads or out_features % num_heads:
            raise ValueError(f"LinearHeadwise: num_heads={num_heads} must be > 0 and divide "
                             f"in_features={in_features} and out_features={out_features}")
        self.in_features, self.out_features, self.num_heads = in_features, out_features, num_heads
        self.weight = nn.Parameter(torch.empty(num_heads, out_features // num_heads,
                                               in_features // num_heads))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.weight.normal_(0.0, math.sqrt(2.0 / 5.0 / self.weight.shape[-1]))
            if self.bias is not None:
                self.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        if x.shape[-1] != self.in_features:
            raise ValueError(f"LinearHeadwise: expected x of shape (..., {self.in_features}), got "
                             f"{tuple(x.shape)}")
        # explicit block size (not -1): a reshape of an empty batch cannot infer it
        x = x.reshape(*lead, self.num_heads, self.in_features // self.num_heads)
        y = torch.einsum("...hd,hod->...ho", x, self.weight)
        y = y.reshape(*lead, self.out_features)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"num_heads={self.num_heads}, bias={self.bias is not None}")


# ------------------------------------------------------------------------------------- FFN

def _relu2(x):
    return torch.square(F.relu(x))


_ACT = {"gelu": F.gelu, "relu": F.relu, "relu^2": _relu2, "sigmoid": torch.sigmoid,
        "swish": F.silu, "selu": F.selu}


class GatedFeedForward(nn.Module):
    """proj_up E -> 2P split into (gate, up); act(gate) * up; proj_down P -> E; dropout.
    P = config._proj_up_dim (proj_factor * E rounded up to a multiple of 64)."""

    def __init__(self, config: FeedForwardConfig):
        super().__init__()
        self.config = config
        if config.ff_type != "ffn_gated":
            raise ValueError(f"FeedForwardConfig.ff_type: only 'ffn_gated' exists, got {config.ff_type!r}")
        if config.act_fn not in _ACT:
            raise ValueError(f"FeedForwardConfig.act_fn: unknown activation {config.act_fn!r}; "
                             f"expected one of {list(_ACT)}")
        if config.embedding_dim <= 0 or not config._proj_up_dim or config._proj_up_dim <= 0:
            raise ValueError(f"FeedForwardConfig: embedding_dim must be set (> 0) and give a positive "
                             f"up-projection, got embedding_dim={config.embedding_dim}, "
                             f"_proj_up_dim={config._proj_up_dim}")
        E, P = config.embedding_dim, config._proj_up_dim
        self.proj_up = nn.Linear(E, 2 * P, bias=config.bias)
        self.proj_down = nn.Linear(P, E, bias=config.bias)
        self.act_fn = _ACT[config.act_fn]
        self.dropout = nn.Dropout(config.dropout)
        self.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.proj_up(x).split(self.config._proj_up_dim, dim=-1)
        return self.dropout(self.proj_down(self.act_fn(gate) * up))

    def reset_parameters(self) -> None:
        small_init_(self.proj_up.weight, dim=self.config.embedding_dim)
        if self.proj_up.bias is not None:
            nn.init.zeros_(self.proj_up.bias)
        wang_init_(self.proj_down.weight, dim=self.config.embedding_dim,
                   num_blocks=self.config._num_blocks or 1)
        if self.proj_down.bias is not None:
            nn.init.zeros_(self.proj_down.bias)


# ------------------------------------------------------------------------------------- optim groups

class WeightDecayGroupsMixin:
    """`get_weight_decay_optim_groups()` -> (decay, no_decay) parameter tuples, with the
    `xlstm` package's rule: weight decay on parameters whose name contains "weight" and not
    "norm"; none on the rest (biases, norm weights, `learnable_skip`, the sLSTM `_bias_`...)."""

    def _create_weight_decay_optim_groups(self) -> tuple[Sequence[nn.Parameter], Sequence[nn.Parameter]]:
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if p.requires_grad:
                (decay if "weight" in name and "norm" not in name else no_decay).append(p)
        return tuple(decay), tuple(no_decay)

    def get_weight_decay_optim_groups(self) -> tuple[Sequence[nn.Parameter], Sequence[nn.Parameter]]:
        decay, no_decay = self._create_weight_decay_optim_groups()
        ids_d, ids_n = {id(p) for p in decay}, {id(p) for p in no_decay}
        if ids_d & ids_n:
            raise RuntimeError("a parameter is in both weight-decay groups")
        missing = [n for n, p in self.named_parameters()
                   if p.requires_grad and id(p) not in ids_d | ids_n]
        if missing:
            raise RuntimeError(f"parameters in no weight-decay group: {missing}")
        return decay, no_decay

    def get_weight_decay_optim_group_param_names(self) -> tuple[list[str], list[str]]:
        decay, no_decay = self.get_weight_decay_optim_groups()
        ids_d, ids_n = {id(p) for p in decay}, {id(p) for p in no_decay}
        params = list(self.named_parameters())
        return [n for n, p in params if id(p) in ids_d], [n for n, p in params if id(p) in ids_n]
