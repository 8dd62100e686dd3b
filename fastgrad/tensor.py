"""Tensor: a value that records every op on it into a flat tape.

A *leaf* tensor (made by ``fg.tensor``, ``fg.randn``, parameters) owns a NumPy array. An op on
tensors records one row into a tape and returns a non-leaf tensor naming (tape, node). Forward
values are computed lazily, in one native call per batch of rows, when something reads them
(``.numpy()``, ``.item()``, ``print``, ``backward()``). ``backward()`` is one native call into
``replay_backward`` and then accumulates into each leaf's ``.grad`` as PyTorch does.

Every op method is one line calling ``apply`` with an op of the registry (fastgrad/ops/).
"""

from __future__ import annotations

import contextlib
import inspect
import math
import numbers
import threading
import warnings

import numpy as np

from .errors import fail
from .ops import TABLE, Op, flag, fmt, int_tuple, normalize_axis, real
from .ops.nodes import FLOAT_NODE, INDEX_NODE
from .memory import guard_memory
from .tape import RECORDING, Tape, same_bits

__all__ = ["FLOAT_DTYPES", "Tensor", "apply", "arange", "as_tensor", "broadcast_to",
           "checked_indices", "concatenate", "dtype_arg", "enable_grad", "from_numpy",
           "get_default_dtype", "getitem", "guard_new", "import_tensor", "input_array",
           "input_dtype_problem",
           "is_grad_enabled", "is_tracing", "make_rng", "matmul", "no_grad", "ones", "placeholder",
           "randn", "real_array", "recording_into", "set_default_dtype", "shape_arg", "stack",
           "take", "tensor", "tracing", "transpose", "unary", "where", "zeros"]

_flag = flag  # requires_grad_'s argument is named flag, as PyTorch's
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
def recording_into(tape):
    """Record every op inside onto ``tape`` (fg.scan uses it for the loop body)."""
    prev = getattr(_state, "body_tape", None)
    _state.body_tape = tape
    try:
        yield
    finally:
        _state.body_tape = prev


@contextlib.contextmanager
def tracing():
    """``fg.compile`` records its function inside: the values on its tape change per call, so
    ``fg.tensor(t)`` and ``t.detach()`` of a recorded tensor record a copy (``_traced_copy``)
    instead of freezing the values of the call that traced."""
    prev = getattr(_state, "tracing", False)
    _state.tracing = True
    try:
        yield
    finally:
        _state.tracing = prev


def is_tracing() -> bool:
    """Whether this thread is inside ``tracing()`` (a function fg.compile records)."""
    return getattr(_state, "tracing", False)


def _traced_copy(t, what) -> "Tensor":
    """``t``'s values cut from the graph, recorded (so a compiled program recomputes them, or
    reloads the leaf, per call): a new tensor naming ``t``'s node when it is recorded and no
    gradient flows through it, else a row ``t * 1`` recorded under no_grad (while tracing,
    no_grad rows are recorded, without gradients)."""
    if t._tape is not None and not t.requires_grad:
        with RECORDING:
            return Tensor._on_tape(t.tape, t.node, False)
    with no_grad():
        return unary(Op.MUL_SCALAR, t, 1.0)


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


@contextlib.contextmanager
def no_grad():
    """Ops inside compute values but record nothing for backward (like torch.no_grad)."""
    prev = is_grad_enabled()
    _state.grad = False
    try:
        yield
    finally:
        _state.grad = prev


@contextlib.contextmanager
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
    prev = is_grad_enabled()
    _state.grad = True
    try:
        yield
    finally:
        _state.grad = prev


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


def input_array(value) -> np.ndarray:
    """``value`` as the array it enters a computation as (see ``input_dtype_problem``): a
    tensor's values, an array as it is, Python data (lists, numbers) as ``fg.tensor`` makes it
    (floats in the default dtype)."""
    if isinstance(value, Tensor):
        return value.numpy()
    a = np.asarray(value)
    if not isinstance(value, (np.ndarray, np.generic)) and a.dtype.kind == "f":
        a = a.astype(get_default_dtype())
    return a


def _scalar(x):
    return isinstance(x, numbers.Number) and not isinstance(x, bool) or (
        isinstance(x, np.generic) and x.dtype.kind in "fiu")


