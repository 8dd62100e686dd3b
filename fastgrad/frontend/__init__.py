"""The front end: Tensor and the recorder behind its ops, making tensors, indexing, NumPy's
protocols, and the functional forms (activations, losses, convolutions).

Modules, lowest first: modes (default dtype, grad mode, what is being recorded), inputs (checks
of what users pass), recorder (an op becomes a tape row), tensor (Tensor and its ops), creation
(zeros, randn, ...), then losses, conv and functional. The names below are those
``fastgrad.tensor`` held in the first release (that import path still works)."""

from __future__ import annotations

from .modes import (
    FLOAT_DTYPES, dtype_arg, enable_grad, get_default_dtype, is_grad_enabled, is_replayed,
    is_tracing, no_grad, recording_into, set_default_dtype, tracing,
)
from .inputs import checked_indices, guard_new, input_dtype_problem, make_rng, shape_arg
from .recorder import import_tensor
from .tensor import (
    Tensor, TensorSize, ValuesIndices, apply, as_tensor, broadcast_to, concatenate, getitem,
    input_array, matmul, permute, placeholder, real_array, stack, swapaxes, take, tensor,
    transpose, unary, where,
)
from .creation import (
    arange, empty, eye, from_numpy, full, full_like, linspace, ones, ones_like, rand, randint,
    randn, zeros, zeros_like,
)

__all__ = [
    "FLOAT_DTYPES", "Tensor", "TensorSize", "ValuesIndices", "apply", "arange", "as_tensor",
    "broadcast_to", "checked_indices", "concatenate", "dtype_arg", "empty", "enable_grad", "eye",
    "from_numpy", "full", "full_like", "get_default_dtype", "getitem", "guard_new",
    "import_tensor", "input_array", "input_dtype_problem", "is_grad_enabled", "is_replayed",
    "is_tracing", "linspace", "make_rng", "matmul", "no_grad", "ones", "ones_like", "permute",
    "placeholder", "rand", "randint", "randn", "real_array", "recording_into", "set_default_dtype",
    "shape_arg", "stack", "swapaxes", "take", "tensor", "tracing", "transpose", "unary", "where",
    "zeros", "zeros_like",
]
