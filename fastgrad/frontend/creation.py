"""Making tensors: ``zeros``, ``ones``, ``empty``, ``full``, the ``*_like`` forms, ``eye``,
``linspace``, ``arange``, ``rand``, ``randint``, ``randn`` and ``from_numpy`` (``fg.tensor``
and ``as_tensor`` are in tensor.py, whose ops use them)."""

from __future__ import annotations

import math
import numbers

import numpy as np

from ..core.errors import fail
from ..ops import flag, real
from .inputs import guard_new, make_rng, one_int, shape_arg
from .modes import dtype_arg, get_default_dtype, refuse_frozen_draw
from .tensor import Tensor, as_tensor

__all__ = ["arange", "empty", "eye", "from_numpy", "full", "full_like", "linspace", "ones",
           "ones_like", "rand", "randint", "randn", "zeros", "zeros_like"]


def from_numpy(array) -> Tensor:
    """A leaf sharing ``array``'s memory (no copy), like torch.from_numpy.

    ``array`` must be a NumPy array of numbers (floats, integers or booleans).

    >>> import fastgrad as fg, numpy as np
    >>> fg.from_numpy(np.arange(3.0)).shape
    (3,)
    """
    if not isinstance(array, np.ndarray):
        raise fail("from_numpy", f"expects a NumPy array, got {type(array).__name__}",
                   "pass np.asarray(data), or use fg.tensor(data) to copy")
    if array.dtype.kind not in "fiub":
        raise fail("from_numpy", f"unsupported dtype {array.dtype}", "pass an array of numbers "
                   "(float32/float64 values, integer indices or labels)")
    return Tensor(array)


def _creation_args(op, shape, dtype, requires_grad, floats_only=False):
    flag(op, "requires_grad", requires_grad)
    return shape_arg(op, shape), dtype_arg(op, dtype, floats_only)


def zeros(*shape, dtype=None, requires_grad=False) -> Tensor:
    """A leaf tensor of zeros; ``shape`` as separate ints or one tuple, default dtype unless given.

    >>> import fastgrad as fg
    >>> fg.zeros(2, 3).shape
    (2, 3)
    >>> fg.zeros((2,), requires_grad=True)
    tensor([0., 0.], requires_grad=True)
    """
    shape, dtype = _creation_args("zeros", shape, dtype, requires_grad)
    guard_new("zeros", math.prod(shape) * dtype.itemsize, shape)
    return Tensor(np.zeros(shape, dtype), requires_grad)


def ones(*shape, dtype=None, requires_grad=False) -> Tensor:
    """A leaf tensor of ones; ``shape`` as separate ints or one tuple, default dtype unless given.

    >>> import fastgrad as fg, numpy as np
    >>> fg.ones(2, 3).shape
    (2, 3)
    >>> fg.ones((2,), dtype=np.float32).numpy()
    array([1., 1.], dtype=float32)
    """
    shape, dtype = _creation_args("ones", shape, dtype, requires_grad)
    guard_new("ones", math.prod(shape) * dtype.itemsize, shape)
    return Tensor(np.ones(shape, dtype), requires_grad)


def empty(*shape, dtype=None, requires_grad=False) -> Tensor:
    """A leaf tensor of ``shape`` (PyTorch leaves its values undefined; these are zeros)."""
    return zeros(*shape, dtype=dtype, requires_grad=requires_grad)


def full(shape, fill_value, dtype=None, requires_grad=False) -> Tensor:
    """A leaf tensor of ``shape`` filled with ``fill_value``; its dtype, unless given, is
    int64 for an int, bool for a bool and the default float dtype for a float, as PyTorch.

    >>> import fastgrad as fg
    >>> fg.full((2,), 7).numpy(), fg.full((1, 2), 0.5).dtype
    (array([7, 7]), dtype('float64'))
    """
    if dtype is None and not isinstance(fill_value, (bool, np.bool_)):
        real("full", "fill_value", fill_value)
        if isinstance(fill_value, (int, np.integer)) and not -(2**63) <= fill_value < 2**63:
            raise fail("full", f"fill_value {fill_value} does not fit int64",
                       "pass a smaller int, or a float")
    if dtype is None:
        dtype = np.bool_ if isinstance(fill_value, (bool, np.bool_)) else np.int64 if \
            isinstance(fill_value, (int, np.integer)) else None
    shape, dtype = _creation_args("full", (shape,), dtype, requires_grad)
    guard_new("full", math.prod(shape) * dtype.itemsize, shape)
    return Tensor(np.full(shape, fill_value, dtype), requires_grad)