class Tensor:
    """An n-dimensional array that records the ops applied to it.

    >>> import fastgrad as fg
    >>> x = fg.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    >>> y = (x * x).sum()
    >>> y.backward()
    >>> x.grad
    array([[2., 4.],
           [6., 8.]])
    """

    __slots__ = ("_data", "_tape", "_node", "shape", "dtype", "requires_grad", "grad",
                 "__weakref__")
    __array_priority__ = 100  # numpy_array * tensor -> Tensor.__rmul__

    def __init__(self, data, requires_grad=False):
        data = np.asarray(data)
        self._data = data
        self._tape = None
        self._node = -1
        self.shape = data.shape
        self.dtype = data.dtype
        self.grad = None
        if requires_grad and data.dtype not in FLOAT_DTYPES:
            raise fail("tensor", f"a {data.dtype} tensor cannot require grad",
                       "make it float32 or float64 (dtype=np.float64)")
        self.requires_grad = bool(requires_grad)

    @classmethod
    def _on_tape(cls, tape, node, requires_grad):
        t = cls.__new__(cls)
        t._data = None
        t._tape = tape
        t._node = node
        t.shape = tape.shapes[node]
        t.dtype = tape.dtype if tape.node_kind.a[node] == FLOAT_NODE else np.dtype(np.int64)
        t.requires_grad = requires_grad
        t.grad = None
        return t

    # ---------------------------------------------------------------- identity
    @property
    def is_leaf(self) -> bool:
        return self._tape is None or not self.requires_grad

    @property
    def tape(self) -> Tape | None:
        """The tape this tensor was recorded on (None for a leaf)."""
        tape = self._tape
        if tape is None or tape.merged_into is None:
            return tape
        with RECORDING:  # merges happen under it: resolve once, never shift twice
            tape, node = self._tape, self._node
            while tape.merged_into is not None:
                node += tape.node_shift
                tape = tape.merged_into
            # the node before the tape: a thread that reads the new tape reads the new node
            self._node = node
            self._tape = tape
        return tape

    @property
    def node(self) -> int:
        self.tape  # noqa: B018 - resolves merges
        return self._node

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def __len__(self):
        if not self.shape:  # a FastgradError is a TypeError, as len() requires
            raise fail("len", "len() of a 0-d tensor", "use .item() or .size")
        return self.shape[0]

    # ---------------------------------------------------------------- values out
    def numpy(self) -> np.ndarray:
        """The values as a NumPy array: a leaf's own array, or a read-only view into the tape."""
        if self._tape is None:
            return self._data
        tape = self.tape
        tape.flush()
        v = tape.node_values(self._node).view()
        v.flags.writeable = False
        return v

    def __array__(self, dtype=None, copy=None):
        a = self.numpy()
        return a.astype(dtype) if dtype is not None else a

    def item(self):
        if self.size != 1:
            raise fail("item", f"tensor of shape {fmt(self.shape)} has {self.size} elements",
                       "item() needs exactly one element; index or reduce first")
        return self.numpy().reshape(()).item()

    def tolist(self):
        return self.numpy().tolist()

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    def __bool__(self):
        return bool(self.item())

    def __repr__(self):
        body = np.array2string(self.numpy(), separator=", ", prefix="tensor(")
        extra = "" if self.dtype == get_default_dtype() or self.dtype.kind != "f" else \
            f", dtype={self.dtype.name}"
        return f"tensor({body}{extra}{', requires_grad=True' if self.requires_grad else ''})"

    __hash__ = object.__hash__

    def detach(self) -> "Tensor":
        """A leaf holding a copy of the values, cut from the graph.

        Inside a function ``fg.compile`` traces, a recorded tensor's values change per call:
        its detached copy is then recorded too (a row no gradient flows through), not frozen.
        """
        if is_tracing() and (self._tape is not None or self.dtype in FLOAT_DTYPES):
            return _traced_copy(self, "detach")
        return Tensor(np.array(self.numpy()))

    def astype(self, dtype) -> "Tensor":
        dtype = dtype_arg("astype", dtype)
        if self._tape is not None and self.requires_grad and dtype != self.dtype:
            raise fail("astype", f"cannot cast a recorded {self.dtype} tensor to {dtype}",
                       "a tape holds one dtype: build the graph in the dtype you need, or "
                       "detach() first")
        return Tensor(self.numpy().astype(dtype), requires_grad=self.requires_grad
                      and dtype in FLOAT_DTYPES and self._tape is None)

    def requires_grad_(self, flag=True) -> "Tensor":
        flag = _flag("requires_grad_", "flag", flag)
        if self._tape is not None:
            raise fail("requires_grad_", "only leaf tensors can be switched",
                       "call it on a tensor made by fg.tensor, or detach() first")
        if flag and self.dtype not in FLOAT_DTYPES:
            raise fail("requires_grad_", f"a {self.dtype} tensor cannot require grad",
                       "make it float32 or float64")
        self.requires_grad = bool(flag)
        return self

    def zero_grad(self):
        self.grad = None

    # ---------------------------------------------------------------- backward
    def backward(self, grad=None, retain_graph=None):
        """Reverse sweep from this tensor: one native call, then ``.grad`` of each leaf += its part.

        ``grad`` is the seed (dL/dself); it may be omitted only for a one-element tensor.
        """
        if not self.requires_grad:
            raise fail("backward", "this tensor does not require grad (no input had "
                       "requires_grad=True, or it was made under no_grad())",
                       "create the inputs with fg.tensor(..., requires_grad=True)")
        if grad is None:
            if self.size != 1:
                raise fail("backward", f"called on a tensor of shape {fmt(self.shape)} "
                           "without a seed gradient",
                           "reduce to a scalar first (.sum() / .mean()) or pass grad= of the "
                           "same shape")
            seed = np.ones(self.shape, self.dtype)
        else:
            seed = _seed_values(grad, self)
        if self._tape is None:  # a leaf: d self / d self = seed
            _accumulate(self, seed)
            return
        while True:
            tape = self.tape
            with tape.lock:  # the gradient arena is the tape's: read it before another sweep
                if tape.merged_into is not None:  # merged while this thread waited: follow
                    continue
                node = self._node
                tape.backward(node, seed)
                for leaf, v in tape.leaves:
                    if v < node and leaf.requires_grad:
                        _accumulate(leaf, tape.node_grad(v))
                return

    # ---------------------------------------------------------------- ops (one line each)
    def __add__(self, o):
        return unary(Op.ADD_SCALAR, self, o) if _scalar(o) else apply(Op.ADD, self, o)

    def __radd__(self, o):
        return unary(Op.ADD_SCALAR, self, o) if _scalar(o) else apply(Op.ADD, o, self)

    def __sub__(self, o):
        return unary(Op.ADD_SCALAR, self, -o) if _scalar(o) else apply(Op.SUB, self, o)

    def __rsub__(self, o):
        return unary(Op.ADD_SCALAR, -self, o) if _scalar(o) else apply(Op.SUB, o, self)

    def __mul__(self, o):
        return unary(Op.MUL_SCALAR, self, o) if _scalar(o) else apply(Op.MUL, self, o)

    def __rmul__(self, o):
        return unary(Op.MUL_SCALAR, self, o) if _scalar(o) else apply(Op.MUL, o, self)

    def __truediv__(self, o):
        return unary(Op.DIV_SCALAR, self, o) if _scalar(o) else apply(Op.DIV, self, o)

    def __rtruediv__(self, o):
        return unary(Op.RDIV_SCALAR, self, o) if _scalar(o) else apply(Op.DIV, o, self)

    def __pow__(self, o):
        return unary(Op.POW_SCALAR, self, o) if _scalar(o) else apply(Op.POW, self, o)

    def __rpow__(self, o):
        return unary(Op.RPOW_SCALAR, self, o) if _scalar(o) else apply(Op.POW, o, self)

    def __neg__(self):
        return apply(Op.NEG, self)

    def __abs__(self):
        return apply(Op.ABS, self)

    def __gt__(self, o):
        return apply(Op.GT, self, o)

    def __ge__(self, o):
        return apply(Op.GE, self, o)

    def __lt__(self, o):
        return apply(Op.LT, self, o)

    def __le__(self, o):
        return apply(Op.LE, self, o)

    def __eq__(self, o):
        return apply(Op.EQ, self, o)

    def __ne__(self, o):
        return apply(Op.NE, self, o)

    def __matmul__(self, o):
        return matmul(self, o)

    def __rmatmul__(self, o):
        return matmul(o, self)

    def abs(self):
        return apply(Op.ABS, self)

    def exp(self):
        return apply(Op.EXP, self)

    def log(self):
        return apply(Op.LOG, self)

    def sqrt(self):
        return apply(Op.SQRT, self)

    def tanh(self):
        return apply(Op.TANH, self)

    def sigmoid(self):
        return apply(Op.SIGMOID, self)

    def relu(self):
        return apply(Op.RELU, self)

    def leaky_relu(self, negative_slope=0.01):
        return unary(Op.LEAKY_RELU, self, negative_slope)

    def softplus(self):
        return apply(Op.SOFTPLUS, self)

    def sin(self):
        return apply(Op.SIN, self)

    def cos(self):
        return apply(Op.COS, self)

    def log1p(self):
        return apply(Op.LOG1P, self)

    def expm1(self):
        return apply(Op.EXPM1, self)

    def clip(self, min=None, max=None):  # noqa: A002 - NumPy's / PyTorch's names
        lo = -np.inf if min is None else real("clip", "min", min)
        hi = np.inf if max is None else real("clip", "max", max)
        if lo > hi:
            raise fail("clip", f"min {lo} is greater than max {hi}", "pass min <= max")
        return unary(Op.CLIP, self, lo, hi)

    clamp = clip

    def maximum(self, o):
        return apply(Op.MAXIMUM, self, o)

    def minimum(self, o):
        return apply(Op.MINIMUM, self, o)

    def softmax(self, axis=-1):
        return apply(Op.SOFTMAX, self, axis=axis)

    def log_softmax(self, axis=-1):
        return apply(Op.LOG_SOFTMAX, self, axis=axis)

    def sum(self, axis=None, keepdims=False):
        return _reduce(Op.SUM, self, axis, keepdims)

    def max(self, axis=None, keepdims=False):
        return _reduce(Op.MAX, self, axis, keepdims)

    def mean(self, axis=None, keepdims=False):
        return _reduce(Op.MEAN, self, axis, keepdims)

    def reshape(self, *shape):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        return apply(Op.RESHAPE, self, shape=tuple(shape))

    def flatten(self):
        return self.reshape(-1)

    def transpose(self, *axes):
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            return transpose(self, axes[0])  # an explicit sequence, even empty, as NumPy
        return transpose(self, axes or None)

    @property
    def T(self):  # noqa: N802 - NumPy's name
        return transpose(self, None)

    def broadcast_to(self, shape):
        return broadcast_to(self, shape)

    def __getitem__(self, key):
        return getitem(self, key)


