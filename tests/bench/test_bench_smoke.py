"""Smoke tests of the benchmark suites `kernels`, `decode`, `model` and their plots, on CPU with
tiny shapes: every case function builds, every provider either measures or says why not, the
command line writes CSV rows, and the plots write PNG files. Timings on CPU mean nothing; the
kernels' own correctness is tested elsewhere, so the ops take their PyTorch paths here
(TRITON_INTERPRET=0) on one thread, which keeps this file at a few seconds.
"""

from __future__ import annotations

import csv
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import harness
from bench.harness import measure
from bench.suites import decode as suite_decode
from bench.suites import kernels as suite_kernels
from bench.suites import model as suite_model

REPO = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG"


@pytest.fixture(autouse=True)
def _fast_cpu_runs(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")         # for the command line's worker processes
    monkeypatch.setattr(measure, "WALL_CLOCK_REPS", 1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)      # tiny ops: thread synchronization would cost more than the work
    yield
    torch.set_num_threads(threads)


def _run(suite, provider_names, cases, dtype="float32", modes=None):
    """In-process rows of the named providers over `cases` (the cases each applies to), in each
    provider's modes or those of `modes` it has."""
    providers = {p.name: p for p in suite.providers()}
    rows = []
    for name in provider_names:
        p = providers[name]
        if modes is not None:
            p = dataclasses.replace(p, modes=tuple(m for m in p.modes if m in modes))
        for row in harness.measure_cases(p, [c for c in cases if p.applies(c)], dtype):
            rows.append(dict(row, provider=name))
    return rows


def _ok(rows, provider):
    got = [r for r in rows if r["provider"] == provider]
    assert got, f"{provider}: no rows"
    for r in got:
        assert r["status"] == "ok", (provider, r["status"], r["error"])
        assert r["ms"] > 0
    return got


def test_kernels_quick_cases_and_providers():
    cases = [c for c in suite_kernels.cases(quick=True) if c["S"] == 32]
    assert {c["kernel"] for c in cases} == {"mlstm", "slstm", "attention"}
    assert len({c["hidden"] for c in cases}) == 1          # each figure pairs equal hidden sizes
    full = suite_kernels.cases()
    assert {c["S"] for c in full} == {512, 2048, 8192, 32768, 65536}
    assert all(c["B"] * c["S"] == suite_kernels.TOKENS for c in full)

    rows = _run(suite_kernels, [p.name for p in suite_kernels.providers()], cases)
    ours = _ok(rows, "xlstm_triton")
    assert {(r["case"]["kernel"], r["mode"]) for r in ours} == {
        ("mlstm", "fw"), ("mlstm", "fwbw"), ("slstm", "fw"), ("slstm", "fwbw")}
    if not torch.cuda.is_available():
        for r in rows:
            if r["provider"] != "xlstm_triton":
                assert r["status"] == "unavailable", r
        # attention providers only get attention cases, peers only their kernel's
        assert all(r["case"]["kernel"] == "attention" for r in rows if r["provider"].startswith("attention"))
        assert all(r["case"]["kernel"] == "mlstm" for r in rows if r["provider"].startswith("mlstm_kernels"))


def test_decode_quick_rows_and_floors():
    cases = [c for c in suite_decode.cases(quick=True) if c["B"] == 2]
    names = ["xlstm_triton.mLSTMLayer", "attention.sdpa", "attention.sdpa_flash"]
    rows = _run(suite_decode, names, cases)
    ours = _ok(rows, "xlstm_triton.mLSTMLayer")
    attention = _ok(rows, "attention.sdpa")
    for r in ours + attention:
        assert r["mode"] == "step"
        assert {"params", "state_bytes", "floor_ms"} <= set(r["columns"])
    # the mLSTM state has a fixed size; the KV cache grows with the context
    assert len({r["columns"]["state_bytes"] for r in ours}) == 1
    by_ctx = sorted((r["case"]["ctx"], r["columns"]["state_bytes"]) for r in attention)
    assert by_ctx[0][1] < by_ctx[-1][1]
    E, B, ctx = cases[-1]["E"], cases[-1]["B"], cases[-1]["ctx"]
    assert by_ctx[-1][1] == 2 * B * (ctx + 1) * E * 4   # k and v, float32
    flash = [r for r in rows if r["provider"] == "attention.sdpa_flash"]
    if not torch.cuda.is_available():
        assert {r["status"] for r in flash} == {"unavailable"}


def test_model_quick_rows_and_matching_size():
    case = suite_model.cases(quick=True)[0]
    names = ["xlstm_triton", "xlstm_triton.mlstm_only", "xlstm_large", "transformer"]
    try:
        import mlstm_kernels  # noqa: F401
        import xlstm  # noqa: F401
        names.append("xlstm")
    except ImportError:
        pass
    if torch.cuda.is_available():
        # The compiled and graph modes run in their own process (test_graph_modes_quick_rows):
        # a device-side failure there would end this process's CUDA context.
        rows = _run(suite_model, names, [case], modes=("eager",))
    else:
        rows = _run(suite_model, names, [case])
        for mode in ("compiled", "compiled_graphs", "cudagraph"):       # GPU only
            gpu_rows = [r for r in rows if r["mode"] == mode]
            assert gpu_rows and all(r["status"] == "unavailable" for r in gpu_rows), mode
    rows = [r for r in rows if r["mode"] == "eager"]
    got = {name: _ok(rows, name)[0]["columns"] for name in names}
    xlstm_params = got["xlstm_triton"]["params"]
    assert xlstm_params == suite_model.xlstm_parameter_count(case)
    assert abs(got["transformer"]["params"] - xlstm_params) / xlstm_params < 0.1
    if "xlstm" in got:       # same config in the xlstm package: the same parameter count
        assert got["xlstm"]["params"] == xlstm_params
    assert got["xlstm_triton.mlstm_only"]["params"] < xlstm_params     # no sLSTM blocks or FFN
    hopper = torch.cuda.is_available() and any(n in torch.cuda.get_device_name() for n in ("H100", "H200"))
    for cols in got.values():
        assert cols["tokens_per_s"] > 0 and cols["arch"] and cols["tflops"] > 0
        # MFU against the Hopper bf16 peak where that is the GPU, else none
        assert (0 < cols["mfu"] < 1) if hopper else cols["mfu"] is None, cols["mfu"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch.compile and CUDA graphs of a model step: GPU")
@pytest.mark.parametrize("provider", ["xlstm_triton", "xlstm_triton.mlstm_only", "xlstm_large"])
def test_graph_modes_quick_rows(provider, tmp_path):
    """The model suite's compiled, compiled_graphs and cudagraph steps of our models measure at
    the quick shapes (a process each: a device-side failure ends its CUDA context)."""
    out = tmp_path / "model.csv"
    cmd = [sys.executable, "-m", "bench", "model", "--quick", "--dtype", "float32", "--providers", provider,
           "--modes", "compiled,compiled_graphs,cudagraph", "--csv", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = list(csv.DictReader(open(out)))
    assert rows
    for r in rows:
        assert r["status"] == "ok", (r["mode"], r["status"], r["error"][-1500:])


def test_tirex_quick_rows():
    pytest.importorskip("tirex", reason="the tirex extra")
    from bench.suites import tirex as suite_tirex
    rows = _run(suite_tirex, ["tirex.torch", "xlstm_triton"], suite_tirex.cases(quick=True))
    for name in ("tirex.torch", "xlstm_triton"):
        (row,) = _ok(rows, name)
        assert row["mode"] == "forecast" and row["ms"] > 0 and row["columns"]["series_per_s"] > 0


def test_slstm_batch_last_provider_rows():
    """`bench slstm`'s xlstm_triton.batch_last (the whole-head batch-last kernels) measures whole
    heads, forward and forward+backward, and skips split heads with the reason."""
    from bench.suites import slstm as suite_slstm
    cases = [dict(B=2, T=4, NH=2, DH=16, hidden=32), dict(B=2, T=4, NH=1, DH=256, hidden=256)]
    rows = _run(suite_slstm, ["xlstm_triton.batch_last"], cases)
    whole = [r for r in rows if r["case"]["DH"] == 16]
    assert sorted(r["mode"] for r in whole) == ["fw", "fwbw"]
    assert all(r["status"] == "ok" and r["ms"] > 0 for r in whole)
    split = [r for r in rows if r["case"]["DH"] == 256]
    assert split and all(r["status"] == "skipped" and "whole heads only" in r["error"] for r in split)


def test_slstm_cases_have_the_model_shapes():
    from bench.suites import slstm as suite_slstm
    shapes = {(c["NH"], c["DH"], c["B"], c["T"]) for c in suite_slstm.cases()}
    assert {(4, 256, 8, 2048), (4, 256, 2, 8192), (4, 128, 1, 64), (4, 128, 256, 64)} <= shapes


def test_matching_transformer_at_full_size():
    from bench.baselines.transformer import matching_config, parameter_count

    target = suite_model.xlstm_parameter_count(suite_model.cases()[0])
    assert 200e6 < target < 400e6
    cfg = matching_config(target, 50304, 1024)
    assert abs(parameter_count(cfg) - target) / target < 0.01
    assert cfg.num_heads * cfg.head_dim == 1024


def test_command_line_writes_rows(tmp_path, capsys):
    out = tmp_path / "decode.csv"
    cmd = [sys.executable, "-m", "bench", "decode", "--quick", "--dtype", "float32",
           "--providers", "attention.sdpa", "--csv", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == len(suite_decode.cases(quick=True))
    for r in rows:
        assert r["suite"] == "decode" and r["provider"] == "attention.sdpa" and r["status"] == "ok"
        assert float(r["ms"]) > 0 and r["date"] and r["torch"] and r["gpu"]
    from bench.__main__ import main
    with pytest.raises(SystemExit):
        main(["model", "--help"])
    help_text = capsys.readouterr().out
    assert "tokens_per_s" in help_text and "--quick" in help_text


# ------------------------------------------------------------------ plots

def test_crossover_interpolates_in_log_log():
    from bench.tools.plot_scaling import crossover

    ours = {512: 10.0, 2048: 10.0, 8192: 10.0}
    attention = {512: 2.0, 2048: 8.0, 8192: 32.0}            # linear in S: equals 10 at S=2560
    x, ours_better_after = crossover(ours, attention)
    assert x == pytest.approx(2560) and ours_better_after
    assert crossover(ours, {s: 1.0 for s in ours}) is None
    x, _ = crossover({1: 100.0, 4: 100.0}, {1: 400.0, 4: 25.0}, higher_is_better=True)
    assert x == pytest.approx(2.0)


def _write_csv(path, rows):
    harness.append_csv(path, rows)
    return path


def _env(suite):
    return dict(suite=suite, dtype="bfloat16", status="ok", error="", date="2026-11-24", torch="2.11.0",
                triton="3.6.0", gpu="NVIDIA H100 80GB HBM3", peers="", commit="abc1234")


def test_plots_of_new_suites(tmp_path):
    pytest.importorskip("matplotlib")
    from bench.tools.plot import plot_csv

    kernels = []
    for S in (512, 2048, 8192):
        B = 65536 // S
        for mode in ("fw", "fwbw"):
            kernels.append(dict(provider="xlstm_triton", kernel="mlstm", geometry="7B", B=B, S=S, NH=8,
                                DQK=256, DV=512, hidden=4096, mode=mode, ms=3.0, peak_mib=4000, **_env("kernels")))
            kernels.append(dict(provider="attention.sdpa_cudnn", kernel="attention", geometry="32x128", B=B,
                                S=S, NH=32, DQK=128, DV=128, hidden=4096, mode=mode, ms=S / 1000,
                                peak_mib=S / 2, **_env("kernels")))
            kernels.append(dict(provider="mlstm_kernels.xl_chunk", kernel="mlstm", geometry="7B", B=B, S=S,
                                NH=8, DQK=256, DV=512, hidden=4096, mode=mode, ms=None, peak_mib=None,
                                **dict(_env("kernels"), status="crashed", error="worker died")))
    decode = []
    for B in (1, 16):
        for ctx in (1024, 4096, 16384):
            decode.append(dict(provider="xlstm_triton.mLSTMLayer", E=1024, B=B, ctx=ctx, mlstm_heads=4,
                               attn_head_dim=64, params=6.4e6, state_bytes=4 * 2**20 * B, floor_ms=0.007,
                               mode="step", ms=0.02, peak_mib=40, **_env("decode")))
            decode.append(dict(provider="attention.sdpa_flash", E=1024, B=B, ctx=ctx, mlstm_heads=4,
                               attn_head_dim=64, params=4.2e6, state_bytes=ctx * B * 4096, floor_ms=ctx * 1e-6,
                               mode="step", ms=ctx * 5e-6, peak_mib=ctx * B / 256, **_env("decode")))
    model = []
    for ctx in (2048, 4096, 8192):
        for provider, tps, arch in (("xlstm_triton", 60000.0, "xLSTM[21:3]"),
                                    ("transformer", 200000.0 * 2048 / ctx, "Transformer 12 layers")):
            model.append(dict(provider=provider, ctx=ctx, B=16384 // ctx, tokens=16384, E=1024, blocks=24,
                              slstm_at="7,15,23", mlstm_heads=4, slstm_heads=4, vocab=50304, params=2.56e8,
                              params_non_embedding=1.5e8, tokens_per_s=tps, arch=arch, mode="train",
                              ms=16384 / tps * 1e3, peak_mib=30000, **_env("model")))
    distributed = []
    for provider, parallel, ctx in (("xlstm_large.ddp", "dp", 4096), ("xlstm_large.cp", "cp", 32768),
                                    ("xlstm_large.cp", "cp", 65536)):
        for world in (1, 2, 4):
            oom = parallel == "cp" and ctx == 65536 and world == 1
            distributed.append(dict(provider=provider, E=2048, blocks=24, heads=8, vocab=50304, parallel=parallel,
                                    world=world, ctx=ctx, B=4 if parallel == "dp" else 1,
                                    tokens_per_s=None if oom else 60000.0 * world, gpus=world, ranks=world,
                                    mode="train", ms=None if oom else 300.0, peak_mib=None if oom else 30000,
                                    **dict(_env("distributed"), status="oom" if oom else "ok")))
    figs = []
    for name, rows in (("kernels", kernels), ("decode", decode), ("model", model), ("distributed", distributed)):
        figs += plot_csv(_write_csv(tmp_path / f"{name}.csv", rows), tmp_path / "figures")
    names = sorted(f.name for f in figs)
    assert names == ["decode.png", "distributed.png", "kernels_mlstm_7B.png", "model.png"]
    for f in figs:
        assert f.read_bytes()[:4] == PNG_MAGIC and f.stat().st_size > 10_000


def test_existing_plots_still_work(tmp_path):
    pytest.importorskip("matplotlib")
    from bench.tools.plot import plot_csv

    figs = plot_csv(REPO / "bench" / "results" / "mlstm.csv", tmp_path)
    assert {f.name for f in figs} >= {"mlstm_7B.png"}
    assert all(f.read_bytes()[:4] == PNG_MAGIC for f in figs)


def test_packed_quick_cases_and_providers():
    """`bench packed`: the document mix fills its tokens exactly within the clip bounds, and
    both providers measure every layout (CPU: the ops' PyTorch paths)."""
    from bench.suites import packed as suite_packed
    lengths = suite_packed.document_lengths()
    assert sum(lengths) == suite_packed.TOKENS
    assert all(n <= suite_packed.HI for n in lengths) and all(n >= suite_packed.LO for n in lengths[:-1])
    cases = suite_packed.cases(quick=True)
    rows = _run(suite_packed, ["mlstm_op", "xlstm_large"], cases)
    for provider in ("mlstm_op", "xlstm_large"):
        got = _ok(rows, provider)
        assert sorted(r["case"]["layout"] for r in got) == sorted(suite_packed.LAYOUTS)
        for r in got:
            assert r["columns"]["tokens_per_s"] > 0
            assert "peak_above_start_mib" in r["columns"]       # a number on GPUs, None here


def test_distributed_quick_rows():
    """`bench distributed --quick`: FSDP on 1 and 2 gloo ranks (with the scaling column) and
    context parallelism over 2 ranks measure; every case spawns its own ranks."""
    from bench.suites import distributed as suite_distributed
    cases = suite_distributed.cases(quick=True)
    rows = _run(suite_distributed, ["xlstm_large.fsdp"], [c for c in cases if c["parallel"] == "dp"])
    rows += _run(suite_distributed, ["xlstm_large.cp"], [c for c in cases if c["parallel"] == "cp" and c["world"] == 2])
    got = {(r["provider"], r["case"]["world"]): r for r in rows}
    for key in [("xlstm_large.fsdp", 1), ("xlstm_large.fsdp", 2), ("xlstm_large.cp", 2)]:
        row = got[key]
        assert row["status"] == "ok", (key, row["error"])
        assert row["ms"] > 0 and row["columns"]["tokens_per_s"] > 0 and row["columns"]["ranks"] == key[1]
        assert 0 < row["columns"]["host_ms"] <= round(row["ms"], 1)     # the host's part (rounded as the column)
    assert got[("xlstm_large.fsdp", 2)]["columns"]["scaling"] > 0


def test_profile_distributed_quick():
    """`bench.tools.profile_distributed --quick`: FSDP steps on 2 gloo ranks profiled, a row per
    rank with the host time in FSDP's hooks (the GPU columns are 0 on CPU ranks); the union of
    nested or overlapping intervals counts each moment once."""
    from bench.tools import profile_distributed as tool
    assert tool._union_us([(5, 6), (0, 2), (1, 3), (1.5, 2.5)]) == 4
    rows = tool.main(["fsdp", "--world", "2", "--quick", "--steps", "2"])
    assert len(rows) == 2
    for row in rows:
        assert row["status"] == "ok"
        assert 0 < row["fsdp_hooks_ms"] < row["wall_ms"]
        assert row["compute_ms"] == row["nccl_ms"] == row["gpu_busy_ms"] == 0


def test_transformer_shard_arguments_give_the_same_loss():
    """What PyTorch's context parallelism hands the Transformer baseline (`bench distributed`,
    transformer.cp): its positions and the labels already shifted give the loss of the plain call."""
    from bench.baselines.transformer import TransformerConfig, TransformerLM
    torch.manual_seed(0)
    model = TransformerLM(TransformerConfig(vocab_size=64, embedding_dim=32, num_layers=2, head_dim=16, mlp_hidden=64))
    ids = torch.randint(0, 64, (2, 12))
    targets = torch.cat([ids[:, 1:], torch.full_like(ids[:, :1], -100)], dim=1)
    plain = model(ids, labels=ids)
    sharded = model(ids, positions=torch.arange(12)[None], targets=targets)
    assert torch.allclose(plain, sharded, rtol=1e-6, atol=0)
    moved = model(ids, positions=torch.arange(12)[None] * 2, targets=targets)     # positions reach RoPE
    assert not torch.allclose(plain, moved, rtol=1e-4, atol=0)


def test_distributed_transformer_matches_the_xlstm_size():
    """transformer.cp is the Transformer of the parameter count of the xLSTMLarge it is set beside."""
    from bench.baselines.transformer import matching_config, parameter_count
    from bench.suites import distributed as suite_distributed
    from xlstm_triton.models import xLSTMLarge
    L = suite_distributed.LARGE
    with torch.device("meta"):
        params = sum(p.numel() for p in xLSTMLarge(suite_distributed.large_config(L)).parameters())
    assert 1.0e9 < params < 2.0e9
    cfg = matching_config(params, L["vocab"], L["E"], head_dim=128)
    assert abs(parameter_count(cfg) - params) / params < 0.02
    names = [p.name for p in suite_distributed.providers()]
    assert "transformer.cp" in names
