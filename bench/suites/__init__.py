"""The benchmark suites, one module each. A suite module defines

    cases(quick=False) -> list[dict]   the shapes (tiny ones with quick, for a CPU smoke test)
    providers() -> list[Provider]       the implementations (bench.harness.Provider)
    TABLE_KEYS                          the case keys of the printed summary table

and its docstring is its `python -m bench <suite> --help` text.
"""

from __future__ import annotations

import importlib

NAMES = ("mlstm", "slstm", "step", "kernels", "decode", "model", "large", "packed", "tirex", "distributed")   # the CLI's order


def load(name: str):
    """The suite module `name` (one of NAMES)."""
    if name not in NAMES:
        raise ValueError(f"unknown suite {name!r}; known: {', '.join(NAMES)}")
    return importlib.import_module(f"{__name__}.{name}")