def real_array(op, what, value) -> np.ndarray:
    """``value`` (a tensor, array, nested list or number) as an array of real numbers (floats,
    ints or bools; no copy when it is one already). Strings, objects (None inside a list),
    complex numbers and ragged lists are refused rather than cast.

    >>> real_array("backward", "grad", [1, 2])
    array([1, 2])
    """
    if isinstance(value, Tensor):
        return value.numpy()
    try:
        values = np.asarray(value)
    except (TypeError, ValueError) as e:
        raise fail(op, f"{what} is not an array of numbers ({e})",
                   "pass a tensor or an array of real numbers") from None
    if values.dtype.kind not in "fiub":
        raise fail(op, f"{what} has dtype {values.dtype} (shape {fmt(values.shape)})",
                   "pass real numbers (floats, ints), as a tensor or an array")
    return values


def _seed_values(grad, out) -> np.ndarray:
    """``backward``'s seed ``grad`` as a new array of ``out``'s shape and dtype.

    Like PyTorch's ``grad`` argument: any real numbers (a tensor, of any tape, an array, a list,
    a number) of exactly ``out``'s shape, cast to its dtype; complex, strings, objects (None
    inside a list) and other shapes are refused rather than cast or broadcast.
    """
    values = real_array("backward", "the seed grad", grad)
    if values.shape != out.shape:
        raise fail("backward", f"seed gradient of shape {fmt(values.shape)} for a tensor "
                   f"of shape {fmt(out.shape)}", "pass grad with the tensor's shape")
    return np.array(values, dtype=out.dtype, copy=True)  # never a view into a tape's arena


