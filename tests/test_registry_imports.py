"""The op registry as the kernels see it: importing the codes pulls in nothing that imports
``fastgrad.kernels`` (no circular import), and the kernel cache key covers the registry's
modules in both install layouts, so a changed op code never serves stale machine code."""

import ast
import pathlib
import shutil

from fastgrad.kernels import _jit

ROOT = pathlib.Path(__file__).resolve().parents[1]
REGISTRY = ROOT / "fastgrad" / "ops"


def _module_level_imports(path):
    """(level, module) of every import that runs when ``path`` is imported (not in functions)."""
    found = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            found += [(0, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.level, node.module or ""))
    return found


def test_the_registry_imports_only_itself_the_errors_and_numpy():
    allowed_outside = {(2, "core.errors")}  # fastgrad.errors imports only numpy (checked below)
    for path in sorted(REGISTRY.glob("*.py")):
        for level, module in _module_level_imports(path):
            if level == 0:
                assert module.split(".")[0] in {"numpy", "math", "numbers", "enum", "types",
                                                "typing", "dataclasses", "__future__"}, \
                    f"{path.name} imports {module}"
            else:
                assert level == 1 or (level, module) in allowed_outside, \
                    f"{path.name} imports {'.' * level}{module}"
    errors = ROOT / "fastgrad" / "core" / "errors.py"
    assert all(level == 0 and module == "numpy" for level, module in _module_level_imports(errors))


def test_kernels_take_the_codes_from_the_registry():
    for path in sorted((ROOT / "kernels").glob("*.py")):
        text = path.read_text()
        assert "opcodes" not in text, path.name
        for level, module in _module_level_imports(path):
            if level == 2:  # the only import reaching above kernels/: the registry
                assert module == "ops" or module.startswith("ops."), \
                    f"{path.name} imports ..{module}"


def _layout(tmp, wheel):
    """A copy of the kernel sources and the registry as an editable checkout (kernels/ beside
    fastgrad/) or a wheel (fastgrad/kernels/) lays them out; returns the kernels folder."""
    kernels = tmp / ("fastgrad/kernels" if wheel else "kernels")
    shutil.copytree(ROOT / "kernels", kernels, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REGISTRY, tmp / "fastgrad" / "ops",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return kernels


def test_kernel_cache_key_covers_every_registry_module_in_both_layouts(tmp_path):
    keys = []
    for wheel in (False, True):
        kernels = _layout(tmp_path / ("wheel" if wheel else "editable"), wheel)
        files = _jit.registry_files(kernels)
        assert sorted(p.name for p in files) == sorted(p.name for p in REGISTRY.glob("*.py"))
        before = _jit._source_digest(kernels)
        keys.append(before)
        for path in files:  # any registry module: codes live beside their ops
            text = path.read_text()
            path.write_text(text + "\n# edited\n")
            assert _jit._source_digest(kernels) != before, f"{path.name} is not in the key"
            path.write_text(text)
        assert _jit._source_digest(kernels) == before
    assert keys[0] == keys[1] == _jit._source_digest()  # the layout does not change the key


def test_kernel_cache_key_without_the_registry_differs(tmp_path):
    """The key really reads the registry: the same kernels without it hash differently."""
    kernels = _layout(tmp_path, wheel=False)
    with_registry = _jit._source_digest(kernels)
    shutil.rmtree(tmp_path / "fastgrad" / "ops")
    assert _jit.registry_files(kernels) == []
    assert _jit._source_digest(kernels) != with_registry
