"""Every module of fastgrad says what it exports: an explicit ``__all__``.

Guaranteed for each module of the installed package (``fastgrad``, its subpackages and
``fastgrad.kernels``, which is the folder kernels/ installed under fastgrad):

* it defines ``__all__``, a list of distinct names, each of which the module really has, so
  ``from module import *`` binds exactly those names;
* ``__all__`` names no private name (a leading ``_``; ``__version__`` is the one exception);
* ``__all__`` re-exports no module that fastgrad merely uses (``np``, ``json``, ...): the only
  modules it may name are fastgrad's own, under their own names (``fg.nn``, ``fg.nn.functional``).

Modules that run as scripts (``python -m ...``) are not imported here (importing one runs it); they
are read instead, and must still assign ``__all__``.
"""

import ast
import importlib
import importlib.util
import pathlib
import pkgutil
import subprocess
import sys
import types

import pytest

import fastgrad
import fastgrad.kernels

# Run, not imported: importing one would run the command (and exit).
SCRIPTS = {"fastgrad.__main__", "fastgrad.benchmarks.__main__"}


def _module_names():
    """fastgrad and every module below it, in both install layouts: in an editable install
    fastgrad.kernels lives outside fastgrad/, so its folder is walked as well."""
    names = {"fastgrad", "fastgrad.kernels"}
    for package in (fastgrad, fastgrad.kernels):
        prefix = package.__name__ + "."
        names.update(m.name for m in pkgutil.walk_packages(package.__path__, prefix))
    return sorted(names)


ALL_MODULES = _module_names()
MODULES = [name for name in ALL_MODULES if name not in SCRIPTS]

def test_the_walk_finds_the_whole_package():
    """The modules checked below are the whole package, not a part of it."""
    for name in ("fastgrad", "fastgrad.study", "fastgrad.ops", "fastgrad.ops.unary",
                 "fastgrad.benchmarks.runner", "fastgrad.kernels", "fastgrad.kernels.scan",
                 "fastgrad.kernels._jit"):
        assert name in MODULES, name


@pytest.mark.parametrize("name", MODULES)
def test_module_declares_all(name):
    """The module itself assigns ``__all__``, a list of strings."""
    module = importlib.import_module(name)
    assert "__all__" in vars(module), f"{name} has no __all__"
    assert isinstance(module.__all__, list), name
    assert all(isinstance(n, str) for n in module.__all__), name


@pytest.mark.parametrize("name", MODULES)
def test_all_names_exist_and_none_is_private(name):
    """Every name in ``__all__`` is an attribute of the module, none starts with ``_`` (but
    ``__version__``), and a star import binds exactly those names."""
    module = importlib.import_module(name)
    exported = module.__all__
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names what the module does not have: {missing}"
    private = [n for n in exported if n.startswith("_") and n != "__version__"]
    assert not private, f"{name}.__all__ exports private names: {private}"
    namespace = {}
    exec(f"from {name} import *", namespace)  # noqa: S102 - the star import itself
    assert set(namespace) - {"__builtins__"} == set(exported), name


@pytest.mark.parametrize("name", MODULES)
def test_all_lists_each_name_once(name):
    """No name appears twice in ``__all__``."""
    exported = importlib.import_module(name).__all__
    twice = sorted({n for n in exported if exported.count(n) > 1})
    assert not twice, f"{name}.__all__ lists {twice} twice"


@pytest.mark.parametrize("name", MODULES)
def test_all_reexports_no_module_it_merely_uses(name):
    """A module object in ``__all__`` is one of fastgrad's own modules under its own name (a
    subpackage, or ``functional`` as ``fg.nn.functional``), never an import such as np."""
    module = importlib.import_module(name)
    for exported in module.__all__:
        value = getattr(module, exported)
        if isinstance(value, types.ModuleType):
            assert value.__name__.startswith("fastgrad.") \
                and value.__name__.rsplit(".", 1)[1] == exported, \
                f"{name}.__all__ re-exports the module {value.__name__} as {exported!r}"


@pytest.mark.parametrize("name", sorted(SCRIPTS & set(ALL_MODULES)))
def test_script_modules_declare_all_too(name):
    """A module run as a script assigns ``__all__`` at top level too (read, not imported)."""
    spec = importlib.util.find_spec(name)
    tree = ast.parse(pathlib.Path(spec.origin).read_text())
    assigned = {t.id for node in tree.body if isinstance(node, ast.Assign)
                for t in node.targets if isinstance(t, ast.Name)}
    assert "__all__" in assigned, f"{name} has no __all__"


def test_study_exports_its_analyses_not_its_imports():
    """fastgrad.study exports the studies and their helpers, and none of the modules it uses
    (numpy as np, json, pickle, fastgrad.functional as F)."""
    from fastgrad import study

    for name in ("np", "json", "pickle", "F"):
        assert name not in study.__all__, name
    for name in ("rnn_gradient_norms", "RNNGradientNorms", "StudyResult", "SweepResult",
                 "recurrent_matrix", "spectral_radius", "largest_singular_value",
                 "set_spectral_radius", "growth_rate", "log_growth_rate",
                 "jacobian_product_norms", "lyapunov_exponents", "sweep"):
        assert name in study.__all__, name


# The first release's modules, one per name at the top of the package, and names users imported
# from them: each path keeps working (an alias of the module that holds the names now).
FIRST_RELEASE_PATHS = {
    "fastgrad.tape": ["Tape", "RECORDING", "guard_memory"],
    "fastgrad.tensor": ["Tensor", "tensor", "zeros", "no_grad", "apply", "input_dtype_problem"],
    "fastgrad.nn": ["Linear", "MLP", "RNN", "Module"],
    "fastgrad.optim": ["SGD", "Adam", "StepLR"],
    "fastgrad.functional": ["relu", "cross_entropy", "softmax"],
    "fastgrad.io": ["save", "load", "validate_tape", "atomic_write"],
    "fastgrad.study": ["rnn_gradient_norms", "sweep", "StudyResult"],
    "fastgrad.datasets": ["load_digits"],
    "fastgrad.kernel_cache": ["REPORTER", "cache_status", "warmup", "FAMILIES"],
    "fastgrad.jvp": ["RULES", "jvp"],
    "fastgrad.anomaly": ["locate"],
    "fastgrad.timing": ["median_time"],
    "fastgrad.errors": ["FastgradError", "fail"],
    "fastgrad.memory": ["set_memory_limit"],
    "fastgrad.scan": ["Binomial"],
    "fastgrad.compile": ["Compiled", "compile", "fit", "History", "Program", "step_lock"],
}


def test_first_release_import_paths_keep_working():
    """``from fastgrad.tape import Tape`` and ``import fastgrad.nn`` work as in the first release,
    in a fresh interpreter (``import fastgrad`` itself sets the old paths up)."""
    code = "import importlib\n"
    for path, names in FIRST_RELEASE_PATHS.items():
        code += (f"from {path} import {', '.join(names)}\n"
                 f"import {path}\n"
                 f"assert all(hasattr(importlib.import_module({path!r}), n) for n in {names!r})\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