_ACCUMULATING = threading.Lock()  # threads adding into one leaf's .grad take turns


def _accumulate(leaf, g):
    g = np.asarray(g, leaf.dtype)
    with _ACCUMULATING:
        if leaf.grad is None:
            leaf.grad = np.array(g, copy=True)
        else:
            leaf.grad += g


# -------------------------------------------------------------------------- making tensors
def tensor(data, dtype=None, requires_grad=False) -> Tensor:
    """A leaf tensor holding a copy of ``data`` (Python floats become the default dtype).

    >>> import fastgrad as fg
    >>> fg.tensor([1.0, 2.0], requires_grad=True)
    tensor([1., 2.], requires_grad=True)
    """
    if isinstance(data, Tensor):
        if is_tracing():  # fg.compile recomputes recorded values and reloads leaves per call
            same_dtype = dtype is None or np.dtype(dtype) == data.dtype
            if data._tape is not None and (requires_grad or not same_dtype):
                raise fail("tensor", f"inside a function fg.compile traces, a recorded "
                           f"{data.dtype} value of shape {fmt(data.shape)} cannot become a "
                           + ("leaf that requires grad" if requires_grad else
                              f"{np.dtype(dtype)} tensor") + " (it would keep the first "
                           "call's values)", "use the value itself (or .detach()); cast the "
                           "function's inputs before the call; make parameters outside it")
            if data._tape is not None or (data.dtype in FLOAT_DTYPES and same_dtype
                                          and not requires_grad):
                return _traced_copy(data, "tensor")
        data = data.numpy()
    requires_grad = flag("tensor", "requires_grad", requires_grad)
    if dtype is not None:
        dtype = dtype_arg("tensor", dtype)
    if isinstance(data, np.ndarray):  # a copy as large as a broadcast view's shape
        itemsize = np.dtype(dtype).itemsize if dtype is not None else data.dtype.itemsize
        guard_memory("tensor", data.size * itemsize, f"the copy of shape {fmt(data.shape)} "
                     "does not fit; pass a smaller array")
    try:
        a = np.array(data, dtype=dtype, copy=True)
    except (TypeError, ValueError, OverflowError) as e:
        raise fail("tensor", f"cannot make an array of {type(data).__name__} data"
                   + (f" as {dtype}" if dtype is not None else "") + f" ({e})",
                   "pass numbers or (nested, rectangular) lists or arrays of them") from None
    if dtype is None and a.dtype.kind == "f" and a.dtype not in FLOAT_DTYPES:
        a = a.astype(get_default_dtype())
    if dtype is None and not isinstance(data, np.ndarray) and a.dtype == np.float64:
        a = a.astype(get_default_dtype())
    if a.dtype.kind not in "fiub":
        raise fail("tensor", f"unsupported dtype {a.dtype}", "pass numbers (float32/float64 "
                   "values, integer indices or labels)")
    return Tensor(a, requires_grad=requires_grad)


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


