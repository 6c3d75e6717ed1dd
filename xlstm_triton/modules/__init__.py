"""Building blocks shared by every model: norms, convolution, projections, activations, FFNs.

    norms.py            LayerNorm, MultiHeadLayerNorm, RMSNorm
    add_norm.py         residual add + RMSNorm / LayerNorm, one kernel each way (with backward)
    gated_head_norm.py  per-head norm (+ skip) * act(gate), the mLSTM layers' output: one kernel each way
    activations.py      the FFN activations, soft_cap, silu_mul and silu_mul_linear (fwd + bwd kernels)
    ffn.py              GatedFeedForward (paper), SwiGLUFeedForward (xLSTM-7B)
    linear_cross_entropy.py  LM head + soft cap + cross-entropy without the logits (training loss)
    conv.py             CausalConv1d (with a state for decoding)
    causal_conv1d.py    its fused kernels: conv (+ SiLU) forward and backward from a state
    linear.py           LinearHeadwise (block-diagonal, one block per head)
    headwise_linear.py  the fused kernel of tiny square blocks (q, k, v of the paper mLSTM layer)
    init.py             small_init_, wang_init_, bias_linspace_init_

Each imports only from `xlstm_triton.utils`, `checks` and `ops`; the layers build on them.
"""

from .add_norm import add_norm, add_norm_torch
from .activations import ACTIVATIONS, silu_mul, silu_mul_linear, soft_cap
from .causal_conv1d import (causal_conv1d, causal_conv1d_backward, causal_conv1d_backward_pre, causal_conv1d_forward,
                            causal_conv1d_torch)
from .conv import CausalConv1d
from .ffn import GatedFeedForward, SwiGLUFeedForward, gated_activation
from .gated_head_norm import (gated_head_norm, gated_head_norm_torch, head_norm_gate, head_norm_gate_backward,
                              head_norm_gate_forward, head_norm_gate_torch)
from .init import bias_linspace_init_, small_init_, wang_init_
from .headwise_linear import (MAX_BLOCK, ConvFirst, ConvInputGrad, GateProjection, gate_column_blocks, headwise_linear,
                              headwise_linear_backward, headwise_linear_forward, headwise_linear_torch,
                              weight_grad_programs)
from .linear import LinearHeadwise, linear_headwise_many
from .linear_cross_entropy import LinearCrossEntropyLoss, linear_cross_entropy, linear_cross_entropy_torch
from .norms import LayerNorm, MultiHeadLayerNorm, RMSNorm

__all__ = ["add_norm", "add_norm_torch", "ACTIVATIONS", "silu_mul", "silu_mul_linear", "soft_cap", "causal_conv1d",
           "causal_conv1d_backward", "causal_conv1d_backward_pre", "causal_conv1d_forward", "causal_conv1d_torch",
           "CausalConv1d",
           "GatedFeedForward", "SwiGLUFeedForward", "gated_activation",
           "gated_head_norm", "gated_head_norm_torch", "head_norm_gate", "head_norm_gate_backward",
           "head_norm_gate_forward", "head_norm_gate_torch",
           "bias_linspace_init_", "small_init_", "wang_init_",
           "LinearHeadwise", "linear_headwise_many", "MAX_BLOCK", "headwise_linear", "headwise_linear_backward",
           "headwise_linear_forward", "headwise_linear_torch", "ConvFirst", "ConvInputGrad",
           "GateProjection", "gate_column_blocks",
           "weight_grad_programs",
           "LinearCrossEntropyLoss", "linear_cross_entropy", "linear_cross_entropy_torch", "LayerNorm",
           "MultiHeadLayerNorm", "RMSNorm"]
