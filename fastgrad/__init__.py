"""fastgrad: tape-based reverse-mode automatic differentiation, replayed by Numba kernels.

>>> import fastgrad as fg
>>> x = fg.tensor(2.0, requires_grad=True); y = fg.tensor(-3.0, requires_grad=True)
>>> z = fg.tensor(4.0, requires_grad=True)
>>> f = (x + y) * z
>>> f.backward()
>>> float(x.grad), float(y.grad), float(z.grad)
(4.0, 4.0, -1.0)
"""

from .anomaly import AnomalyError, detect_anomaly
from .errors import FastgradError
from .functional import (
    binary_cross_entropy,
    binary_cross_entropy_with_logits,
    cross_entropy,
    elu,
    gelu,
    hardswish,
    huber_loss,
    kl_div,
    l1_loss,
    leaky_relu,
    logsigmoid,
    mish,
    relu6,
    selu,
    silu,
    smooth_l1_loss,
    log_softmax,
    mse_loss,
    nll_loss,
    one_hot,
    relu,
    sigmoid,
    softmax,
    softplus,
    tanh,
)
from .gradcheck import GradcheckError, gradcheck
from .ops import Op
from .tape import Tape
from .tensor import (
    Tensor,
    arange,
    as_tensor,
    broadcast_to,
    concatenate,
    empty,
    enable_grad,
    eye,
    from_numpy,
    full,
    full_like,
    linspace,
    ones_like,
    rand,
    randint,
    zeros_like,
    get_default_dtype,
    is_grad_enabled,
    matmul,
    no_grad,
    permute,
    swapaxes,
    ones,
    randn,
    set_default_dtype,
    stack,
    take,
    tensor,
    transpose,
    where,
    zeros,
)

from . import nn, optim  # noqa: E402
from .compile import Compiled, History, compile, fit  # noqa: E402
from .nn import manual_seed  # noqa: E402
from .memory import set_memory_limit  # noqa: E402
from .scan import scan  # noqa: E402
from .carry_norms import carry_gradient_log_norms  # noqa: E402
from .blas_threads import get_blas_threads, set_blas_threads  # noqa: E402
from .io import load, save  # noqa: E402
from .scan import Binomial  # noqa: E402, F401
from .bptt import truncated_bptt  # noqa: E402, F401
from .jvp import jvp, linearize  # noqa: E402
from . import study  # noqa: E402
from . import kernel_cache as _kernel_cache  # noqa: E402

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