def _like(op, x, dtype):
    x = as_tensor(x)
    return x.shape, (x.dtype if dtype is None else dtype_arg(op, dtype))


def zeros_like(x, dtype=None, requires_grad=False) -> Tensor:
    """Zeros of ``x``'s shape and dtype (or ``dtype``)."""
    shape, dtype = _like("zeros_like", x, dtype)
    return zeros(shape, dtype=dtype, requires_grad=requires_grad)


def ones_like(x, dtype=None, requires_grad=False) -> Tensor:
    """Ones of ``x``'s shape and dtype (or ``dtype``)."""
    shape, dtype = _like("ones_like", x, dtype)
    return ones(shape, dtype=dtype, requires_grad=requires_grad)


def full_like(x, fill_value, dtype=None, requires_grad=False) -> Tensor:
    """``fill_value`` in ``x``'s shape and dtype (or ``dtype``)."""
    shape, dtype = _like("full_like", x, dtype)
    return full(shape, fill_value, dtype=dtype, requires_grad=requires_grad)


def eye(n, m=None, dtype=None, requires_grad=False) -> Tensor:
    """The (n, m) identity matrix (m = n by default), as torch.eye."""
    shape, dtype = _creation_args("eye", (n, n if m is None else m), dtype, requires_grad)
    guard_new("eye", math.prod(shape) * dtype.itemsize, shape)
    return Tensor(np.eye(*shape, dtype=dtype), requires_grad)


def linspace(start, end, steps, dtype=None, requires_grad=False) -> Tensor:
    """``steps`` evenly spaced values from ``start`` to ``end`` inclusive, as torch.linspace."""
    start, end = real("linspace", "start", start), real("linspace", "end", end)
    steps = one_int("linspace", "steps", steps, 0)
    dtype = dtype_arg("linspace", dtype, floats_only=True)
    guard_new("linspace", steps * 8, (steps,))
    return Tensor(np.linspace(start, end, steps).astype(dtype), requires_grad)


def rand(*shape, dtype=None, requires_grad=False, seed=None) -> Tensor:
    """Uniform samples in [0, 1); ``seed`` (int or np.random.Generator) makes them
    reproducible, as in ``fg.randn``."""
    shape, dtype = _creation_args("rand", shape, dtype, requires_grad, floats_only=True)
    guard_new("rand", math.prod(shape) * 8, shape)
    refuse_frozen_draw("rand", seed)
    return Tensor(make_rng("rand", seed).random(shape).astype(dtype, copy=False), requires_grad)


def randint(low, high=None, size=(), dtype=np.int64, seed=None) -> Tensor:
    """Integers drawn uniformly from [low, high) (from [0, low) when ``high`` is None), as
    torch.randint; int64 unless ``dtype`` says otherwise."""
    if isinstance(high, (tuple, list)):  # torch.randint(high, size)
        high, size = None, high
    low, high = (0, low) if high is None else (low, high)
    for what, v in (("low", low), ("high", high)):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise fail("randint", f"{what} must be an int, got {v!r}", f"pass an int {what}")
    if high <= low:
        raise fail("randint", f"high {high} is not above low {low}", "pass low < high")
    if not -(2**63) <= low < high <= 2**63:
        raise fail("randint", f"bounds [{low}, {high}) do not fit int64", "pass smaller bounds")
    shape = shape_arg("randint", (size,))
    dtype = dtype_arg("randint", dtype)
    guard_new("randint", math.prod(shape) * 8, shape)
    refuse_frozen_draw("randint", seed)
    return Tensor(make_rng("randint", seed).integers(low, high, shape).astype(dtype))