def as_tensor(x, dtype=None) -> Tensor:
    """``x`` as a Tensor of the same shape, copying only when needed (like torch.as_tensor).

    A Tensor is returned as it is; a NumPy array is wrapped without a copy unless ``dtype`` asks
    for a cast; anything else (numbers, nested lists) goes through ``fg.tensor``.

    >>> import fastgrad as fg, numpy as np
    >>> a = np.zeros(3)
    >>> t = fg.as_tensor(a)
    >>> a[0] = 5.0
    >>> t.numpy()
    array([5., 0., 0.])
    >>> fg.as_tensor(t) is t
    True
    >>> fg.as_tensor([[1, 2]], dtype=np.float32).shape
    (1, 2)
    """
    if isinstance(x, Tensor):
        return x
    if isinstance(x, np.ndarray):
        dtype = None if dtype is None else dtype_arg("as_tensor", dtype)
        return Tensor(x if dtype is None or x.dtype == dtype else x.astype(dtype))
    return tensor(x, dtype=dtype)


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


# -------------------------------------------------------------------------- recording
_ATTR_NAMES: dict = {}


def _attr_names(op):
    """The keyword attributes op's shape rule takes (None: any, for rules taking **attrs)."""
    if op not in _ATTR_NAMES:
        params = list(inspect.signature(TABLE[op].rule).parameters.values())[2:]
        _ATTR_NAMES[op] = None if any(p.kind == p.VAR_KEYWORD for p in params) else \
            frozenset(p.name for p in params)
    return _ATTR_NAMES[op]


def unary(op, x, c0=0.0, c1=0.0) -> Tensor:
    """Record an elementwise op with scalar constants (x + 2, x ** 3, leaky_relu(x, 0.1))."""
    return apply(op, x, c0=c0, c1=c1)  # the shape rule checks they are real numbers


def import_tensor(tape, t, kind, need_values, what=None):
    """Node id of tensor ``t`` on ``tape``, copying a leaf's (or foreign tensor's) values in.

    A leaf used again on the same tape reuses its copy only while the copy holds the leaf's
    current values (``same_bits``): after an optimizer step, a write into its array or into a
    NumPy array shared through ``fg.from_numpy``, the later use gets a fresh copy, as PyTorch
    reads the current values. The old copy stays for the rows that read it; ``backward``
    refuses to run through one that needs it (``Tape.check_saved_leaves``).
    """
    if t._tape is not None and not need_values and t.tape is tape:
        return t._node
    key = id(t)
    if kind == FLOAT_NODE and key in tape.imported:
        v = tape.imported[key][1]
        # a recorded tensor's values never change; a leaf's may have since it was copied
        if t._tape is not None or same_bits(tape.node_values(v), t.numpy()):
            return v
    values = t.numpy()
    if kind == FLOAT_NODE and values.dtype != tape.dtype:
        values = values.astype(tape.dtype)
    need = t.requires_grad and t._tape is None and kind == FLOAT_NODE and is_grad_enabled()
    v = tape.add_input(values, kind=kind, need=need, label="leaf" if need else "const",
                       what=what)
    if kind == FLOAT_NODE and (need or not t.requires_grad):
        # not a parameter's no_grad copy: a later use with grad on must import it afresh
        tape.imported[key] = (t, v)
    if kind == FLOAT_NODE and t._tape is None:
        tape.copies.append((t, v))
    if need:
        tape.leaves.append((t, v))
    return v


def apply(op: Op, *operands, **attrs) -> Tensor:
    """Validate operands with the op's shape rule, record one row, return the output tensor."""
    d = TABLE[op]
    name = d.name
    allowed = _attr_names(op)
    if allowed is not None and not allowed.issuperset(attrs):
        raise fail(name, f"unknown attribute(s) {sorted(set(attrs) - allowed)}",
                   f"{name} takes " + (", ".join(sorted(allowed)) or "no attributes"))
    ts = [as_tensor(o) for o in operands]
    if (d.arity >= 0 and len(ts) != d.arity) or not ts:
        raise fail(name, f"takes {d.arity if d.arity >= 0 else 'one or more'} operand(s), got "
                   f"{len(ts)}")
    floats = {t.dtype for i, t in enumerate(ts) if i not in d.int_inputs and t.dtype.kind == "f"}
    for i, t in enumerate(ts):
        problem = input_dtype_problem(t.dtype, None)
        if problem is not None:
            raise fail(name, f"{problem[0]} (operand {i}, shape {fmt(t.shape)})", problem[1])
    if any(input_dtype_problem(f, next(iter(floats))) for f in floats):
        raise fail(
            name,
            "operands have dtypes " + " and ".join(sorted(x.name for x in floats)) + " with shapes "
            + ", ".join(fmt(t.shape) for t in ts),
            "fastgrad does not promote silently: cast one side with .astype(np.float64) or "
            ".astype(np.float32)",
        )
    dtype = floats.pop() if floats else get_default_dtype()
    for i in d.int_inputs:
        if ts[i].dtype.kind not in "iu":
            raise fail(name, f"operand {i} must hold integers (indices/labels), got {ts[i].dtype} "
                       f"of shape {fmt(ts[i].shape)}", "pass an integer array (np.int64)")
    shapes = [t.shape for t in ts]
    out_shape, ip, fp = d.rule(name, shapes, **attrs)
    grad_on = is_grad_enabled()
    need = grad_on and d.differentiable and any(
        t.requires_grad for i, t in enumerate(ts) if i not in d.int_inputs)
    # one thread at a time changes tapes (RECORDING), and never a tape a native call is
    # replaying (its lock): threads sharing a tensor take turns, each row whole
    with RECORDING:
        tape, out, folding = _record(op, name, d, ts, shapes, attrs, out_shape, ip, fp,
                                     dtype, grad_on, need)
    result = Tensor._on_tape(tape, out, need)
    if folding:
        return Tensor(np.array(result.numpy()))
    return result


