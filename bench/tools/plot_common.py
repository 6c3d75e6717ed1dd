"""What the figures of plot.py and plot_scaling.py share: the newest row of each key, whether a
row measured, the subtitle naming the GPU and software, the line markers."""

from __future__ import annotations

MARKERS = "os^vD<>ph*"


def latest(rows, keys):
    """The newest row (the last in the CSV) of each combination of `keys`."""
    out = {}
    for r in rows:
        out[tuple(r.get(k, "") for k in keys)] = r
    return list(out.values())


def is_ok(r):
    return r["status"] == "ok" and r["ms"] not in ("", None)


def subtitle(rows):
    r = rows[-1]
    return f"{r['gpu']}, {r['dtype']}, torch {r['torch']}, triton {r['triton']}, {r['date']}"
