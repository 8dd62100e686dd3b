"""Checks of what users pass to the front end: the dtypes fastgrad accepts
(``input_dtype_problem``, its one rule), shapes, seeds, integer arguments, index ranges, and
the memory guard for new arrays. Nothing here knows ``Tensor``."""

from __future__ import annotations

import numpy as np

from ..core.errors import fail
from ..ops import fmt, int_tuple
from ..core.memory import guard_memory
from .modes import FLOAT_DTYPES

__all__ = ["checked_indices", "guard_new", "input_dtype_problem", "make_rng", "one_int",
           "shape_arg"]


def input_dtype_problem(dtype, want):
    """fastgrad's one rule for the dtype of an array entering a computation whose floats are
    ``want`` (float32 or float64; None: not known yet), in eager ops (``apply``), compiled
    steps and ``fg.fit`` alike. Returns None when the array is accepted, else ``(problem,
    fix)`` for the caller's error message.

    - bool and integer arrays are accepted: in a float position they are cast to ``want`` (as
      NumPy), in an index or label position widened to int64 after the range check;
    - float32 and float64 arrays are accepted when they are ``want``: fastgrad does not promote
      or demote silently (PyTorch's Linear refuses float64 input for float32 weights too);
    - float16, complex, string, bytes, object, datetime and structured arrays are refused:
      a cast would lose the imaginary part or parse text.

    Python data (lists, numbers) becomes an array first as ``fg.tensor`` makes it (floats in
    the default dtype, ``input_array``). This is the one place to change when fastgrad adopts
    PyTorch's promotion rules.

    >>> import numpy as np
    >>> input_dtype_problem(np.dtype(np.int32), np.dtype(np.float32)) is None
    True
    >>> input_dtype_problem(np.dtype(np.float64), np.dtype(np.float32))[1]
    'cast it with .astype(np.float32)'
    """
    dtype = np.dtype(dtype)
    if dtype.kind not in "fiub":
        return (f"unsupported dtype {dtype}",
                "use float32 or float64 values, or integer indices/labels")
    if dtype.kind == "f" and dtype not in FLOAT_DTYPES:
        return (f"unsupported dtype {dtype}", "cast it with .astype(np.float32) or "
                ".astype(np.float64)" if want is None else f"cast it with .astype(np.{want})")
    if dtype.kind == "f" and want is not None and dtype != want:
        return (f"dtype {dtype} for a {want} computation", f"cast it with .astype(np.{want})")
    return None


def shape_arg(op, shape) -> tuple:
    """A creation function's ``*shape`` (ints, or one tuple/list/array of them) as a tuple of
    non-negative Python ints; floats, bools, strings, None and negative sizes are refused.

    >>> shape_arg("zeros", (2, 3)), shape_arg("zeros", ((2, 3),)), shape_arg("zeros", ())
    ((2, 3), (2, 3), ())
    """
    if len(shape) == 1 and isinstance(shape[0], (tuple, list, np.ndarray)):
        shape = shape[0]
    return int_tuple(op, "shape", shape, minimum=0)


def make_rng(op, seed) -> np.random.Generator:
    """``seed`` (None, a non-negative int or sequence of them, or a Generator) as a Generator."""
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, (bool, np.bool_, float, str, bytes)):
        raise fail(op, f"seed must be an int, a np.random.Generator or None, got {seed!r}",
                   "pass seed=0 (any non-negative int)")
    try:
        return np.random.default_rng(seed)
    except (TypeError, ValueError) as e:
        raise fail(op, f"seed must be an int, a np.random.Generator or None, got {seed!r} "
                   f"({e})", "pass seed=0 (any non-negative int)") from None


def guard_new(op, nbytes, shape):
    """The memory guard for a new array of ``shape`` whose making holds ``nbytes``."""
    guard_memory(op, nbytes, f"shape {fmt(tuple(shape))} does not fit; use a smaller shape "
                 "(or raise fg.set_memory_limit)")


def one_int(op, what, value, minimum) -> int:
    """``value`` as one Python int >= ``minimum`` (bools, floats and sequences refused)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or \
            value < minimum:
        raise fail(op, f"{what} must be an int >= {minimum}, got {value!r}",
                   f"pass an int {what}")
    return int(value)


def checked_indices(name, values, lo, hi, where) -> np.ndarray:
    """``values`` (integers) as a new int64 array with every entry in [lo, hi) and negative
    entries counted from the end (when lo < 0), else FastgradError naming the bad index.
    Unsigned values are compared before the cast, so 2**64 - 1 never wraps to -1."""
    raw = np.array(values, copy=True)  # checked values are the values used: a private copy
    if raw.dtype.kind == "u" and raw.size and int(raw.max()) >= hi:
        raise fail(name, f"index {int(raw.max())} is out of range [{lo}, {hi}) for {where}",
                   "check the labels/indices against the size of the indexed axis")
    idx = raw.astype(np.int64)
    if idx.size and (idx.min() < lo or idx.max() >= hi):
        bad = idx[(idx < lo) | (idx >= hi)][0]
        raise fail(name, f"index {bad} is out of range [{lo}, {hi}) for {where}",
                   "check the labels/indices against the size of the indexed axis")
    return np.where(idx < 0, idx + hi, idx) if lo < 0 else idx