def _record(op, name, d, ts, shapes, attrs, out_shape, ip, fp, dtype, grad_on, need):
    """Choose the tape (merging the operands' tapes), record the row on it; returns (tape,
    output node, whether the result is a constant to fold). The caller holds RECORDING."""
    # Choose the tape: the operands' own (merging independent graphs), else a fresh one.
    # While fg.compile traces, no_grad rows are recorded too (without gradients) and nothing
    # is folded: the program recomputes them at each call from the current leaves.
    tracing = is_tracing()
    tapes = []
    if grad_on or tracing:
        for t in ts:
            if t._tape is not None and t.tape not in tapes:
                tapes.append(t.tape)
    body = getattr(_state, "body_tape", None)
    if body is not None and body not in tapes:
        # inside a scan body every op is recorded on the scan's tape, under no_grad too: the
        # loop replays these rows T times (without them it would return its initial carry)
        tapes.insert(0, body)
    folding = not tapes and not need and not tracing  # constants only: compute now, a leaf
    if tapes:
        tape = body if body is not None else max(
            tapes, key=lambda tp: (bool(tp.scan_rows), tp.n_rows))
        if tape.dtype != dtype:
            raise fail(name, f"operands recorded in {tape.dtype} mixed with {dtype}",
                       "cast the inputs to one dtype")
    else:
        tape = Tape(dtype)
    with tape.lock:
        for other in tapes:
            if other is not tape:
                tape.absorb(other)
        return tape, _record_row(tape, op, name, d, ts, shapes, attrs, out_shape, ip, fp,
                                 grad_on or tracing, need, body), folding


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


def _record_row(tape, op, name, d, ts, shapes, attrs, out_shape, ip, fp, on_graph, need, body):
    """Import the operands into ``tape`` and record the row; returns its output node.
    ``on_graph``: an operand recorded on ``tape`` is read by node (grad on, or tracing), not
    copied in as a constant."""
    nodes = []
    for i, t in enumerate(ts):
        kind = 1 if i in d.int_inputs else 0
        if kind and t._tape is None:
            lo, hi = d.int_bound(shapes, **attrs)
            where = "operand shapes " + ", ".join(fmt(s) for s in shapes)
            v = tape.add_input(checked_indices(name, t.numpy(), lo, hi, where), kind=INDEX_NODE,
                               label="const", what=name)
            if is_tracing():  # fg.compile reloads it (checked again) at each call
                tape.index_copies.append((t, v, lo, hi, f"{name}: {where}"))
            nodes.append(v)
        else:
            v = import_tensor(tape, t, kind, need_values=not on_graph and body is None, what=name)
            if tape.node_kind.a[v] == INDEX_NODE and kind == FLOAT_NODE:
                # fg.compile traces an integer input as an index slot; it catches this error
                # and traces again with that input cast to floats, as eager ops cast it
                err = fail(name, f"operand {i} (shape {fmt(t.shape)}) is an integer input of a "
                           "compiled function, used in float arithmetic",
                           "pass that input as floats, e.g. y.astype(np.float32)")
                err.integer_input = tape.labels.get(v)
                raise err
            if kind and t._tape is not None:
                lo, hi = d.int_bound(shapes, **attrs)
                old = tape.int_bounds.get(v, (0, hi))
                tape.int_bounds[v] = (0, min(old[1], hi))
            nodes.append(v)
    out = tape.record(op, nodes, out_shape, ip, fp, need)
    if body is not None and tape.recording_scan and tape.scan_marker >= 0 and \
            all(tape.outside_body(v) for v in nodes):
        tape.hoist_last_row()  # loop-invariant: computed once, before the loop
    return out


# -------------------------------------------------------------------------- composite front end
def _reduce(op, x, axis, keepdims):
    x = as_tensor(x)
    if isinstance(axis, (tuple, list)):
        name = TABLE[op].name
        axes = [normalize_axis(name, a, x.ndim) for a in axis]
        if len(set(axes)) != len(axes):
            raise fail(name, f"axis {tuple(axis)} names an axis twice for shape {fmt(x.shape)}",
                       "list each axis once")
        for a in sorted(axes, reverse=True):
            x = apply(op, x, axis=a, keepdims=keepdims)
        return x
    return apply(op, x, axis=axis, keepdims=keepdims)


