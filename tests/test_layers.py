"""The package's layers (docs/architecture.md) hold: no module imports a module of a later
layer, at import time or inside a function, so the code reads top-down in the order work is
done and no import circle can form. A new module must be given its layer here."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Layer of each top-level module or subpackage of fastgrad, lowest first (kernels/ is installed
# as fastgrad.kernels). Modules of one layer may import each other.
LAYERS = {
    "core": 1, "data": 1,
    "ops": 2,
    "kernels": 3,
    "runtime": 4,
    "frontend": 5,
    "transforms": 6,
    "training": 7,
    "io": 8,
    "study": 9, "benchmarks": 9,
    "cli": 10, "warmup": 10,
    "__init__": 11, "__main__": 11,  # the public names, the entry points
}


def _sources():
    yield from sorted((ROOT / "fastgrad").rglob("*.py"))
    yield from sorted((ROOT / "kernels").glob("*.py"))


def _package_path(path):
    """The dotted package of a source file as installed: kernels/x.py is fastgrad.kernels.x."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ["fastgrad"] + parts if parts[0] == "kernels" else parts


def _layer_of(path):
    parts = _package_path(path)
    if parts[-1] == "__main__":
        return "__main__"
    return parts[1] if len(parts) > 1 else parts[0]


def _imported_fastgrad_modules(path):
    """(line, top-level fastgrad module) of every import of fastgrad in ``path``, anywhere."""
    here = _package_path(path)[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                targets = [base + node.module.split(".")] if node.module else \
                    [base + [a.name] for a in node.names]
            else:
                targets = [(node.module or "").split(".")]
        elif isinstance(node, ast.Import):
            targets = [a.name.split(".") for a in node.names]
        else:
            continue
        for t in targets:
            if len(t) >= 2 and t[0] == "fastgrad":
                yield node.lineno, t[1]


@pytest.mark.parametrize("path", list(_sources()), ids=lambda p: str(p.relative_to(ROOT)))
def test_a_module_imports_only_its_own_layer_and_the_ones_below(path):
    me = _layer_of(path)
    assert me in LAYERS, f"{path.relative_to(ROOT)}: give module {me!r} a layer in LAYERS"
    for line, other in _imported_fastgrad_modules(path):
        assert other in LAYERS, f"{path.relative_to(ROOT)}:{line} imports unknown {other!r}"
        assert LAYERS[other] <= LAYERS[me], (
            f"{path.relative_to(ROOT)}:{line}: {me} (layer {LAYERS[me]}) imports {other} "
            f"(layer {LAYERS[other]}), a later layer; move the code down or the import up")


def test_the_layer_table_names_only_modules_that_exist():
    present = {_layer_of(p) for p in _sources()}
    assert set(LAYERS) - present == set()
