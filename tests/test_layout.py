"""The package's layering: ops <- modules <- layers <- models <- integrations, no import cycle.

Reads every module's imports (also those inside functions) from the source, so a lazy import
that goes upward or closes a cycle fails here too."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "xlstm_triton"

# Rank of each top-level part: a module may import from its own part and from lower ranks.
RANK = {"utils": 0, "launch": 0, "checks": 0, "generation": 0, "ops": 1, "mlstm": 1, "slstm": 1, "modules": 2,
        "layers": 3, "models": 4, "integrations": 5, "nn": 5, "__init__": 6}


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path):
    """The xlstm_triton modules `path` imports (absolute names; `from . import x` gives package.x)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.split(".")[0] == "xlstm_triton")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "xlstm_triton":
                continue
            if node.module is None:        # from . import a, b: the submodules
                yield from (f"{target}.{a.name}" for a in node.names)
            else:
                yield target


def part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def existing(module: str) -> str:
    """The module itself, or the package an imported name belongs to."""
    while module:
        rel = module.split(".")[1:]
        if (PKG.joinpath(*rel).with_suffix(".py")).exists() or (PKG.joinpath(*rel) / "__init__.py").exists():
            return module
        module = module.rpartition(".")[0]
    raise AssertionError("no module")


def graph():
    return {module_name(p): {existing(t) for t in imports(p)} - {module_name(p)} for p in PKG.rglob("*.py")}


def test_every_part_has_a_rank():
    assert {part(m) for m in graph()} <= set(RANK)


def test_no_module_imports_from_a_layer_above_it():
    upward = [f"{m} -> {t}" for m, targets in graph().items() for t in targets
              if RANK[part(t)] > RANK[part(m)]]
    assert not upward, upward


def test_no_import_cycle():
    g = graph()
    state, cycles = {}, []

    def visit(m, stack):
        state[m] = "open"
        for t in sorted(g.get(m, ())):
            if state.get(t) == "open":
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t, stack + [t])
        state[m] = "done"

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles


def test_the_checker_sees_imports():
    # The graph is not empty and finds a known edge (guards against a parser that sees nothing).
    g = graph()
    assert "xlstm_triton.ops.mlstm" in g["xlstm_triton.layers.mlstm"]
    assert "xlstm_triton.layers" in g["xlstm_triton.models.xlstm_large.model"]