def matmul(a, b) -> Tensor:
    """Matrix product with NumPy's rules: 2-D, batched leading dims (broadcast), 1-D operands."""
    a, b = as_tensor(a), as_tensor(b)
    if a.ndim == 0 or b.ndim == 0:
        raise fail("matmul", f"operands must be at least 1-D, got {fmt(a.shape)} and "
                   f"{fmt(b.shape)}", "use * for scalars")
    a2 = a.reshape(1, a.shape[0]) if a.ndim == 1 else a
    b2 = b.reshape(b.shape[0], 1) if b.ndim == 1 else b
    y = apply(Op.MATMUL, a2, b2)
    if a.ndim == 1 and b.ndim == 1:
        return y.reshape(())
    if a.ndim == 1:
        return y.reshape(y.shape[:-2] + y.shape[-1:])
    if b.ndim == 1:
        return y.reshape(y.shape[:-1])
    return y


def transpose(x, axes=None) -> Tensor:
    """Permute the axes of ``x`` as np.transpose: axis i of the result is axis ``axes[i]`` of x.

    ``axes=None`` reverses them, so a matrix (m, n) becomes (n, m). The result is a strided view
    of ``x``; ``x.transpose(*axes)`` and ``x.T`` are the same op.

    >>> import fastgrad as fg, numpy as np
    >>> x = fg.tensor(np.arange(6.0).reshape(2, 3))
    >>> fg.transpose(x).numpy()
    array([[0., 3.],
           [1., 4.],
           [2., 5.]])
    >>> fg.transpose(fg.zeros(2, 3, 4), (1, 0, 2)).shape
    (3, 2, 4)
    """
    x = as_tensor(x)
    nd = x.ndim
    axes = tuple(reversed(range(nd))) if axes is None else int_tuple("transpose", "axes", axes)
    if len(axes) != nd or sorted(normalize_axis("transpose", a, nd) for a in axes) != list(
            range(nd)):
        raise fail("transpose", f"axes {axes} are not a permutation of {nd} axes of "
                   f"{fmt(x.shape)}", f"pass a permutation of range({nd})")
    axes = tuple(a % nd for a in axes)
    cs = _contig(x.shape)
    return apply(Op.STRIDED, x, out_shape=tuple(x.shape[a] for a in axes), base=0,
                 strides=tuple(cs[a] for a in axes))


def broadcast_to(x, shape) -> Tensor:
    """``x`` repeated to ``shape`` by NumPy's broadcasting rules, as np.broadcast_to.

    ``shape`` must keep every non-1 size of ``x.shape`` (new leading axes are allowed). In
    backward the gradient is summed back over the broadcast axes to ``x.shape``.

    >>> import fastgrad as fg
    >>> x = fg.tensor([1.0, 2.0], requires_grad=True)  # (2,)
    >>> y = fg.broadcast_to(x, (3, 2))  # (3, 2)
    >>> y.numpy()
    array([[1., 2.],
           [1., 2.],
           [1., 2.]])
    >>> y.sum().backward()
    >>> x.grad
    array([3., 3.])
    """
    from .ops import broadcast_shapes, broadcast_strides

    x = as_tensor(x)
    shape = int_tuple("broadcast_to", "shape", shape, minimum=0)
    if broadcast_shapes("broadcast_to", x.shape, shape) != shape:
        raise fail("broadcast_to", f"cannot broadcast {fmt(x.shape)} to {fmt(shape)}",
                   "the target must keep every non-1 size of the input")
    return apply(Op.STRIDED, x, out_shape=shape, base=0, strides=tuple(broadcast_strides(x.shape,
                                                                                          shape)))


def _contig(shape):
    from .ops import contiguous_strides

    return contiguous_strides(shape)


