"""The result CSVs: rows appended (the columns the union of old and new), rows read."""

from __future__ import annotations

import csv
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RESULTS_DIR = REPO / "bench" / "results"


def append_csv(path: Path, rows: list[dict]) -> None:
    """Appends rows; if the file exists with other columns, rewrites it with the union."""
    path.parent.mkdir(parents=True, exist_ok=True)
    old = read_csv(path) if path.exists() else []
    fields = []
    for r in old + rows:
        for k in r:
            if k not in fields:
                fields.append(k)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        for r in old + rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in fields})


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))
