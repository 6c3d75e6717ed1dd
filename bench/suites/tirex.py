"""TiRex forecast latency: its own backends against `integrations.tirex.use_xlstm_triton`.

TiRex's architecture with random weights (the pretrained checkpoint is not downloaded): 12 sLSTM
blocks of 4 heads of 128 (E = 512), patches of 32, a context of 2,048 steps (64 tokens), 9
quantiles, forecasting 64 steps (two patches: two forward passes). Batches of 1 and 256 series.
Providers: TiRex's `torch` backend (a Python loop over the steps, bfloat16 states), its `cuda`
backend (the `xlstm` package's kernel, built with nvcc at first use; unavailable without the
package), and ours. Each time is one `model.forecast` call, float32 inputs.
"""

from __future__ import annotations

import torch

from bench.harness import Provider, device, require_module

CONFIG = dict(input_patch_size=32, output_patch_size=32, quantiles=[0.1 * q for q in range(1, 10)],
              block_kwargs=dict(embedding_dim=512, num_heads=4, num_blocks=12, ffn_proj_factor=2.6667),
              input_ff_dim=2048)


def cases(quick: bool = False) -> list[dict]:
    if quick:
        return [dict(series=2, context=64, horizon=16, quick=True)]
    return [dict(series=b, context=2048, horizon=64) for b in (1, 256)]


def _model(case, backend):
    tirex = require_module("tirex.models.tirex")
    if backend == "cuda":
        require_module("xlstm")
    cfg = dict(CONFIG)
    if case.get("quick"):
        cfg.update(input_patch_size=8, output_patch_size=8, input_ff_dim=128,
                   block_kwargs=dict(embedding_dim=64, num_heads=4, num_blocks=2, ffn_proj_factor=2.6667))
    torch.manual_seed(0)
    model = tirex.TiRexZero(backend=backend, model_config=cfg, train_ctx_len=case["context"])
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
    return model.to(device()).eval()


def _forecast(backend, ours=False):
    def setup(case, mode, dtype):
        model = _model(case, backend)
        if ours:
            from xlstm_triton.integrations.tirex import use_xlstm_triton
            use_xlstm_triton(model)
        context = torch.randn(case["series"], case["context"], device=device()).cumsum(-1)

        def run():
            model.forecast(context, prediction_length=case["horizon"], batch_size=case["series"])
        run.columns = lambda ms: dict(series_per_s=round(case["series"] / ms * 1e3, 1))
        return run
    return setup


def providers() -> list[Provider]:
    return [
        Provider("tirex.torch", _forecast("torch"), modes=("forecast",)),
        Provider("tirex.cuda", _forecast("cuda"), modes=("forecast",), timeout_s=900),
        Provider("xlstm_triton", _forecast("torch", ours=True), modes=("forecast",)),
    ]


TABLE_KEYS = ["series", "context", "horizon"]