def getitem(x, key) -> Tensor:
    """Basic indexing (ints, slices, None, ...) as a strided view; an integer array gathers."""
    if isinstance(key, (Tensor, np.ndarray, list)):
        if isinstance(key, list):
            key = np.asarray(key) if key else np.zeros(0, np.int64)
        idx = as_tensor(key)
        if idx.dtype.kind == "b":
            raise fail("getitem", "boolean masks give data-dependent shapes",
                       "use fg.where(mask, x, 0) or index with np.nonzero(mask)[0]")
        return apply(Op.GATHER, x, idx, axis=0)
    key = key if isinstance(key, tuple) else (key,)
    if any(isinstance(k, (Tensor, np.ndarray, list)) for k in key):
        raise fail("getitem", "mixing integer-array and basic indices is not supported",
                   "index in two steps, e.g. x[:, 1:][idx], or use fg.take(x, idx, axis)")
    n_real = sum(1 for k in key if k is not None and k is not Ellipsis)
    if sum(1 for k in key if k is Ellipsis) > 1:
        raise fail("getitem", "an index can only have one Ellipsis", "remove the extra ...")
    if n_real > x.ndim:
        raise fail("getitem", f"too many indices ({n_real}) for shape {fmt(x.shape)}",
                   "use at most one index per axis")
    expanded = []
    for k in key:
        if k is Ellipsis:
            expanded += [slice(None)] * (x.ndim - n_real)
        else:
            expanded.append(k)
    expanded += [slice(None)] * (x.ndim - sum(1 for k in expanded if k is not None))
    cs = _contig(x.shape)
    base, shape, strides, d = 0, [], [], 0
    for k in expanded:
        if k is None:
            shape.append(1)
            strides.append(0)
            continue
        n = x.shape[d]
        if isinstance(k, slice):
            try:
                start, stop, step = k.indices(n)
            except (TypeError, ValueError) as e:
                raise fail("getitem", f"bad slice {k!r} for axis {d} of shape {fmt(x.shape)} "
                           f"({e})", "use integer start/stop and a non-zero step") from None
            cnt = len(range(start, stop, step))
            base += start * cs[d] if cnt else 0
            shape.append(cnt)
            strides.append(step * cs[d])
        elif isinstance(k, (int, np.integer)) and not isinstance(k, bool):
            if not -n <= k < n:
                raise fail("getitem", f"index {k} is out of bounds for axis {d} with size {n} "
                           f"(shape {fmt(x.shape)})", f"use an index in [{-n}, {n - 1}]")
            base += (int(k) % n) * cs[d]
        else:
            raise fail("getitem", f"unsupported index {k!r}", "use ints, slices, None, ... or "
                       "an integer array")
        d += 1
    return apply(Op.STRIDED, x, out_shape=tuple(shape), base=base, strides=tuple(strides))


def take(x, indices, axis=0) -> Tensor:
    """Gather along ``axis`` (np.take): out shape = x.shape[:axis] + idx.shape + x.shape[axis+1:]."""
    return apply(Op.GATHER, x, indices, axis=axis)


def concatenate(tensors, axis=0) -> Tensor:
    """Join tensors along an existing ``axis``, as np.concatenate; ``fg.concat`` is this function.

    Shapes must agree except along ``axis``, where the sizes add: (2, 3) and (4, 3) on axis 0
    give (6, 3). The gradient is split back into the inputs' slices.

    >>> import fastgrad as fg
    >>> fg.concatenate([fg.ones(2, 3), fg.zeros(4, 3)]).shape
    (6, 3)
    >>> fg.concat([fg.tensor([1.0]), fg.tensor([2.0, 3.0])]).numpy()
    array([1., 2., 3.])
    """
    tensors = _tensor_list("concat", tensors)
    return apply(Op.CONCAT, *tensors, axis=axis)


def stack(tensors, axis=0) -> Tensor:
    """Join k tensors of one shape along a new ``axis``, as np.stack.

    The result has size k at ``axis``: three (2,) tensors give (3, 2) on axis 0, (2, 3) on axis 1.

    >>> import fastgrad as fg
    >>> a, b, c = fg.tensor([1.0, 2.0]), fg.tensor([3.0, 4.0]), fg.tensor([5.0, 6.0])
    >>> fg.stack([a, b, c]).numpy()
    array([[1., 2.],
           [3., 4.],
           [5., 6.]])
    >>> fg.stack([a, b, c], axis=1).shape
    (2, 3)
    """
    tensors = [as_tensor(t) for t in _tensor_list("stack", tensors)]
    nd = tensors[0].ndim + 1
    ax = normalize_axis("stack", axis, nd)
    for t in tensors:
        if t.shape != tensors[0].shape:
            raise fail("stack", "shapes " + ", ".join(fmt(u.shape) for u in tensors) + " differ",
                       "stack tensors of one shape")
    return concatenate([t.reshape(t.shape[:ax] + (1,) + t.shape[ax:]) for t in tensors], axis=ax)


def _tensor_list(op, tensors) -> list:
    """``tensors`` (a list or tuple of tensors, arrays or numbers) as a non-empty list."""
    if isinstance(tensors, (Tensor, np.ndarray)) or not isinstance(tensors, (list, tuple)):
        raise fail(op, f"expects a list or tuple of tensors, got {type(tensors).__name__}",
                   f"pass e.g. fg.{op}([a, b])")
    if not tensors:
        raise fail(op, "needs at least one tensor", "pass a non-empty list")
    return list(tensors)


def where(cond, a, b) -> Tensor:
    """Elementwise a where cond else b (with broadcasting); gradients flow to the chosen side."""
    return apply(Op.WHERE, cond, a, b)


def placeholder(tape: Tape, array, label="input") -> Tensor:
    """A tensor on ``tape`` holding ``array`` as an input slot (no producing row).

    Ops on it are recorded on ``tape`` even when nothing requires grad, so the tape can be
    replayed after new values are written into the slot (what ``fg.compile`` does).
    """
    array = np.asarray(array)
    kind = 1 if array.dtype.kind in "iu" else 0
    node = tape.add_input(array if kind else array.astype(tape.dtype, copy=False), kind=kind,
                          label=label)
    return Tensor._on_tape(tape, node, False)
