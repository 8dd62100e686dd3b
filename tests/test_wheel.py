"""The wheel holds the whole package: every module of fastgrad/ and kernels/ (installed as
fastgrad.kernels) and the shipped data, and each module imports from the wheel alone. The
editable install the tests run from would hide a subpackage missing from pyproject.toml."""

import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

ROOT = pathlib.Path(__file__).resolve().parents[1]

IMPORT_ALL = """
import importlib, pkgutil, sys
import fastgrad
names = [m.name for m in pkgutil.walk_packages(fastgrad.__path__, "fastgrad.")
         if not m.name.endswith("__main__")]
for name in names:
    importlib.import_module(name)
print(fastgrad.__file__)
print(" ".join(names))
"""


def test_the_wheel_holds_every_module_and_each_imports_from_it(tmp_path):
    src = tmp_path / "src"  # a copy: building writes build/ and *.egg-info into the tree
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("fastgrad", "kernels"):
        shutil.copytree(ROOT / name, src / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w",
                    str(tmp_path), str(src)], check=True, cwd=tmp_path)
    (wheel,) = tmp_path.glob("fastgrad-*.whl")
    with zipfile.ZipFile(wheel) as z:
        held = set(z.namelist())
        z.extractall(tmp_path / "site")
    sources = [p.relative_to(ROOT).as_posix() for p in (ROOT / "fastgrad").rglob("*.py")]
    sources += ["fastgrad/kernels/" + p.name for p in (ROOT / "kernels").glob("*.py")]
    missing = sorted(set(sources) - held)
    assert not missing, f"the wheel lacks {missing}: list their packages in pyproject.toml"
    assert "fastgrad/data/digits.npz" in held
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "site"))
    where, imported = subprocess.run([sys.executable, "-c", IMPORT_ALL], check=True,
                                     capture_output=True, text=True, cwd=tmp_path,
                                     env=env).stdout.splitlines()
    assert pathlib.Path(where).is_relative_to(tmp_path / "site"), where
    modules = {s.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
               for s in sources if not s.endswith("__main__.py")} - {"fastgrad"}
    assert set(imported.split()) == modules