_RANDN_CHUNK = 1 << 16  # float64 draws per chunk when making float32 samples


def randn(*shape, dtype=None, requires_grad=False, seed=None) -> Tensor:
    """Standard normal samples; ``seed`` (int or np.random.Generator) makes them reproducible.

    float32 samples are the float64 draws rounded, drawn in chunks so that making them holds
    the result and one chunk, not a float64 copy of it.

    >>> import fastgrad as fg, numpy as np
    >>> a = fg.randn(3, dtype=np.float32, seed=0).numpy()
    >>> bool(np.array_equal(a, np.random.default_rng(0).standard_normal(3).astype(np.float32)))
    True
    """
    shape, dtype = _creation_args("randn", shape, dtype, requires_grad, floats_only=True)
    refuse_frozen_draw("randn", seed)
    rng = make_rng("randn", seed)
    n = math.prod(shape)
    if dtype == np.float64:
        guard_new("randn", n * 8, shape)
        return Tensor(rng.standard_normal(shape), requires_grad)
    guard_new("randn", n * dtype.itemsize + min(n, _RANDN_CHUNK) * 8, shape)
    out = np.empty(n, dtype)
    for i in range(0, n, _RANDN_CHUNK):  # the same stream as one float64 draw of n
        out[i : i + _RANDN_CHUNK] = rng.standard_normal(min(_RANDN_CHUNK, n - i))
    return Tensor(out.reshape(shape), requires_grad)


def arange(*args, dtype=None, requires_grad=False) -> Tensor:
    """np.arange(start, stop, step); float unless every argument is an int and no dtype is given
    (then int64). The length is computed and checked against the memory guard first.

    >>> import fastgrad as fg
    >>> fg.arange(3).numpy(), fg.arange(0, 1, 0.5).numpy()
    (array([0, 1, 2]), array([0. , 0.5]))
    """
    if not 1 <= len(args) <= 3:
        raise fail("arange", f"takes 1 to 3 numbers (stop, or start, stop[, step]), got "
                   f"{len(args)}", "call fg.arange(stop) or fg.arange(start, stop, step)")
    for a in args:
        if isinstance(a, (bool, np.bool_)) or not isinstance(a, (numbers.Real, np.integer,
                                                                  np.floating)):
            raise fail("arange", f"arguments must be real numbers, got {a!r}",
                       "pass ints or floats")
        if not math.isfinite(a):
            raise fail("arange", f"arguments must be finite, got {a!r}", "pass finite bounds")
    start, stop, step = (0, args[0], 1) if len(args) == 1 else (*args, 1)[:3]
    if step == 0:
        raise fail("arange", "step is 0", "pass a non-zero step")
    ints = all(isinstance(a, (int, np.integer)) for a in (start, stop, step))
    dtype = None if dtype is None else dtype_arg("arange", dtype)
    if ints:  # ceil((stop - start) / step) exactly, for Python ints of any size
        n = max(0, -((int(start) - int(stop)) // int(step)))
    else:
        q = (float(stop) - float(start)) / float(step)
        n = max(0, math.ceil(q)) if math.isfinite(q) else 2**64
    # NumPy makes it in int64 or float64, then a cast to another dtype holds both
    made = np.dtype(np.int64) if ints and dtype is None else np.dtype(np.float64) if dtype is \
        None or dtype.kind == "f" else dtype
    final = dtype if dtype is not None else made if made.kind != "f" else get_default_dtype()
    guard_new("arange", n * (made.itemsize + (final.itemsize if final != made else 0)), (n,))
    try:
        a = np.arange(start, stop, step, dtype=made)
    except (TypeError, ValueError, OverflowError) as e:
        raise fail("arange", f"cannot make arange{tuple(args)} as {made} ({e})",
                   "pass bounds that fit the dtype") from None
    return Tensor(a.astype(final, copy=False), requires_grad)
