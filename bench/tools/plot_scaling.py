"""Figures of the scaling suites (`kernels`, `decode`, `model`, `distributed`): time, throughput and memory
against sequence or context length, log-log, with the crossover marked where our line crosses
the best attention line. Called by `bench.tools.plot.plot_csv`; each figure's title names the GPU,
dtype, software versions and shapes, taken from the CSV's columns. Failed and unavailable
providers are listed under the axes, not silently dropped.
"""

from __future__ import annotations

import math
from pathlib import Path

from bench.tools.plot_common import MARKERS, is_ok, latest, subtitle

OURS = "xlstm_triton"


def _num(r, col):
    v = r.get(col, "")
    return float(v) if v not in ("", None) else None


def _series(rows, x_col, y_col, scale=1.0):
    pts = sorted((int(r[x_col]), _num(r, y_col) * scale) for r in rows if is_ok(r) and _num(r, y_col) is not None)
    return dict(pts)


def _best(series_list, better=min):
    """Pointwise best (min time, or max throughput) over several {x: y} series."""
    out = {}
    for s in series_list:
        for x, y in s.items():
            out[x] = y if x not in out else better(out[x], y)
    return out


def crossover(ours: dict, theirs: dict, higher_is_better: bool = False):
    """First x (interpolated in log-log) where `ours` becomes better than `theirs`; None if the
    two never cross on their common x values. Returns (x, ours_better_after)."""
    xs = sorted(set(ours) & set(theirs))
    sign = -1.0 if higher_is_better else 1.0
    gaps = [(x, sign * math.log(ours[x] / theirs[x])) for x in xs if ours[x] > 0 and theirs[x] > 0]
    for (x0, g0), (x1, g1) in zip(gaps, gaps[1:]):
        if g0 >= 0 > g1 or g0 < 0 <= g1:
            t = g0 / (g0 - g1) if g0 != g1 else 0.0
            return math.exp(math.log(x0) + t * (math.log(x1) - math.log(x0))), g1 < 0
    return None


def _mark_crossover(ax, ours, theirs, what, higher_is_better=False):
    hit = crossover(ours, theirs, higher_is_better)
    if hit is None:
        return
    x, ours_better_after = hit
    ax.axvline(x, color="k", ls=":", lw=1)
    side = "from" if ours_better_after else "up to"
    rounded = float(f"{x:.2g}")                     # two significant digits: an interpolation
    ax.annotate(f"{OURS} better {side}\n~{rounded:,.0f} ({what})", xy=(x, 0.97), xycoords=("data", "axes fraction"),
                ha="left", va="top", fontsize=7, xytext=(3, 0), textcoords="offset points")


def _failures_note(rows, x_col):
    """'provider: status at x=...' for every row that did not measure."""
    bad = {}
    for r in rows:
        if not is_ok(r) and r["status"] != "skipped":
            kind = r.get("error", "").split(":")[0][:40] if r["status"] == "error" else ""
            status = f"{r['status']} ({kind})" if kind else r["status"]
            bad.setdefault((r["provider"], status), set()).add(int(r[x_col]))
    parts = [f"{p}: {s} at {x_col}={','.join(str(x) for x in sorted(xs))}" for (p, s), xs in sorted(bad.items())]
    return "not measured: " + "; ".join(parts) if parts else ""


def _finish(fig, axes, title, note, out):
    import matplotlib.pyplot as plt

    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    if note:
        import textwrap
        fig.text(0.01, 0.005, textwrap.fill(note, 230), fontsize=6.5, va="bottom", ha="left", color="0.3")
    fig.tight_layout(rect=(0, 0.06 if note else 0, 1, 1))
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _length_label(x):
    return f"{x // 1024}k" if x >= 1024 and x % 1024 == 0 else str(x)


