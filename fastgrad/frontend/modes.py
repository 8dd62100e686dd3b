"""The front end's state: the default float dtype (and how a ``dtype=`` argument is read), grad
mode (``no_grad``, ``enable_grad``), and what this thread records into: ``tracing`` while
fg.compile records a function, ``recording_into`` while fg.scan records a loop body."""

from __future__ import annotations

import contextlib
import threading
import warnings

import numpy as np

from ..core.errors import fail

__all__ = ["FLOAT_DTYPES", "dtype_arg", "enable_grad", "get_default_dtype", "is_grad_enabled",
           "is_replayed", "is_tracing", "no_grad", "recording_into", "refuse_frozen_draw",
           "set_default_dtype", "tracing"]


_state = threading.local()
_DEFAULT_DTYPE = [np.dtype(np.float64)]
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def get_default_dtype():
    """The float dtype for tensors made from Python numbers (float64, as NumPy)."""
    return _DEFAULT_DTYPE[0]


def set_default_dtype(dtype):
    """Set the float dtype (float32 or float64) of tensors made from Python numbers.

    It is also the dtype of ``zeros``, ``ones``, ``randn`` and new layers when none is given.

    >>> import fastgrad as fg
    >>> fg.set_default_dtype("float32")
    >>> fg.tensor([1.0, 2.0]).dtype
    dtype('float32')
    >>> fg.set_default_dtype("float64")  # back to the default
    >>> fg.get_default_dtype()
    dtype('float64')
    """
    _DEFAULT_DTYPE[0] = dtype_arg("set_default_dtype", dtype, floats_only=True)


@contextlib.contextmanager
def _thread_setting(name, value, default):
    """Set this thread's ``name`` to ``value`` inside the block, restored after it."""
    prev = getattr(_state, name, default)
    setattr(_state, name, value)
    try:
        yield
    finally:
        setattr(_state, name, prev)


def recording_into(tape):
    """Record every op inside onto ``tape`` (fg.scan uses it for the loop body)."""
    return _thread_setting("body_tape", tape, None)


def tracing():
    """``fg.compile`` records its function inside: the values on its tape change per call, so
    ``fg.tensor(t)`` and ``t.detach()`` of a recorded tensor record a copy (``_traced_copy``)
    instead of freezing the values of the call that traced."""
    return _thread_setting("tracing", True, False)


def is_tracing() -> bool:
    """Whether this thread is inside ``tracing()`` (a function fg.compile records)."""
    return getattr(_state, "tracing", False)


def scan_body():
    """The tape of the ``fg.scan`` body this thread is recording (``recording_into``), or None."""
    return getattr(_state, "body_tape", None)


def is_replayed() -> bool:
    """Whether ops recorded now are replayed later with new values: inside a function
    fg.compile traces, or inside an fg.scan body (then a value computed from the present
    values, such as a random draw or a data-dependent shape, would be frozen)."""
    return is_tracing() or scan_body() is not None


def refuse_frozen_draw(op, seed):
    """Refuse an unseeded random draw where it would be frozen (``is_replayed``)."""
    if seed is None and is_replayed():
        raise fail(op, "an unseeded random draw inside fg.compile or fg.scan would be drawn "
                   "once and reused at every call or step", "draw outside and pass the values "
                   "in as an input, or pass seed= for a fixed constant")


def is_grad_enabled() -> bool:
    """Whether ops are recorded for backward (False inside ``fg.no_grad()``).

    >>> import fastgrad as fg
    >>> fg.is_grad_enabled()
    True
    >>> with fg.no_grad():
    ...     fg.is_grad_enabled()
    False
    """
    return getattr(_state, "grad", True)


def no_grad():
    """Ops inside compute values but record nothing for backward (like torch.no_grad)."""
    return _thread_setting("grad", False, True)


def enable_grad():
    """Turn recording back on inside a ``no_grad`` block (like torch.enable_grad).

    >>> import fastgrad as fg
    >>> x = fg.tensor([1.0, 2.0], requires_grad=True)
    >>> with fg.no_grad():
    ...     with fg.enable_grad():
    ...         y = (x * x).sum()
    >>> y.backward()
    >>> x.grad
    array([2., 4.])
    """
    return _thread_setting("grad", True, True)


def dtype_arg(op, dtype, floats_only=False) -> np.dtype:
    """``dtype`` as a NumPy dtype fastgrad can hold (None: the default float dtype).

    Floats are float32 or float64; unless ``floats_only``, integers and booleans are allowed too
    (labels, indices, masks). Anything else (float16, complex, strings, objects, names NumPy
    does not know) is a FastgradError naming ``op``.

    >>> import fastgrad as fg, numpy as np
    >>> dtype_arg("zeros", "float32"), dtype_arg("zeros", None)
    (dtype('float32'), dtype('float64'))
    """
    if dtype is None:
        return get_default_dtype()
    try:
        with warnings.catch_warnings():  # NumPy's deprecated aliases ("a") are refused below
            warnings.simplefilter("ignore", DeprecationWarning)
            dt = np.dtype(dtype)
    except (TypeError, ValueError):
        dt = None
    allowed = "f" if floats_only else "fiub"
    if dt is None or dt.kind not in allowed or (dt.kind == "f" and dt not in FLOAT_DTYPES):
        raise fail(op, f"unsupported dtype {dtype!r}", "use np.float32 or np.float64" +
                   ("" if floats_only else " (or an integer dtype for indices and labels)"))
    return dt
