"""Every ```python block of README.md is a complete program: each runs here on its own, in a
fresh namespace, from the repository root (the quickstart imports `reference`). On CPU the ops
take their PyTorch path, as they do for a user without a GPU and without TRITON_INTERPRET. A
block whose first line is `# requires: cuda` is skipped on machines without a GPU, and a block
that imports an optional package (an extra: transformers, TiRex) where it does not import (CI
installs them). Signatures that are not programs belong in ```text blocks."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
import torch

import xlstm_triton.utils as xt_utils

ROOT = Path(__file__).resolve().parents[1]
CUDA_MARK = "# requires: cuda"
OPTIONAL = ("transformers", "tirex")        # the packages of the extras the README's blocks use


def python_blocks(text: str):
    """(first line number, code) of each ```python block, in order."""
    out = []
    for m in re.finditer(r"^```python[ \t]*\n(.*?)^```[ \t]*$", text, flags=re.M | re.S):
        out.append((text.count("\n", 0, m.start()) + 2, m.group(1)))
    return out


BLOCKS = python_blocks((ROOT / "README.md").read_text())


def test_blocks_found_and_well_formed():
    text = (ROOT / "README.md").read_text()
    assert len(BLOCKS) >= 5
    assert text.count("```python") == len(BLOCKS)          # no block the pattern missed
    for line, code in BLOCKS:
        compile(code, f"README.md:{line}", "exec")


def test_block_extraction():
    text = "a\n```python\nx = 1\n```\n```text\nnot code\n```\n```python\ny = 2\n```\n"
    assert python_blocks(text) == [(3, "x = 1\n"), (9, "y = 2\n")]


@pytest.mark.parametrize("line, code", BLOCKS, ids=[f"README.md:{line}" for line, _ in BLOCKS])
def test_readme_block_runs(line, code, monkeypatch):
    if code.lstrip().startswith(CUDA_MARK) and not torch.cuda.is_available():
        pytest.skip(f"README.md:{line} needs CUDA ({CUDA_MARK})")
    for name in OPTIONAL:
        if re.search(rf"^\s*(from|import) {name}\b", code, flags=re.M):
            try:
                importlib.import_module(name)
            except Exception as e:               # missing, or missing a dependency of its own
                pytest.skip(f"README.md:{line} needs {name}, which does not import here: {type(e).__name__}: {e}")
    if not torch.cuda.is_available():
        monkeypatch.setattr(xt_utils, "triton_interpret", lambda: False)
    monkeypatch.chdir(ROOT)
    monkeypatch.syspath_prepend(str(ROOT))
    exec(compile(code, f"README.md:{line}", "exec"), {"__name__": "__readme__"})