def _log_axes(ax, xlabel, xs):
    """Log-log axes; x ticks at the measured lengths (512, 2k, ...), y ticks as plain numbers."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    xs = sorted(set(xs))
    if xs:
        ax.xaxis.set_major_locator(FixedLocator(xs))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: _length_label(int(round(x)))))
        ax.xaxis.set_minor_formatter(NullFormatter())
    plain = FuncFormatter(lambda y, _: f"{y:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.relim()
    ax.autoscale_view()
    lo, hi = ax.get_ylim()
    ax.yaxis.set_minor_formatter(plain if 0 < lo and hi / lo < 30 else NullFormatter())


# ------------------------------------------------------------------ kernels

def plot_kernels(rows, stem, out_dir: Path) -> list[Path]:
    """One figure per recurrent geometry, beside the attention of the same hidden size."""
    import matplotlib.pyplot as plt

    rows = latest(rows, ["provider", "kernel", "geometry", "B", "S", "NH", "DQK", "DV", "mode"])
    attention = [r for r in rows if r["kernel"] == "attention"]
    figs = []
    for kernel, geom in sorted({(r["kernel"], r["geometry"]) for r in rows if r["kernel"] != "attention"}):
        rec = [r for r in rows if (r["kernel"], r["geometry"]) == (kernel, geom)]
        r0 = rec[0]
        hidden = int(r0["NH"]) * int(r0["DV"])
        att = [r for r in attention if int(r["NH"]) * int(r["DV"]) == hidden]
        group = rec + att
        fig, axes = plt.subplots(1, 3, figsize=(16, 5))
        panels = [("fw", "ms", "forward, ms"), ("fwbw", "ms", "forward+backward, ms"),
                  ("fwbw", "peak_mib", "forward+backward peak memory, MiB")]
        providers = sorted({r["provider"] for r in group}, key=lambda p: (p.startswith("attention"), p))
        for ax, (mode, col, label) in zip(axes, panels):
            per_provider = {}
            for j, p in enumerate(providers):
                s = _series([r for r in group if r["provider"] == p and r["mode"] == mode], "S", col)
                if s:
                    per_provider[p] = s
                    ax.plot(list(s), list(s.values()), marker=MARKERS[j % len(MARKERS)], label=p,
                            ls="--" if p.startswith("attention") else "-")
            best_attention = _best([s for p, s in per_provider.items() if p.startswith("attention")])
            if OURS in per_provider and best_attention:
                _mark_crossover(ax, per_provider[OURS], best_attention, "vs best attention")
            _log_axes(ax, "sequence length S (B*S fixed)", [int(r["S"]) for r in group])
            ax.set_title(label, fontsize=10)
            if not per_provider:
                ax.text(0.5, 0.5, "not measured", transform=ax.transAxes, ha="center")
        axes[0].legend(fontsize=7)
        heads = (f"NH={r0['NH']} DQK={r0['DQK']} DV={r0['DV']}" if kernel == "mlstm"
                 else f"NH={r0['NH']} DH={r0['DQK']}")
        att_geoms = sorted({r["geometry"] for r in att})
        title = (f"{kernel} {geom} ({heads}) vs causal attention {', '.join(att_geoms) or '(none)'} "
                 f"(heads x dim, same hidden {hidden}); B*S = {int(r0['B']) * int(r0['S']):,} tokens\n"
                 f"{subtitle(group)}")
        figs.append(_finish(fig, axes, title, _failures_note(group, "S"), out_dir / f"{stem}_{kernel}_{geom}.png"))
    return figs


# ------------------------------------------------------------------ decode

def plot_decode(rows, stem, out_dir: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    rows = latest(rows, ["provider", "E", "B", "ctx", "mode"])
    batches = sorted({int(r["B"]) for r in rows})
    fig, axes = plt.subplots(len(batches), 2, figsize=(13, 4.2 * len(batches)), squeeze=False)
    providers = sorted({r["provider"] for r in rows}, key=lambda p: (p.startswith("attention"), p))
    for row_axes, B in zip(axes, batches):
        rb = [r for r in rows if int(r["B"]) == B]
        for ax, col, scale, label in ((row_axes[0], "ms", 1e3, "time per token, us"),
                                      (row_axes[1], "peak_mib", 1.0, "peak memory, MiB")):
            per_provider = {}
            for j, p in enumerate(providers):
                s = _series([r for r in rb if r["provider"] == p], "ctx", col, scale)
                if s:
                    per_provider[p] = s
                    ax.plot(list(s), list(s.values()), marker=MARKERS[j % len(MARKERS)], label=p,
                            ls="--" if p.startswith("attention") else "-", color=f"C{j}")
            if col == "ms":     # HBM floors: the xLSTM layer's and the attention layer's
                for p, floor_label in ((f"{OURS}.mLSTMLayer", "floor, mLSTM layer"), ("attention", "floor, attention")):
                    fr = [r for r in rb if r["provider"].startswith(p) and _num(r, "floor_ms") is not None]
                    f = dict(sorted((int(r["ctx"]), _num(r, "floor_ms") * 1e3) for r in fr))
                    if f:
                        ax.plot(list(f), list(f.values()), color="0.5", lw=0.8,
                                ls=":" if p == "attention" else "-.", label=floor_label)
            ours = per_provider.get(f"{OURS}.mLSTMLayer")
            best_attention = _best([s for p, s in per_provider.items() if p.startswith("attention")])
            if ours and best_attention:
                _mark_crossover(ax, ours, best_attention, "vs best attention")
            _log_axes(ax, "context length (tokens in the KV cache)", [int(r["ctx"]) for r in rb])
            ax.set_title(f"batch {B}: {label}", fontsize=10)
            if not per_provider:
                ax.text(0.5, 0.5, "not measured", transform=ax.transAxes, ha="center")
        row_axes[0].legend(fontsize=7)
    r0 = rows[0]
    title = (f"One layer decoding one token per sequence, E={r0['E']}: mLSTM layer ({r0['mlstm_heads']} heads, "
             f"state of fixed size) vs attention (head dim {r0['attn_head_dim']}, KV cache of ctx tokens); "
             f"{'16 steps per CUDA graph' if r0['gpu'] != 'cpu' else 'eager steps (no GPU)'}\n{subtitle(rows)}")
    return [_finish(fig, axes.ravel(), title, _failures_note(rows, "ctx"), out_dir / f"{stem}.png")]


# ------------------------------------------------------------------ model

def _count(n):
    return f"{n / 1e6:.0f}M" if n >= 1e6 else f"{n / 1e3:.0f}k"


def plot_model(rows, stem, out_dir: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    gpu = rows[-1]["gpu"]                          # one machine's rows: the newest run's GPU
    rows = latest([r for r in rows if r["gpu"] == gpu], ["provider", "ctx", "B", "E", "blocks", "mode", "size"])
    rows = [r for r in rows if r.get("size") != "large"]          # the one larger point: a table, not a curve

    def key(r):     # one curve per provider and mode ("train": the single mode of older rows)
        return r["provider"] if r.get("mode") in (None, "", "train", "eager") else f"{r['provider']} ({r['mode']})"
    fig, axes = plt.subplots(1, 2, figsize=(14, 5))
    providers = sorted({key(r) for r in rows}, key=lambda p: (p.startswith("transformer"), p))
    curves = {}
    for ax, col, scale, label in ((axes[0], "tokens_per_s", 1e-3, "training throughput, 1000 tokens/s"),
                                  (axes[1], "peak_mib", 1 / 1024, "peak memory of a step, GiB")):
        for j, p in enumerate(providers):
            pr = [r for r in rows if key(r) == p]
            s = _series(pr, "ctx", col, scale)
            if not s:
                continue
            params = next((_num(r, "params") for r in pr if _num(r, "params")), None)
            name = f"{p} ({_count(params)} params)" if params else p
            ax.plot(list(s), list(s.values()), marker=MARKERS[j % len(MARKERS)], label=name,
                    ls="--" if p.startswith("transformer") else "-", color=f"C{j}")
            curves.setdefault(col, {})[p] = s
        got = curves.get(col, {})
        best_transformer = _best([s for p, s in got.items() if p.startswith("transformer")],
                                 better=max if col == "tokens_per_s" else min)
        if OURS in got and best_transformer:
            _mark_crossover(ax, got[OURS], best_transformer, "vs best Transformer", col == "tokens_per_s")
        _log_axes(ax, "context length (tokens per step fixed)", [int(r["ctx"]) for r in rows])
        ax.set_title(label, fontsize=10)
        if not got:
            ax.text(0.5, 0.5, "not measured", transform=ax.transAxes, ha="center")
    axes[0].legend(fontsize=7)
    archs = {r["provider"]: r.get("arch", "") for r in rows if r.get("arch")}
    r0 = rows[0]
    arch_line = "; ".join(dict.fromkeys(a for a in archs.values() if a))
    title = (f"LM training step (forward + backward + AdamW), {int(r0['tokens']):,} tokens per step, "
             f"vocabulary {r0['vocab']}\n{arch_line}\n{subtitle(rows)}")
    return [_finish(fig, axes, title, _failures_note(rows, "ctx"), out_dir / f"{stem}.png")]


def plot_distributed(rows, stem, out_dir: Path) -> list[Path]:
    """Data parallel: tokens/s against GPUs (DDP, FSDP2, and the ideal from one GPU); context
    parallel: tokens/s against the sequence length, one line per GPU count (a sequence that ran
    out of memory is listed under the axes: the longest trainable sequence per GPU count)."""
    import matplotlib.pyplot as plt

    gpu = rows[-1]["gpu"]
    rows = latest([r for r in rows if r["gpu"] == gpu], ["provider", "parallel", "world", "ctx", "B"])
    fig, axes = plt.subplots(1, 2, figsize=(14, 5))
    dp = [r for r in rows if r["parallel"] == "dp"]
    worlds = sorted({int(r["world"]) for r in dp if is_ok(r)})
    for j, p in enumerate(sorted({r["provider"] for r in dp})):
        s = _series([r for r in dp if r["provider"] == p], "world", "tokens_per_s", 1e-3)
        if s:
            axes[0].plot(list(s), list(s.values()), marker=MARKERS[j % len(MARKERS)], label=p, color=f"C{j}")
            one = s.get(1)
            if one:
                axes[0].plot(worlds, [one * w for w in worlds], ls=":", color=f"C{j}", label=f"{p}: ideal")
    axes[0].set_xlabel("GPUs")
    axes[0].set_xticks(worlds or [1])
    axes[0].set_title("data parallel: training throughput, 1000 tokens/s (weak scaling)", fontsize=10)
    cp = [r for r in rows if r["parallel"] == "cp"]
    # one line per provider (colour) and GPU count (marker); solid for ours, dashed for the baseline
    for i, p in enumerate(sorted({r["provider"] for r in cp})):
        for j, w in enumerate(sorted({int(r["world"]) for r in cp})):
            s = _series([r for r in cp if r["provider"] == p and int(r["world"]) == w], "ctx", "tokens_per_s", 1e-3)
            if s:
                axes[1].plot(list(s), list(s.values()), marker=MARKERS[j % len(MARKERS)], color=f"C{i}",
                             ls="--" if p.startswith("transformer") else "-", label=f"{p}, {w} GPU(s)")
    axes[1].set_xscale("log", base=2)
    axes[1].set_xlabel("tokens in the one sequence")
    axes[1].set_title("context parallel: training throughput, 1000 tokens/s", fontsize=10)
    for ax in axes:
        ax.legend(fontsize=7)
        ax.set_ylim(bottom=0)
    r0 = rows[0]
    title = (f"xLSTMLarge E={r0['E']}, {r0['blocks']} blocks (and a Transformer of its size), training step (AdamW) "
             f"over several GPUs\n"
             f"{subtitle(rows)}")
    bad = [dict(r, provider=f"{r['provider']} on {r['world']} GPU(s)") for r in rows
           if not is_ok(r) and r["status"] not in ("skipped", "unavailable")]
    note = _failures_note(bad, "ctx")
    return [_finish(fig, axes, title, note, out_dir / f"{stem}.png")]
