"""fastgrad: tape-based reverse-mode automatic differentiation, replayed by Numba kernels.

>>> import fastgrad as fg
>>> x = fg.tensor(2.0, requires_grad=True); y = fg.tensor(-3.0, requires_grad=True)
>>> z = fg.tensor(4.0, requires_grad=True)
>>> f = (x + y) * z
>>> f.backward()
>>> float(x.grad), float(y.grad), float(z.grad)
(4.0, 4.0, -1.0)
"""

import importlib as _importlib
import sys as _sys
import types as _types

from .core.errors import FastgradError
from .core.memory import set_memory_limit
from .ops import Op
from .runtime.anomaly import AnomalyError, detect_anomaly
from .runtime.blas_threads import get_blas_threads, set_blas_threads
from .runtime.tape import Tape
from .frontend.modes import (
    enable_grad, get_default_dtype, is_grad_enabled, no_grad, set_default_dtype,
)
from .frontend.tensor import (
    Tensor, as_tensor, broadcast_to, concatenate, matmul, permute, stack, swapaxes, take, tensor,
    transpose, where,
)
from .frontend.creation import (
    arange, empty, eye, from_numpy, full, full_like, linspace, ones, ones_like, rand, randint,
    randn, zeros, zeros_like,
)
from .frontend.functional import (
    binary_cross_entropy, binary_cross_entropy_with_logits, cross_entropy, elu, gelu, hardswish,
    huber_loss, kl_div, l1_loss, leaky_relu, log_softmax, logsigmoid, mish, mse_loss, nll_loss,
    one_hot, relu, relu6, selu, sigmoid, silu, smooth_l1_loss, softmax, softplus, tanh,
)
from .transforms.gradcheck import GradcheckError, gradcheck
from .transforms.jvp import jvp, linearize
from .transforms.scan import Binomial, scan
from .training import nn, optim
from .training.bptt import truncated_bptt
from .training.carry_norms import carry_gradient_log_norms
from .training.compile import Compiled, compile
from .training.fit import History, fit
from .training.nn import manual_seed
from .io import load, save
from . import study
from .runtime import kernel_cache as _kernel_cache

# The first release's import paths (one module per name at the top: `fastgrad.tape.Tape`,
# `import fastgrad.nn`, `from fastgrad.tensor import Tensor`) keep working: each names the
# module that holds its names now, or, for `fastgrad.compile` (whose names now live in three
# modules), a module holding them all.
def _first_release_module(name, *modules):
    merged = _types.ModuleType(f"{__name__}.{name}", f"fastgrad.{name} of the first release: "
                               f"the names of {', '.join(m.__name__ for m in modules)}.")
    merged.__all__ = sorted({n for m in modules for n in m.__all__})
    for m in reversed(modules):
        vars(merged).update({n: getattr(m, n) for n in m.__all__})
    return merged


for _old, _new in {
    "errors": "core.errors", "timing": "core.timing", "memory": "core.memory",
    "datasets": "data.digits", "tape": "runtime.tape", "kernel_cache": "runtime.kernel_cache",
    "anomaly": "runtime.anomaly", "blas_threads": "runtime.blas_threads",
    "tensor": "frontend", "functional": "frontend.functional",
    "losses": "frontend.losses", "conv": "frontend.conv", "fusion": "transforms.fusion",
    "reference": "transforms.reference", "scan": "transforms.scan", "jvp": "transforms.jvp",
    "gradcheck": "transforms.gradcheck", "optim": "training.optim",
    "compile": ("training.compile", "training.fit", "training.program"),
    "bptt": "training.bptt", "nn": "training.nn", "carry_norms": "training.carry_norms",
}.items():
    if isinstance(_new, tuple):
        _module = _first_release_module(
            _old, *(_importlib.import_module(f"{__name__}.{n}") for n in _new))
    else:
        _module = _importlib.import_module(f"{__name__}.{_new}")
    _sys.modules[f"{__name__}.{_old}"] = _module
    globals().setdefault(_old, _module)  # fg.nn, fg.functional, ...
# `fastgrad.kernel_cache.warmup` (and its families) of the first release is fastgrad.warmup's
from . import warmup as _warmup  # noqa: E402

vars(_kernel_cache).update({n: getattr(_warmup, n) for n in _warmup.__all__})
del _old, _new, _module

_kernel_cache.install()  # a first call that compiles kernels says so (docs/kernel-cache.md)

__version__ = "0.1.0"


def _method(name):
    def fn(x, *args, **kwargs):
        return getattr(as_tensor(x), name)(*args, **kwargs)

    fn.__name__ = name
    fn.__doc__ = f"fg.{name}(x, ...) is x.{name}(...); see Tensor.{name}."
    return fn


sum, mean, max, min, amax, amin, argmax, argmin, reshape, maximum, minimum = (  # noqa: A001
    _method(n) for n in ["sum", "mean", "max", "min", "amax", "amin", "argmax", "argmin",
                         "reshape", "maximum", "minimum"]
)
concat = cat = concatenate

__all__ = [
    "AnomalyError",
    "Binomial",
    "Compiled",
    "FastgradError",
    "GradcheckError",
    "History",
    "Op",
    "Tape",
    "Tensor",
    "__version__",
    "abs",
    "amax",
    "amin",
    "argmax",
    "argmin",
    "cat",
    "arange",
    "as_tensor",
    "binary_cross_entropy_with_logits",
    "broadcast_to",
    "carry_gradient_log_norms",
    "clip",
    "compile",
    "concat",
    "concatenate",
    "cross_entropy",
    "detect_anomaly",
    "enable_grad",
    "exp",
    "fit",
    "from_numpy",
    "get_default_dtype",
    "gradcheck",
    "is_grad_enabled",
    "jvp",
    "leaky_relu",
    "linearize",
    "load",
    "log",
    "log_softmax",
    "manual_seed",
    "matmul",
    "max",
    "maximum",
    "mean",
    "min",
    "minimum",
    "mse_loss",
    "nn",
    "no_grad",
    "ones",
    "optim",
    "permute",
    "randn",
    "relu",
    "reshape",
    "save",
    "scan",
    "set_default_dtype",
    "set_memory_limit",
    "set_blas_threads",
    "get_blas_threads",
    "sigmoid",
    "softmax",
    "softplus",
    "sqrt",
    "stack",
    "study",
    "sum",
    "swapaxes",
    "take",
    "tanh",
    "tensor",
    "transpose",
    "truncated_bptt",
    "where",
    "zeros",
    "empty",
]

# fg.exp, fg.sin, ...: every unary op with a Tensor method of its name is also a function, taken
# from the op registry so that a new op needs no line here (functional.py's own, documented
# versions, such as fg.tanh, come first).
from .ops import TABLE as _TABLE, UNARY as _UNARY  # noqa: E402

for _d in _TABLE.values():
    if _d.family == _UNARY and hasattr(Tensor, _d.name) and _d.name not in globals():
        globals()[_d.name] = _method(_d.name)
        __all__.append(_d.name)
del _d
__all__ = sorted(set(__all__))  # (abs, exp, ... are listed above and made by the loop)
