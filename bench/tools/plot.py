"""Result CSVs -> PNG figures. The newest row of each (provider, case, mode) is plotted.

mLSTM CSVs (columns geometry, S): time and peak memory against sequence length, log-log, one
line per provider, per geometry with more than one length; bars otherwise. sLSTM CSVs (NH, DH):
grouped bars per head split. The `kernels`, `decode` and `model` suites' CSVs (their `suite`
column) are drawn by bench/tools/plot_scaling.py. Every title names the GPU, dtype and shapes.
"""

from __future__ import annotations

from pathlib import Path

from bench.harness import read_csv
from bench.tools import plot_scaling
from bench.tools.plot_common import MARKERS, is_ok, latest, subtitle


def plot_csv(path: Path, out_dir: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")

    rows = read_csv(path)
    if not rows:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    suite = rows[-1].get("suite", "")
    if suite in ("kernels", "decode", "model", "distributed"):
        plot = getattr(plot_scaling, f"plot_{suite}")
        return plot([r for r in rows if r.get("suite") == suite], path.stem, out_dir)
    if "geometry" in rows[0]:
        return _plot_mlstm(rows, path.stem, out_dir)
    if "DH" in rows[0]:
        return _plot_slstm(rows, path.stem, out_dir)
    raise ValueError(f"{path}: no plot for these columns: {list(rows[0])}")


def _plot_mlstm(rows, stem, out_dir):
    import matplotlib.pyplot as plt

    keys = ["provider", "geometry", "B", "NH", "S", "DQK", "DV", "mode"]
    rows = latest(rows, keys)
    figs = []
    for geom in sorted({r["geometry"] for r in rows}):
        g = [r for r in rows if r["geometry"] == geom]
        lengths = sorted({int(r["S"]) for r in g})
        r0 = g[0]
        shape = f"mLSTM NH={r0['NH']} DQK={r0['DQK']} DV={r0['DV']}, B*S={int(r0['B']) * int(r0['S'])} tokens"
        fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
        panels = [("fw", "ms", "forward, ms"), ("fwbw", "ms", "forward+backward, ms"),
                  ("fwbw", "peak_mib", "forward+backward peak memory, MiB")]
        providers = sorted({r["provider"] for r in g})
        for ax, (mode, col, label) in zip(axes, panels):
            for j, p in enumerate(providers):
                pts = sorted((int(r["S"]), float(r[col])) for r in g
                             if r["provider"] == p and r["mode"] == mode and is_ok(r) and r[col] != "")
                if not pts:
                    continue
                xs, ys = zip(*pts)
                if len(lengths) > 1:
                    ax.plot(xs, ys, marker=MARKERS[j % len(MARKERS)], label=p)
                else:
                    ax.bar(j, ys[0], label=p)
            if len(lengths) > 1:
                ax.set_xscale("log", base=2)
                ax.set_yscale("log")
                ax.set_xlabel("sequence length S")
            else:
                ax.set_xticks([])
                ax.set_xlabel(f"S={lengths[0]}")
            ax.set_title(label)
            ax.grid(True, which="both", alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.suptitle(f"{shape}; attention: 32 heads x 128, causal\n{subtitle(g)}", fontsize=10)
        fig.tight_layout()
        out = out_dir / f"{stem}_{geom}.png"
        fig.savefig(out, dpi=110)
        plt.close(fig)
        figs.append(out)
    return figs


def _plot_slstm(rows, stem, out_dir):
    import matplotlib.pyplot as plt

    keys = ["provider", "B", "T", "NH", "DH", "mode"]
    rows = latest(rows, keys)
    splits = sorted({(int(r["NH"]), int(r["DH"])) for r in rows}, key=lambda s: (s[0] * s[1], -s[0]))
    providers = sorted({r["provider"] for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(15, 4.8))
    width = 0.8 / max(1, len(providers))
    for ax, mode in zip(axes, ("fw", "fwbw")):
        for j, p in enumerate(providers):
            for x, (nh, dh) in enumerate(splits):
                r = [r for r in rows if r["provider"] == p and r["mode"] == mode
                     and (int(r["NH"]), int(r["DH"])) == (nh, dh)]
                if r and is_ok(r[0]):
                    ax.bar(x + j * width, float(r[0]["ms"]), width, color=f"C{j}",
                           label=p if x == 0 or not ax.get_legend_handles_labels()[1].count(p) else None)
                elif r and r[0]["status"] != "skipped":       # a failure is a result: show it
                    ax.text(x + j * width, 0.02, f"{p}: {r[0]['status']}", rotation=90, fontsize=7,
                            color=f"C{j}", ha="center", va="bottom", transform=ax.get_xaxis_transform())
        ax.set_xticks([x + width * (len(providers) - 1) / 2 for x in range(len(splits))])
        ax.set_xticklabels([f"{nh}x{dh}" for nh, dh in splits])
        ax.set_yscale("log")
        ax.set_xlabel("heads x head dim")
        ax.set_title(("forward" if mode == "fw" else "forward+backward") + ", ms")
        ax.grid(True, axis="y", which="both", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    axes[0].legend(uniq.values(), uniq.keys(), fontsize=8)
    r0 = rows[0]
    fig.suptitle(f"sLSTM B={r0['B']} T={r0['T']} (cuDNN LSTM: hidden NHxDH)\n{subtitle(rows)}", fontsize=10)
    fig.tight_layout()
    out = out_dir / f"{stem}.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return [out]
