"""Tensor: a value that records every op on it into a flat tape.

A *leaf* tensor (made by ``fg.tensor``, ``fg.randn``, parameters) owns a NumPy array. An op on
tensors records one row into a tape (recorder.py) and returns a non-leaf tensor naming (tape,
node). Forward values are computed lazily, in one native call per batch of rows, when something
reads them (``.numpy()``, ``.item()``, ``print``, ``backward()``). ``backward()`` is one native
call into ``replay_backward`` and then accumulates into each leaf's ``.grad`` as PyTorch does.

Every op method is one line calling ``apply`` with an op of the registry (fastgrad/ops/); the
composite ones (reductions along dims, max with indices, casts, masks, indexing, transpose,
concatenation) and NumPy's protocols (``np.exp(t)``) follow the class, as the functions its
methods call. Making tensors is creation.py; the recorder, recorder.py."""

from __future__ import annotations

import math
import numbers
import threading

import numpy as np

from ..core.errors import FastgradError, fail
from ..ops import TABLE, Op, flag, fmt, int_tuple, normalize_axis, real
from ..ops.nodes import FLOAT_NODE, INDEX_NODE
from ..core.memory import guard_memory
from ..runtime.tape import RECORDING, Tape
from ..ops import broadcast_shapes, broadcast_strides, contiguous_strides
from .inputs import checked_indices, one_int
from .modes import FLOAT_DTYPES, dtype_arg, get_default_dtype, is_replayed, is_tracing, no_grad
from .recorder import check_attributes, float_dtype_of, record

__all__ = ["Tensor", "TensorSize", "ValuesIndices", "apply", "as_tensor", "broadcast_to",
           "concatenate", "getitem", "input_array", "matmul", "permute", "placeholder",
           "real_array", "stack", "swapaxes", "take", "tensor", "transpose", "unary", "where"]


_flag = flag  # requires_grad_'s argument is named flag, as PyTorch's


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
                 "_cast_of", "_as", "__weakref__")
    __array_priority__ = 100  # numpy_array * tensor -> Tensor.__rmul__

    def __init__(self, data, requires_grad=False):
        data = np.asarray(data)
        self._data = data
        self._tape = None
        self._node = -1
        self._cast_of = None  # a cast of a leaf: the leaf its gradient goes to (astype)
        self._as = None  # a bool or int64 dtype shown for a float node (comparisons, indices)
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
        t._cast_of = None
        t._as = None
        return t

    def _shown_as(self, dtype) -> "Tensor":
        """This float node seen as bool or int64 values (a comparison's mask, max's indices),
        as PyTorch types them; arithmetic reads the node's floats, ``numpy()`` the cast."""
        if self._tape is None:
            return Tensor(self._data.astype(dtype))
        self._as = np.dtype(dtype)
        self.dtype = self._as
        return self

    # ---------------------------------------------------------------- identity
    @property
    def is_leaf(self) -> bool:
        return (self._tape is None and self._cast_of is None) or not self.requires_grad

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
    def size(self) -> "TensorSize":
        """The number of elements (NumPy's ``x.size``), callable as PyTorch's ``x.size()`` (the
        shape) and ``x.size(dim)``."""
        return TensorSize(self.shape)

    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def dim(self) -> int:
        return len(self.shape)

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
        if self._as is not None:
            v = v.astype(self._as)
        v.flags.writeable = False
        return v

    def __array__(self, dtype=None, copy=None):
        a = self.numpy()
        return a.astype(dtype) if dtype is not None else a

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        """NumPy's ufuncs on tensors (``np.exp(t)``, ``array + t``) record fastgrad's op, or
        raise: never a NumPy array silently cut from the graph."""
        return _numpy_ufunc(ufunc, method, inputs, kwargs)

    def __array_function__(self, func, types, args, kwargs):
        """NumPy's functions on tensors (``np.sum(t)``, ``np.stack([a, b])``) as fastgrad's
        ops with NumPy's meanings, or a FastgradError naming the fastgrad spelling."""
        return _numpy_function(func, args, kwargs)

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
        """This tensor in ``dtype`` (itself when it has that dtype already, as PyTorch's casts).

        A cast of a leaf that requires grad is differentiable: its gradient is cast back and
        accumulated into the leaf's ``.grad``. A recorded value cannot change dtype (a tape
        holds one float dtype) except when nothing about it can change: outside ``fg.compile``
        and ``fg.scan``, one that requires no grad becomes a constant.

        >>> import fastgrad as fg, numpy as np
        >>> w = fg.tensor([1.0, 2.0], requires_grad=True)     # float64
        >>> (w.float() * 3).sum().backward()                  # float32 arithmetic
        >>> w.grad
        array([3., 3.])
        """
        return _cast(self, dtype_arg("astype", dtype), "astype")

    def to(self, *args, dtype=None, device=None, **kwargs) -> "Tensor":
        """PyTorch's ``x.to(dtype)``, ``x.to(device, dtype)``, ``x.to(other_tensor)``; the
        CPU is fastgrad's only device (``"cpu"`` is accepted, another is refused)."""
        if kwargs:
            raise fail("to", f"unknown arguments {sorted(kwargs)}", "pass dtype= or device=")
        for a in args:
            if isinstance(a, Tensor):
                dtype = a.dtype if dtype is None else dtype
            elif isinstance(a, str) and a.split(":")[0] in ("cpu", "cuda", "mps", "meta"):
                device = a
            elif dtype is None:
                dtype = a
            else:
                raise fail("to", f"arguments {args!r}", "pass a dtype, a device or a tensor")
        if device is not None and str(device).split(":")[0] != "cpu":
            raise fail("to", f"device {device!r}", "fastgrad runs on the CPU: pass 'cpu'")
        return self if dtype is None else _cast(self, dtype_arg("to", dtype), "to")

    def float(self) -> "Tensor":
        return _cast(self, np.dtype(np.float32), "float")

    def double(self) -> "Tensor":
        return _cast(self, np.dtype(np.float64), "double")

    def long(self) -> "Tensor":
        return _cast(self, np.dtype(np.int64), "long")

    def int(self) -> "Tensor":
        return _cast(self, np.dtype(np.int32), "int")

    def bool(self) -> "Tensor":
        return _cast(self, np.dtype(bool), "bool")

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
                for leaf, v in tape.tensors.leaves:
                    if v < node and leaf.requires_grad:
                        _accumulate(leaf, tape.node_grad(v))
                return

    # ---------------------------------------------------------------- ops (one line each)
    def __add__(self, o):
        if _both_masks(self, o):  # bool + bool is logical or, as PyTorch's
            return self | o
        return unary(Op.ADD_SCALAR, self, o) if _scalar(o) else apply(Op.ADD, self, o)

    def __radd__(self, o):
        return unary(Op.ADD_SCALAR, self, o) if _scalar(o) else apply(Op.ADD, o, self)

    def __sub__(self, o):
        _no_mask_subtraction(self, o)
        return unary(Op.ADD_SCALAR, self, -o) if _scalar(o) else apply(Op.SUB, self, o)

    def __rsub__(self, o):
        _no_mask_subtraction(self, o)
        return unary(Op.ADD_SCALAR, -self, o) if _scalar(o) else apply(Op.SUB, o, self)

    def __mul__(self, o):
        if _both_masks(self, o):  # bool * bool is logical and
            return self & o
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
        if self.dtype == np.bool_:
            raise fail("neg", "negation of a bool tensor (a mask)",
                       "use ~mask, or cast first: mask.float()")
        return apply(Op.NEG, self)

    def __pos__(self):
        return self

    def __abs__(self):
        return apply(Op.ABS, self)

    def __gt__(self, o):
        return apply(Op.GT, self, o)._shown_as(bool)

    def __ge__(self, o):
        return apply(Op.GE, self, o)._shown_as(bool)

    def __lt__(self, o):
        return apply(Op.LT, self, o)._shown_as(bool)

    def __le__(self, o):
        return apply(Op.LE, self, o)._shown_as(bool)

    def __eq__(self, o):
        return apply(Op.EQ, self, o)._shown_as(bool)

    def __ne__(self, o):
        return apply(Op.NE, self, o)._shown_as(bool)

    # logical ops on masks (bool tensors), recorded as their 0/1 arithmetic
    def __invert__(self):
        return (1 - _mask(self, "~")).__ne__(0)

    def __and__(self, o):
        return (_mask(self, "&") * _mask(o, "&")).__ne__(0)

    __rand__ = __and__

    def __or__(self, o):
        return (_mask(self, "|") + _mask(o, "|")).__ne__(0)

    __ror__ = __or__

    def __xor__(self, o):
        return _mask(self, "^").__ne__(_mask(o, "^"))

    __rxor__ = __xor__

    logical_not, logical_and, logical_or, logical_xor = __invert__, __and__, __or__, __xor__

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

    def softplus(self, beta=1.0, threshold=20.0):
        """log(1 + exp(beta x)) / beta, and x where beta x > threshold, as PyTorch's."""
        if real("softplus", "beta", beta) == 0:
            raise fail("softplus", "beta is 0", "pass a non-zero beta (1 is the default)")
        return unary(Op.SOFTPLUS, self, beta, threshold)

    def sin(self):
        return apply(Op.SIN, self)

    def cos(self):
        return apply(Op.COS, self)

    def log1p(self):
        return apply(Op.LOG1P, self)

    def expm1(self):
        return apply(Op.EXPM1, self)

    def tan(self):
        return apply(Op.TAN, self)

    def asin(self):
        return apply(Op.ASIN, self)

    def acos(self):
        return apply(Op.ACOS, self)

    def atan(self):
        return apply(Op.ATAN, self)

    def sinh(self):
        return apply(Op.SINH, self)

    def cosh(self):
        return apply(Op.COSH, self)

    def asinh(self):
        return apply(Op.ASINH, self)

    def acosh(self):
        return apply(Op.ACOSH, self)

    def atanh(self):
        return apply(Op.ATANH, self)

    arcsin, arccos, arctan, arcsinh, arccosh, arctanh = asin, acos, atan, asinh, acosh, atanh

    def log2(self):
        return apply(Op.LOG2, self)

    def log10(self):
        return apply(Op.LOG10, self)

    def rsqrt(self):
        return apply(Op.RSQRT, self)

    def floor(self):
        return apply(Op.FLOOR, self)

    def ceil(self):
        return apply(Op.CEIL, self)

    def round(self, decimals=0):
        """Half to even, as torch.round (``decimals`` places, scaled by 10**decimals)."""
        decimals = one_int("round", "decimals", decimals, -300)
        if decimals > 300:
            raise fail("round", f"decimals={decimals}", "pass decimals <= 300")
        if decimals == 0:
            return apply(Op.ROUND, self)
        scale = 10.0 ** decimals
        return apply(Op.ROUND, self * scale) / scale

    def sign(self):
        return apply(Op.SIGN, self)

    def all(self, dim=None, keepdim=False):
        """Whether every element along ``dim`` (every dim when None) is non-zero (True)."""
        return _mask(self != 0, "all").amin(dim, keepdim) != 0

    def any(self, dim=None, keepdim=False):
        """Whether some element along ``dim`` (every dim when None) is non-zero (True)."""
        return _mask(self != 0, "any").amax(dim, keepdim) != 0

    def square(self):
        return self * self

    def isnan(self):
        return self != self

    def isinf(self):
        return self.abs() == np.inf

    def isfinite(self):
        return (self - self) == 0  # inf - inf and NaN - NaN are NaN

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

    def softmax(self, dim=-1, *, axis=None):
        return apply(Op.SOFTMAX, self, axis=_dim("softmax", dim, axis, -1))

    def log_softmax(self, dim=-1, *, axis=None):
        return apply(Op.LOG_SOFTMAX, self, axis=_dim("log_softmax", dim, axis, -1))

    # Reductions take PyTorch's dim= / keepdim= and NumPy's axis= / keepdims= alike; a tuple of
    # dims reduces each (NumPy's and PyTorch's sum/mean/amax)
    def sum(self, dim=None, keepdim=False, *, axis=None, keepdims=None):
        return _reduce(Op.SUM, self, _dim("sum", dim, axis), _keep("sum", keepdim, keepdims))

    def mean(self, dim=None, keepdim=False, *, axis=None, keepdims=None):
        return _reduce(Op.MEAN, self, _dim("mean", dim, axis), _keep("mean", keepdim, keepdims))

    def max(self, dim=None, keepdim=False, *, axis=None, keepdims=None):
        """PyTorch's ``max``: over every element, the value (ties share the gradient);
        along one ``dim``, ``(values, indices)`` (the first maximal element, which takes the
        gradient); with a tensor, the elementwise maximum. A tuple of dims gives the values
        alone (NumPy's ``max(axis=tuple)``). ``amax`` always gives the values alone."""
        return _extreme("max", self, dim, axis, keepdim, keepdims)

    def min(self, dim=None, keepdim=False, *, axis=None, keepdims=None):
        """PyTorch's ``min``: as ``max``, for the least elements."""
        return _extreme("min", self, dim, axis, keepdim, keepdims)

    def prod(self, dim=None, keepdim=False, *, axis=None, keepdims=None):
        """The product along ``dim`` (every dim when None); each element's gradient is the
        product of the others, as ``torch.prod`` (zeros included)."""
        return _reduce(Op.PROD, self, _dim("prod", dim, axis), _keep("prod", keepdim, keepdims))

    def logsumexp(self, dim=None, keepdim=False, *, axis=None, keepdims=None):
        """log(sum(exp(x))) along ``dim``, without overflow, as ``torch.logsumexp``."""
        return _reduce(Op.LOGSUMEXP, self, _dim("logsumexp", dim, axis),
                       _keep("logsumexp", keepdim, keepdims))

    def cumsum(self, dim=None, *, axis=None):
        """Running sums along ``dim``, as ``torch.cumsum`` (NumPy's ``axis=None``: of the
        flattened tensor)."""
        dim = _dim("cumsum", dim, axis)
        if dim is None:
            return apply(Op.CUMSUM, self.reshape(-1), axis=0)
        return apply(Op.CUMSUM, self, axis=dim)

    def var(self, dim=None, keepdim=False, *, correction=1, unbiased=None, ddof=None,
            axis=None, keepdims=None):
        """The variance along ``dim``, divided by n - ``correction`` (PyTorch's default 1, the
        unbiased estimate; NumPy's ``ddof=`` names the same number, default 0 in NumPy)."""
        return _variance("var", self, dim, keepdim, correction, unbiased, ddof, axis, keepdims)

    def std(self, dim=None, keepdim=False, *, correction=1, unbiased=None, ddof=None,
            axis=None, keepdims=None):
        """The square root of ``var`` (the same arguments), as ``torch.std``."""
        v = _variance("std", self, dim, keepdim, correction, unbiased, ddof, axis, keepdims)
        zero = v == 0  # sqrt's slope at 0 is inf: PyTorch's std gives 0 there, not NaN
        return where(zero, 0.0, where(zero, 1.0, v).sqrt())

    def norm(self, p=2, dim=None, keepdim=False):
        """The vector p-norm along ``dim`` (of every element when None), as
        ``torch.linalg.vector_norm``: p = 2 (default), 1, inf, -inf, 0 or any p > 0; the
        gradient at a zero vector is 0, as PyTorch's."""
        return _norm(self, p, dim, keepdim)

    def amax(self, dim=None, keepdim=False, *, axis=None, keepdims=None):
        """The largest values along ``dim`` (every dim when None); maximal elements share the
        gradient equally, as ``torch.amax``."""
        return _reduce(Op.AMAX, self, _dim("amax", dim, axis), _keep("amax", keepdim, keepdims))

    def amin(self, dim=None, keepdim=False, *, axis=None, keepdims=None):
        """The least values along ``dim``, as ``torch.amin`` (``-(-x).amax(dim)``)."""
        dim, keepdim = _dim("amin", dim, axis), _keep("amin", keepdim, keepdims)
        if _integer_constant(self):
            axes = None if dim is None else tuple(
                normalize_axis("amin", d, self.ndim) for d in int_tuple("amin", "dim", dim))
            return Tensor(np.amin(self._data, axis=axes, keepdims=keepdim))
        return -(-self).amax(dim, keepdim)

    def argmax(self, dim=None, keepdim=False, *, axis=None, keepdims=None):
        """The index of the first maximal element along ``dim`` (of the flattened tensor when
        None), int64, as ``torch.argmax``; not differentiable."""
        return _arg_extreme("argmax", self, _dim("argmax", dim, axis),
                            _keep("argmax", keepdim, keepdims))

    def argmin(self, dim=None, keepdim=False, *, axis=None, keepdims=None):
        """The index of the first least element along ``dim``, as ``torch.argmin``."""
        return _arg_extreme("argmin", self, _dim("argmin", dim, axis),
                            _keep("argmin", keepdim, keepdims))

    def reshape(self, *shape):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        return apply(Op.RESHAPE, self, shape=tuple(shape))

    def view(self, *shape):
        """``reshape`` (a tape value is never shared, so PyTorch's view and reshape agree)."""
        return self.reshape(*shape)

    def flatten(self, start_dim=0, end_dim=-1):
        """Dims ``start_dim`` to ``end_dim`` merged into one, as ``torch.flatten``."""
        if self.ndim == 0:
            return self.reshape(1)
        a, b = (normalize_axis("flatten", d, self.ndim) for d in (start_dim, end_dim))
        if a > b:
            raise fail("flatten", f"start_dim {start_dim} comes after end_dim {end_dim} for "
                       f"shape {fmt(self.shape)}", "pass start_dim <= end_dim")
        return self.reshape(self.shape[:a] + (math.prod(self.shape[a : b + 1]),)
                            + self.shape[b + 1 :])

    def squeeze(self, dim=None):
        """The dims of size 1 removed (only those of ``dim``, an int or tuple, when given)."""
        dims = range(self.ndim) if dim is None else {
            normalize_axis("squeeze", d, self.ndim) for d in int_tuple("squeeze", "dim", dim)}
        return self.reshape(tuple(s for i, s in enumerate(self.shape)
                                  if not (i in dims and s == 1)))

    def unsqueeze(self, dim):
        """A dim of size 1 inserted at ``dim`` (in [-ndim - 1, ndim])."""
        d = normalize_axis("unsqueeze", dim, self.ndim + 1)
        return self.reshape(self.shape[:d] + (1,) + self.shape[d:])

    def expand(self, *sizes):
        """A broadcast view to ``sizes`` (-1 keeps a dim's size), as ``torch.expand``."""
        sizes = int_tuple("expand", "sizes", sizes[0] if len(sizes) == 1 and isinstance(
            sizes[0], (tuple, list)) else sizes, minimum=-1)
        lead = len(sizes) - self.ndim
        if lead < 0:
            raise fail("expand", f"{len(sizes)} sizes for shape {fmt(self.shape)}",
                       f"pass at least {self.ndim} sizes")
        return broadcast_to(self, tuple(self.shape[i - lead] if s == -1 and i >= lead else s
                                        for i, s in enumerate(sizes)))

    def flip(self, *dims):
        """The order of the elements along ``dims`` reversed (a strided view)."""
        dims = int_tuple("flip", "dims", dims[0] if len(dims) == 1 and isinstance(
            dims[0], (tuple, list)) else dims)
        flipped = {normalize_axis("flip", d, self.ndim) for d in dims}
        return self[tuple(slice(None, None, -1) if i in flipped else slice(None)
                          for i in range(self.ndim))]

    def repeat(self, *repeats):
        """The tensor tiled ``repeats[i]`` times along dim i, as ``torch.repeat`` / ``np.tile``
        (``repeats`` may have more entries than dims: new leading dims)."""
        reps = int_tuple("repeat", "repeats", repeats[0] if len(repeats) == 1 and isinstance(
            repeats[0], (tuple, list)) else repeats, minimum=0)
        if len(reps) < self.ndim:
            raise fail("repeat", f"{len(reps)} repeats for shape {fmt(self.shape)}",
                       f"pass at least {self.ndim} (one per dim)")
        shape = (1,) * (len(reps) - self.ndim) + self.shape
        pairs = tuple(v for s in shape for v in (1, s))
        tiled = tuple(v for r, s in zip(reps, shape) for v in (r, s))
        return self.reshape(pairs).broadcast_to(tiled).reshape(
            tuple(r * s for r, s in zip(reps, shape)))

    def split(self, split_size_or_sections, dim=0):
        """Pieces along ``dim``: of ``split_size`` each (the last may be smaller), or of the
        listed sizes, as ``torch.split``; a tuple of views."""
        d = normalize_axis("split", dim, self.ndim)
        n = self.shape[d] if self.ndim else 1
        if isinstance(split_size_or_sections, (int, np.integer)):
            step = int(split_size_or_sections)
            if step <= 0:
                raise fail("split", f"split_size {step}", "pass a positive size")
            sizes = [min(step, n - i) for i in range(0, n, step)] or [0]
        else:
            sizes = list(int_tuple("split", "sections", split_size_or_sections, minimum=0))
            if sum(sizes) != n:
                raise fail("split", f"sections {sizes} sum to {sum(sizes)}, not the size {n} of "
                           f"dim {d}", "pass sizes that add up to the dim's size")
        starts = np.concatenate([[0], np.cumsum(sizes)]).tolist()
        pre = (slice(None),) * d
        return tuple(self[pre + (slice(a, b),)] for a, b in zip(starts[:-1], starts[1:]))

    def chunk(self, chunks, dim=0):
        """``chunks`` pieces along ``dim`` (fewer when it does not divide), as ``torch.chunk``."""
        chunks = one_int("chunk", "chunks", chunks, 1)
        n = self.shape[normalize_axis("chunk", dim, self.ndim)] if self.ndim else 1
        return self.split(max(-(-n // chunks), 1), dim)

    # method spellings of the operators, as PyTorch's
    def add(self, other, *, alpha=1):
        return self + (other if alpha == 1 else other * alpha)

    def sub(self, other, *, alpha=1):
        return self - (other if alpha == 1 else other * alpha)

    def mul(self, other):
        return self * other

    def div(self, other):
        return self / other

    def pow(self, exponent):
        return self**exponent

    def neg(self):
        return -self

    def matmul(self, other):
        return matmul(self, other)

    def transpose(self, *dims):
        """PyTorch's ``x.transpose(dim0, dim1)``: swap two dims. NumPy's spellings, which
        cannot be read as that, permute: ``x.transpose()`` reverses the dims,
        ``x.transpose((1, 0, 2))`` and ``x.transpose(1, 0, 2)`` (not two ints) are
        ``x.permute(1, 0, 2)``."""
        if len(dims) == 2 and all(not isinstance(d, (tuple, list)) for d in dims):
            return swapaxes(self, *dims)
        if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
            return transpose(self, dims[0])  # an explicit sequence, even empty, as NumPy
        return transpose(self, dims or None)

    def permute(self, *dims):
        """Axis i of the result is axis ``dims[i]`` of this tensor, as ``torch.permute``."""
        if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
            dims = dims[0]
        return transpose(self, dims)

    def swapaxes(self, axis0, axis1):
        return swapaxes(self, axis0, axis1)

    @property
    def T(self):  # noqa: N802 - NumPy's name
        return transpose(self, None)

    @property
    def mT(self):  # noqa: N802 - PyTorch's name
        """The last two dims swapped (a batch of matrices transposed), as PyTorch's ``x.mT``."""
        if self.ndim < 2:
            raise fail("mT", f"needs at least 2 dims, got shape {fmt(self.shape)}",
                       "use .T or reshape to a matrix first")
        return swapaxes(self, -2, -1)

    def broadcast_to(self, shape):
        return broadcast_to(self, shape)

    def masked_fill(self, mask, value):
        """``value`` where ``mask`` (bool, broadcast) holds, else this tensor, as PyTorch's."""
        return where(mask, value, self)

    def index_select(self, dim, index):
        """The entries ``index`` (1-d integers) along ``dim``, as ``torch.index_select``."""
        index = as_tensor(index)
        if index.ndim > 1:
            raise fail("index_select", f"index of shape {fmt(index.shape)}",
                       "pass a 1-d index (fg.take(x, idx, axis) takes any shape)")
        return take(self, index, axis=dim)

    def gather(self, dim, index):
        """``out[i][j] = x[i][index[i][j]]`` along ``dim`` (``torch.gather``,
        ``np.take_along_axis``); the gradient is added back at the gathered places. The
        index must be known when recorded (eager, or a constant inside fg.compile)."""
        idx = as_tensor(index)
        if idx._tape is not None:
            raise fail("gather", "index computed inside fg.compile or fg.scan",
                       "pass an index array, or gather eagerly")
        values = idx.numpy()
        d = normalize_axis("gather", dim, self.ndim)
        if values.dtype.kind not in "iu" or values.ndim != self.ndim:
            raise fail("gather", f"index of dtype {values.dtype} and shape "
                       f"{fmt(values.shape)} for a tensor of shape {fmt(self.shape)}",
                       "pass integers with as many dims as the tensor")
        if any(values.shape[a] > self.shape[a] for a in range(self.ndim) if a != d):
            raise fail("gather", f"index shape {fmt(values.shape)} exceeds {fmt(self.shape)} "
                       f"outside dim {d}", "keep the other dims within the tensor's")
        grid = list(np.indices(values.shape, sparse=True))
        grid[d] = checked_indices("gather", values, 0, self.shape[d],
                                  f"dim {d} of shape {fmt(self.shape)}")
        flat = np.ravel_multi_index(tuple(grid), self.shape)
        return take(self.reshape(-1), flat.reshape(values.shape), axis=0)

    def index_add(self, dim, index, source, *, alpha=1):
        """This tensor with ``alpha * source`` added at the entries ``index`` (1-d integers)
        along ``dim``, as ``torch.index_add``; repeated indices add up. ``source`` has this
        tensor's shape with ``len(index)`` along ``dim``.

        >>> import fastgrad as fg, numpy as np
        >>> fg.zeros(3).index_add(0, np.array([0, 2, 0]), fg.tensor([1.0, 2.0, 3.0])).numpy()
        array([4., 0., 2.])
        """
        source = as_tensor(source)
        if alpha != 1:
            source = source * alpha
        return apply(Op.INDEX_ADD, self, as_tensor(index), source, axis=dim)

    def scatter_add(self, dim, index, src):
        """``out[index[i][j]][j] += src[i][j]`` along ``dim`` (``torch.scatter_add``) on a copy
        of this tensor; repeated places add up, and ``src``'s gradient is read back from them.
        ``index`` has this tensor's number of dims, at most ``src``'s sizes, and must be known
        when recorded (eager, or a constant inside fg.compile).

        >>> import fastgrad as fg, numpy as np
        >>> x = fg.zeros(2, 3)
        >>> x.scatter_add(0, np.array([[1, 0, 1]]), fg.ones(1, 3)).numpy()
        array([[0., 1., 0.],
               [1., 0., 1.]])
        """
        idx, src = as_tensor(index), as_tensor(src)
        if idx._tape is not None:
            raise fail("scatter_add", "index computed inside fg.compile or fg.scan",
                       "pass an index array, or use index_add with a 1-d index")
        values = idx.numpy()
        d = normalize_axis("scatter_add", dim, self.ndim)
        if values.dtype.kind not in "iu" or values.ndim != self.ndim or src.ndim != self.ndim:
            raise fail("scatter_add", f"index of dtype {values.dtype} and shape "
                       f"{fmt(values.shape)}, src of shape {fmt(src.shape)}, for a tensor of "
                       f"shape {fmt(self.shape)}", "pass integers and a source with as many "
                       "dims as the tensor")
        if any(values.shape[a] > src.shape[a] or (a != d and values.shape[a] > self.shape[a])
               for a in range(self.ndim)):
            raise fail("scatter_add", f"index shape {fmt(values.shape)} exceeds src "
                       f"{fmt(src.shape)} or, outside dim {d}, the tensor's {fmt(self.shape)}",
                       "keep the index within both")
        grid = list(np.indices(values.shape, sparse=True))
        grid[d] = checked_indices("scatter_add", values, 0, self.shape[d],
                                  f"dim {d} of shape {fmt(self.shape)}")
        flat = np.ravel_multi_index(tuple(grid), self.shape).reshape(-1)
        if src.shape != values.shape:  # the leading part of src that the index covers
            src = src[tuple(slice(0, n) for n in values.shape)]
        added = self.reshape(-1).index_add(0, flat, src.reshape(-1))
        return added.reshape(self.shape)

    def __getitem__(self, key):
        return getitem(self, key)


# ---------------------------------------------------------------- NumPy's protocols
# ufunc -> (method, reflected method for a tensor on the right)
_UFUNCS = {
    np.add: ("__add__", "__radd__"), np.subtract: ("__sub__", "__rsub__"),
    np.multiply: ("__mul__", "__rmul__"), np.true_divide: ("__truediv__", "__rtruediv__"),
    np.power: ("__pow__", "__rpow__"), np.matmul: ("__matmul__", "__rmatmul__"),
    np.maximum: ("maximum", "maximum"), np.minimum: ("minimum", "minimum"),
    np.greater: ("__gt__", "__lt__"), np.greater_equal: ("__ge__", "__le__"),
    np.less: ("__lt__", "__gt__"), np.less_equal: ("__le__", "__ge__"),
    np.equal: ("__eq__", "__eq__"), np.not_equal: ("__ne__", "__ne__"),
    np.logical_and: ("__and__", "__and__"), np.logical_or: ("__or__", "__or__"),
    np.logical_xor: ("__xor__", "__xor__"),
    np.negative: ("__neg__",), np.absolute: ("abs",), np.exp: ("exp",), np.log: ("log",),
    np.sqrt: ("sqrt",), np.tanh: ("tanh",), np.sin: ("sin",), np.cos: ("cos",),
    np.log1p: ("log1p",), np.expm1: ("expm1",), np.logical_not: ("__invert__",),
    np.positive: ("__pos__",), np.tan: ("tan",), np.arcsin: ("asin",), np.arccos: ("acos",),
    np.arctan: ("atan",), np.sinh: ("sinh",), np.cosh: ("cosh",), np.arcsinh: ("asinh",),
    np.arccosh: ("acosh",), np.arctanh: ("atanh",), np.log2: ("log2",), np.log10: ("log10",),
    np.floor: ("floor",), np.ceil: ("ceil",), np.rint: ("round",), np.sign: ("sign",),
    np.isnan: ("isnan",), np.isinf: ("isinf",), np.isfinite: ("isfinite",),
    np.square: ("square",),
}
# Not differentiable and not recorded: answered from the values eagerly (their gradient is
# zero, so nothing is cut), refused inside fg.compile or fg.scan (the first call's values).
_VALUE_QUERIES = {np.signbit, np.isclose, np.allclose, np.array_equal, np.shape, np.ndim,
                  np.size, np.result_type}


def _leave_graph_hint(name):
    return (f"use fastgrad's op (x.{name}(...) or fg.{name}(...)) where it has one, or leave "
            "the graph explicitly with x.numpy()")


def _numpy_ufunc(ufunc, method, inputs, kwargs):
    name = f"np.{ufunc.__name__}"
    if ufunc in _VALUE_QUERIES and method == "__call__" and not kwargs:
        return _value_query(name, ufunc, inputs, {})
    spec = _UFUNCS.get(ufunc)
    if spec is None or method != "__call__" or kwargs:
        what = (f"with {sorted(kwargs)}" if kwargs and spec else
                f"as {method}" if spec else "is not an op fastgrad records")
        raise fail(name, f"{what} on a tensor (the result would be cut from the graph)",
                   _leave_graph_hint(ufunc.__name__))
    if len(inputs) == 1:
        return getattr(as_tensor(inputs[0]), spec[0])()
    a, b = inputs
    if isinstance(a, Tensor):
        return getattr(a, spec[0])(b)
    return getattr(b, spec[1])(a)


def _value_query(name, fn, args, kwargs):
    if is_replayed():
        raise fail(name, "inside fg.compile or fg.scan would read the first call's values",
                   "compute it on the compiled function's result, outside")
    plain = [a.numpy() if isinstance(a, Tensor) else a for a in args]
    return fn(*plain, **kwargs)


def _np_reduction(method):
    def call(a, axis=None, *rest, keepdims=False, **kwargs):
        if rest or kwargs:
            raise fail(f"np.{method}", f"arguments {sorted(kwargs) or list(rest)} on a tensor",
                       f"use x.{method}(axis=..., keepdims=...)")
        return getattr(as_tensor(a), method)(axis=axis, keepdims=keepdims)

    return call


def _np_arg(method):
    def call(a, axis=None, *, keepdims=False):
        return getattr(as_tensor(a), method)(axis=axis, keepdims=keepdims)

    return call


_ARRAY_FUNCTIONS = {
    np.sum: _np_reduction("sum"), np.mean: _np_reduction("mean"),
    np.prod: _np_reduction("prod"),
    np.var: lambda a, axis=None, ddof=0, keepdims=False: as_tensor(a).var(
        axis=axis, ddof=ddof, keepdims=keepdims),
    np.std: lambda a, axis=None, ddof=0, keepdims=False: as_tensor(a).std(
        axis=axis, ddof=ddof, keepdims=keepdims),
    np.cumsum: lambda a, axis=None: as_tensor(a).cumsum(axis=axis),
    np.max: _np_reduction("amax"), np.amax: _np_reduction("amax"),
    np.min: _np_reduction("amin"), np.amin: _np_reduction("amin"),
    np.argmax: _np_arg("argmax"), np.argmin: _np_arg("argmin"),
    np.reshape: lambda a, shape=None, order="C": as_tensor(a).reshape(shape) if order == "C"
    else _np_unsupported("np.reshape", f"order={order!r}", 'order="C" (the default)'),
    np.transpose: lambda a, axes=None: transpose(a, axes),
    np.swapaxes: lambda a, axis1, axis2: swapaxes(a, axis1, axis2),
    np.concatenate: lambda arrays, axis=0: concatenate(arrays, axis=axis) if axis is not None
    else concatenate([as_tensor(a).reshape(-1) for a in _tensor_list("concat", arrays)]),
    np.stack: lambda arrays, axis=0: stack(arrays, axis=axis),
    np.where: lambda cond, *ab: where(cond, *ab) if len(ab) == 2 else _np_where_one(),
    np.clip: lambda a, a_min=None, a_max=None: as_tensor(a).clip(a_min, a_max),
    np.broadcast_to: lambda a, shape: broadcast_to(a, shape),
    np.take: lambda a, indices, axis=None: take(a, indices, 0 if axis is None else axis)
    if axis is not None or as_tensor(a).ndim == 1 else take(as_tensor(a).reshape(-1), indices),
    np.matmul: lambda a, b: matmul(a, b),
    np.round: lambda a, decimals=0: as_tensor(a).round(decimals),
    np.around: lambda a, decimals=0: as_tensor(a).round(decimals),
    np.squeeze: lambda a, axis=None: as_tensor(a).squeeze(axis),
    np.expand_dims: lambda a, axis: as_tensor(a).unsqueeze(axis),
    np.flip: lambda a, axis=None: as_tensor(a).flip(
        tuple(range(as_tensor(a).ndim)) if axis is None else axis),
    np.tile: lambda a, reps: _np_tile(as_tensor(a), reps),
    np.dot: lambda a, b: matmul(a, b) if max(as_tensor(a).ndim, as_tensor(b).ndim) <= 2
    else _np_unsupported("np.dot", "operands of more than 2 dims", "fg.matmul (np.matmul's "
                         "meaning) or np.tensordot outside the graph"),
}


def _np_tile(a, reps):
    reps = (reps,) if isinstance(reps, (int, np.integer)) else tuple(reps)
    if len(reps) < a.ndim:  # np.tile pads reps with leading ones
        reps = (1,) * (a.ndim - len(reps)) + reps
    return a.repeat(*reps)


def _np_unsupported(name, what, fix):
    raise fail(name, f"{what} on a tensor", f"pass {fix}")


def _np_where_one():
    raise fail("np.where", "with one argument gives data-dependent shapes",
               "use np.nonzero(x.numpy()) outside the graph")


def _numpy_function(func, args, kwargs):
    name = f"np.{func.__name__}"
    impl = _ARRAY_FUNCTIONS.get(func)
    if impl is not None:
        try:
            return impl(*args, **kwargs)
        except TypeError as e:
            if isinstance(e, FastgradError):
                raise
            raise fail(name, f"arguments fastgrad does not take ({e})",
                       _leave_graph_hint(func.__name__)) from None
    if func in _VALUE_QUERIES:
        return _value_query(name, func, args, kwargs)
    raise fail(name, "has no fastgrad op: applied to a tensor it would cut the result from "
               "the graph", _leave_graph_hint(func.__name__))


class TensorSize(int):
    """``x.size``: the element count, an int, which also answers PyTorch's calls: ``x.size()``
    is the shape and ``x.size(dim)`` one size.

    >>> import fastgrad as fg
    >>> x = fg.zeros(2, 3)
    >>> x.size, x.size(), x.size(-1)
    (6, (2, 3), 3)
    """

    def __new__(cls, shape):
        size = super().__new__(cls, int(np.prod(shape, dtype=np.int64)))
        size.shape = tuple(shape)
        return size

    def __call__(self, dim=None):
        if dim is None:
            return self.shape
        if not self.shape:
            raise fail("size", "a 0-d tensor has no dims", "call x.size() for its shape ()")
        return self.shape[normalize_axis("size", dim, len(self.shape))]


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
    while leaf._cast_of is not None:  # a cast's gradient is its source's, cast back
        leaf = leaf._cast_of
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
    if isinstance(data, ValuesIndices):
        raise fail("tensor", "got the (values, indices) that max or min along a dim returns",
                   "use .values or .indices (or x.amax(dim) for the values alone)")
    requires_grad = flag("tensor", "requires_grad", requires_grad)
    if isinstance(data, (list, tuple)) and not requires_grad and _holds_graph(data):
        return _stack_nested(data, dtype)  # recorded: gradients reach the tensors inside
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


def _holds_graph(data, depth=0) -> bool:
    """Whether nested lists ``data`` hold a tensor that is recorded or requires grad."""
    for e in data:
        if isinstance(e, Tensor):
            if e._tape is not None or e.requires_grad or is_tracing():
                return True
        elif isinstance(e, (list, tuple)) and depth < 32 and _holds_graph(e, depth + 1):
            return True
    return False


def _stack_nested(data, dtype):
    """``fg.tensor`` of nested lists holding tensors: recorded stacks of the elements (numbers
    taking the tensors' float dtype), so that gradients flow back into them."""
    ref = dtype_arg("tensor", dtype) if dtype is not None else None

    def first_float(d):
        for e in d:
            if isinstance(e, Tensor):
                return float_dtype_of(e)
            if isinstance(e, (list, tuple)):
                found = first_float(e)
                if found is not None:
                    return found
        return None

    ref = ref or first_float(data) or get_default_dtype()

    def build(d):
        if isinstance(d, Tensor):
            return d if d.dtype == ref or d._tape is not None else d.astype(ref)
        if isinstance(d, (list, tuple)):
            if not d:
                raise fail("tensor", "an empty list among tensors", "pass rectangular data")
            return stack([build(e) for e in d])
        return tensor(d, dtype=ref)

    return build(data)


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


def unary(op, x, c0=0.0, c1=0.0) -> Tensor:
    """Record an elementwise op with scalar constants (x + 2, x ** 3, leaky_relu(x, 0.1))."""
    if op in _INTEGER_SCALAR_OPS and isinstance(x, Tensor) and _integer_constant(x) and \
            x.dtype.kind in "iu" and isinstance(c0, (int, np.integer)) and \
            not isinstance(c0, (bool, np.bool_)) and (op != Op.POW_SCALAR or c0 >= 0):
        # an integer tensor and an int stay integers, as PyTorch's (labels - 1, idx + 1)
        return Tensor(_INTEGER_SCALAR_OPS[op](x._data, np.int64(c0)).astype(
            np.result_type(x.dtype, np.int64)))
    return apply(op, x, c0=c0, c1=c1)  # the shape rule checks they are real numbers


_INTEGER_SCALAR_OPS = {Op.ADD_SCALAR: np.add, Op.MUL_SCALAR: np.multiply,
                       Op.POW_SCALAR: np.power}


def apply(op: Op, *operands, **attrs) -> Tensor:
    """Validate operands with the op's shape rule, record one row, return the output tensor."""
    check_attributes(op, attrs)
    ts = _operands(operands)
    recorded = record(op, ts, attrs)
    if isinstance(recorded, np.ndarray):  # integer and bool constants: computed, not recorded
        return Tensor(recorded)
    tape, out, need, folding = recorded
    result = Tensor._on_tape(tape, out, need)
    if folding:
        return Tensor(np.array(result.numpy()))
    return result


def _operands(operands) -> list:
    """An op's operands as tensors, Python numbers taking the float dtype of the tensors (or
    float arrays) beside them, as PyTorch's scalars do: ``x32 > 0.5`` compares in float32."""
    ref = None
    for o in operands:
        if isinstance(o, Tensor):
            ref = float_dtype_of(o)
        elif isinstance(o, np.ndarray) and o.dtype in FLOAT_DTYPES:
            ref = o.dtype
        if ref is not None:
            break
    return [tensor(o, dtype=ref) if ref is not None and isinstance(o, (int, float))
            else as_tensor(o) for o in operands]


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


def _dim(name, dim, axis, default=None):
    """A reduction's dim, given as PyTorch's ``dim`` or NumPy's ``axis`` (not both)."""
    if axis is None:
        return dim
    if dim is not default and not (isinstance(dim, (int, np.integer)) and dim == default):
        raise fail(name, f"got both dim={dim!r} and axis={axis!r}", "pass one of them")
    return axis


def _keep(name, keepdim, keepdims):
    """A reduction's keepdim, given as PyTorch's ``keepdim`` or NumPy's ``keepdims``."""
    if keepdims is None:
        return flag(name, "keepdim", keepdim)
    if keepdim is not False:
        raise fail(name, f"got both keepdim={keepdim!r} and keepdims={keepdims!r}",
                   "pass one of them")
    return flag(name, "keepdims", keepdims)


class ValuesIndices:
    """What ``max`` and ``min`` along a dim return, as PyTorch's ``torch.return_types.max``:
    ``values`` (a tensor; the gradient goes to the element ``indices`` names) and ``indices``
    (int64, computed when first read); unpacks as ``values, indices = x.max(1)``."""

    __slots__ = ("values", "_indices", "_make")

    def __init__(self, values, make_indices):
        self.values, self._indices, self._make = values, None, make_indices

    @property
    def indices(self):
        if self._indices is None:
            self._indices = self._make()
        return self._indices

    def __getitem__(self, i):
        return (self.values, self.indices)[i]

    def __iter__(self):
        return iter((self.values, self.indices))

    def __len__(self):
        return 2

    def __repr__(self):
        return f"ValuesIndices(values={self.values!r}, indices={self.indices!r})"

    def __getattr__(self, name):  # x.max(1).sum(): a mistake PyTorch also refuses
        if name.startswith("__"):
            raise AttributeError(name)
        raise fail("max", f"(values, indices) has no attribute {name!r}",
                   "use .values (or x.amax(dim) for the values alone)")

    def _refuse(self, *other):
        raise fail("max", "arithmetic on the (values, indices) that max or min along a dim "
                   "returns", "use .values (or x.amax(dim) for the values alone)")

    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __truediv__ = _refuse
    __rtruediv__ = __pow__ = __neg__ = __matmul__ = __rmatmul__ = _refuse
    __lt__ = __le__ = __gt__ = __ge__ = _refuse
    __array_ufunc__ = None  # NumPy hands arithmetic with arrays to the methods above


def _extreme(name, x, dim, axis, keepdim, keepdims):
    """``x.max(...)`` / ``x.min(...)`` with PyTorch's meanings (Tensor.max)."""
    dim, keepdim = _dim(name, dim, axis), _keep(name, keepdim, keepdims)
    if isinstance(dim, (Tensor, np.ndarray)):  # torch.max(a, b): elementwise
        return x.maximum(dim) if name == "max" else x.minimum(dim)
    if dim is None or isinstance(dim, (tuple, list)):
        return x.amax(dim, keepdim) if name == "max" else x.amin(dim, keepdim)
    x = as_tensor(x)
    arg = lambda: _arg_extreme("arg" + name, x, dim, keepdim)  # noqa: E731
    if _integer_constant(x):  # NumPy's own, exact for every integer and bool
        ax = normalize_axis(name, dim, x.ndim)
        pick = np.max if name == "max" else np.min
        return ValuesIndices(Tensor(pick(x._data, axis=ax, keepdims=keepdim)), arg)
    signed = x if name == "max" else -x
    values = apply(Op.MAX, signed, axis=dim, keepdims=keepdim)
    result = ValuesIndices(values if name == "max" else -values, arg)
    if not is_replayed():
        result.indices  # noqa: B018 - of the values now, as PyTorch computes them with them
    return result


def _integer_constant(x) -> bool:
    """An integer or bool tensor holding its own values (no tape), outside fg.compile."""
    return x._tape is None and x.dtype.kind in "iub" and not is_replayed()


def _arg_extreme(name, x, dim, keepdim):
    """The first maximal (argmax) or least (argmin) element's index along ``dim`` (of the
    flattened tensor when None), NaN counting as the extreme, as PyTorch: an int64 constant
    eagerly; inside fg.compile or fg.scan, recorded (as exact floats on the tape, shown as
    int64) so that it follows each call's values."""
    x = as_tensor(x)
    flat = x.reshape(-1) if dim is None else x
    ax = 0 if dim is None else normalize_axis(name, dim, x.ndim)
    n = flat.shape[ax] if flat.ndim else 1
    if n == 0:
        raise fail(name, f"cannot take the {name} over an empty axis of shape {fmt(x.shape)}",
                   "reduce over a non-empty axis")
    if not is_replayed():
        values = x.numpy()
        idx = (np.argmax if name == "argmax" else np.argmin)(values, axis=dim, keepdims=keepdim)
        return Tensor(np.asarray(idx, np.int64))
    if n >= 2**24:
        raise fail(name, f"an axis of {n} elements inside fg.compile or fg.scan",
                   "take the index outside the compiled function")
    signed = flat if name == "argmax" else -flat
    top = apply(Op.MAX, signed, axis=ax, keepdims=True)
    at = apply(Op.EQ, signed, top) + apply(Op.NE, signed, signed)  # 0/1; NaN is the extreme
    shape = [1] * max(flat.ndim, 1)
    shape[ax] = n
    rank = Tensor(np.arange(n, 0, -1).reshape(shape))  # n - k: the first hit ranks highest
    first = n - apply(Op.AMAX, at * rank, axis=ax, keepdims=keepdim and dim is not None)
    if dim is None and keepdim:
        first = first.reshape((1,) * x.ndim)
    return first._shown_as(np.int64)


def _variance(name, x, dim, keepdim, correction, unbiased, ddof, axis, keepdims):
    dim, keepdim = _dim(name, dim, axis), _keep(name, keepdim, keepdims)
    if unbiased is not None:
        correction = 1 if flag(name, "unbiased", unbiased) else 0
    if ddof is not None:
        correction = ddof
    correction = real(name, "correction", correction)
    x = as_tensor(x)
    dims = range(x.ndim) if dim is None else [
        normalize_axis(name, d, x.ndim) for d in int_tuple(name, "dim", dim)]
    n = math.prod(x.shape[d] for d in dims) if x.ndim else 1
    centred = x - x.mean(dim, keepdim=True)
    return (centred * centred).sum(dim, keepdim) / max(n - correction, 0)


def _norm(x, p, dim, keepdim):
    x = as_tensor(x)
    p = real("norm", "p", p)
    if p == 2:  # sqrt(s), written so that a zero vector has a zero gradient (not 0 * inf)
        s = (x * x).sum(dim, keepdim)
        zero = s == 0
        return where(zero, 0.0, where(zero, 1.0, s).sqrt())
    a = x.abs()
    if p == 1:
        return a.sum(dim, keepdim)
    if p == np.inf:
        return a.amax(dim, keepdim)
    if p == -np.inf:
        return a.amin(dim, keepdim)
    if p == 0:  # how many are non-zero, in x's float dtype
        ones, zeros = Tensor(np.ones(a.shape, a.dtype)), Tensor(np.zeros(a.shape, a.dtype))
        return where(a != 0, ones, zeros).sum(dim, keepdim)
    if p < 0 or not math.isfinite(p):
        raise fail("norm", f"p={p}", "pass p = 2, 1, inf, -inf, 0 or any p > 0")
    s = (a**p).sum(dim, keepdim)
    zero = s == 0
    return where(zero, 0.0, where(zero, 1.0, s) ** (1.0 / p))


def _cast(x, dtype, name):
    """``x`` as ``dtype`` (Tensor.astype): differentiable for a leaf that requires grad."""
    if dtype == x.dtype:
        return x
    if x._as is not None and x._tape is not None and dtype == x.tape.dtype:
        return Tensor._on_tape(x.tape, x.node, False)  # a mask's floats, as they are
    inside = is_replayed()
    if x._tape is not None:
        if x.requires_grad or inside:
            raise fail(name, f"cannot cast a recorded {x.dtype} value of shape "
                       f"{fmt(x.shape)} to {dtype}" + (" inside fg.compile or fg.scan"
                                                       if inside else ""),
                       "a tape holds one float dtype: cast the inputs and parameters before "
                       "the computation (model.astype(...)), or detach() first")
        return Tensor(x.numpy().astype(dtype))  # eager and without grad: a constant
    if x.requires_grad and dtype in FLOAT_DTYPES:
        if inside:
            raise fail(name, f"cannot cast a leaf that requires grad to {dtype} inside "
                       "fg.compile or fg.scan", "cast the parameters before: model.astype(...)")
        out = Tensor(x._data.astype(dtype), requires_grad=True)
        out._cast_of = x  # backward accumulates into x (_accumulate)
        return out
    return Tensor(x._data.astype(dtype))


def _both_masks(a, b) -> bool:
    return isinstance(a, Tensor) and a.dtype == np.bool_ and (
        isinstance(b, (bool, np.bool_)) or isinstance(b, Tensor) and b.dtype == np.bool_)


def _no_mask_subtraction(a, b):
    if _both_masks(a, b):
        raise fail("sub", "subtraction of bool tensors (masks)",
                   "use ^ or ~ (logical ops), or cast first: mask.float()")


def _mask(t, op):
    """A bool operand of ``& | ^ ~`` as 0/1 numbers (floats on a tape, int64 constants)."""
    if isinstance(t, (bool, np.bool_)):
        return Tensor(np.int64(t))
    t = as_tensor(t)
    if t.dtype != np.bool_:
        raise fail(op, f"takes bool tensors (masks), got {t.dtype} of shape {fmt(t.shape)}",
                   "compare first (x > 0), or cast with .bool()")
    if t._tape is not None:
        return Tensor._on_tape(t.tape, t.node, False)
    return Tensor(t._data.astype(np.int64))


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


def transpose(x, axes=None, dim1=None) -> Tensor:
    """``fg.transpose(x, dim0, dim1)`` swaps two dims, as ``torch.transpose``; given one
    sequence ``axes`` (or None), it permutes as ``np.transpose``: axis i of the result is axis
    ``axes[i]`` of x, and None reverses them, so a matrix (m, n) becomes (n, m). The result is
    a strided view of ``x``; ``x.transpose(...)``, ``x.permute(...)`` and ``x.T`` are this op.

    >>> import fastgrad as fg, numpy as np
    >>> x = fg.tensor(np.arange(6.0).reshape(2, 3))
    >>> fg.transpose(x).numpy()
    array([[0., 3.],
           [1., 4.],
           [2., 5.]])
    >>> fg.transpose(fg.zeros(2, 3, 4), (1, 0, 2)).shape
    (3, 2, 4)
    """
    if dim1 is not None:
        return swapaxes(x, axes, dim1)
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


def swapaxes(x, dim0, dim1) -> Tensor:
    """``x`` with dims ``dim0`` and ``dim1`` swapped, as ``torch.transpose(x, dim0, dim1)``.

    >>> import fastgrad as fg
    >>> fg.swapaxes(fg.zeros(2, 3, 4), 1, 2).shape
    (2, 4, 3)
    """
    x = as_tensor(x)
    nd = x.ndim
    axes = list(range(nd))
    if nd == 0:  # PyTorch allows swapping dim 0 (or -1) of a 0-d tensor with itself
        for d in (dim0, dim1):
            normalize_axis("transpose", d, 0)
        return transpose(x, ())
    a, b = (normalize_axis("transpose", d, nd) for d in (dim0, dim1))
    axes[a], axes[b] = axes[b], axes[a]
    return transpose(x, axes)


def permute(x, dims) -> Tensor:
    """Axis i of the result is axis ``dims[i]`` of ``x``, as ``torch.permute``."""
    return transpose(x, dims)


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

    x = as_tensor(x)
    shape = int_tuple("broadcast_to", "shape", shape, minimum=0)
    if math.prod(shape) >= 2**62:
        raise fail("broadcast_to", f"shape {fmt(shape)} has more elements than fit in memory",
                   "broadcast to a smaller shape")
    if broadcast_shapes("broadcast_to", x.shape, shape) != shape:
        raise fail("broadcast_to", f"cannot broadcast {fmt(x.shape)} to {fmt(shape)}",
                   "the target must keep every non-1 size of the input")
    return apply(Op.STRIDED, x, out_shape=shape, base=0, strides=tuple(broadcast_strides(x.shape,
                                                                                          shape)))


def _contig(shape):

    return contiguous_strides(shape)


def getitem(x, key) -> Tensor:
    """Basic indexing (ints, slices, None, ...) as a strided view; one integer array among
    them gathers along its axis (``x[:, idx]``, as NumPy and PyTorch), several as NumPy's
    advanced indexing (``x[i0, :, i1]``); a boolean mask selects eagerly (``x[mask]``: its
    shape depends on the values, so not inside fg.compile)."""
    key = key if isinstance(key, tuple) else (key,)
    arrays = [i for i, k in enumerate(key) if isinstance(k, (Tensor, np.ndarray, list))]
    if len(arrays) > 1:
        if any(isinstance(key[i], Tensor) and key[i]._tape is not None for i in arrays):
            raise fail("getitem", "several index arrays, one computed inside fg.compile or "
                       "fg.scan, are not supported", "index one axis at a time, e.g. "
                       "x[idx0][:, idx1], or use fg.take")
        if len(arrays) == len(key):
            return _index_arrays(x, key)
        return _index_mixed(x, key)
    if arrays:
        i = arrays[0]
        k = key[i]
        if isinstance(k, list):
            k = np.asarray(k) if k else np.zeros(0, np.int64)
        idx = as_tensor(k)
        if idx.dtype.kind == "b":
            if len(key) != 1:
                raise fail("getitem", "a boolean mask among other indices",
                           "apply the mask alone: x[mask]")
            return _masked_select(x, idx)
        rest = key[:i] + (slice(None),) + key[i + 1 :]
        base = getitem(x, rest) if len(key) > 1 else as_tensor(x)
        # the gathered axis: where the array sits, counted in the output of the basic index
        before = key[:i]
        n_real = sum(1 for k in key if k is not None and k is not Ellipsis)
        axis = sum(1 for k in before if k is None or isinstance(k, slice)) + (
            as_tensor(x).ndim - n_real if any(k is Ellipsis for k in before) else 0)
        return apply(Op.GATHER, base, idx, axis=axis)
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


def _index_arrays(x, key) -> Tensor:
    """``x[i0, i1, ...]`` with only integer arrays (broadcast together), as NumPy's and
    PyTorch's advanced indexing: one gather from x's leading dims, flattened."""
    x = as_tensor(x)
    arrays = [np.asarray(k.numpy() if isinstance(k, Tensor) else k) for k in key]
    if any(a.dtype.kind not in "iu" for a in arrays):
        raise fail("getitem", "index arrays must hold integers", "pass integer arrays")
    if len(arrays) > x.ndim:
        raise fail("getitem", f"{len(arrays)} index arrays for shape {fmt(x.shape)}",
                   "use at most one per dim")
    try:
        arrays = np.broadcast_arrays(*arrays)
    except ValueError:
        raise fail("getitem", "index arrays of shapes " + ", ".join(fmt(a.shape) for a in
                   arrays) + " do not broadcast", "pass index arrays of one shape") from None
    lead = x.shape[: len(arrays)]
    checked = [checked_indices("getitem", a, -n, n, f"dim {d} of shape {fmt(x.shape)}")
               for d, (a, n) in enumerate(zip(arrays, lead))]
    flat = np.ravel_multi_index(tuple(checked), lead) if checked[0].size else \
        np.zeros(checked[0].shape, np.int64)
    rows = x.reshape((math.prod(lead),) + x.shape[len(arrays) :])
    return apply(Op.GATHER, rows, flat, axis=0)


def _index_mixed(x, key) -> Tensor:
    """``x[i0, :, i1]``: index arrays (and masks) among ints, slices, None and ``...``, with
    NumPy's and PyTorch's rules (the broadcast index dims replace the indexed ones in place
    when the arrays are adjacent, else they come first): the flat positions are NumPy's own
    indexing of each axis's coordinate (a broadcast view, nothing of x's size is made), then
    one gather; the gradient is added back at the positions."""
    x = as_tensor(x)
    ints = [isinstance(k, (int, np.integer)) and not isinstance(k, (bool, np.bool_)) for k in key]
    if any(ints):  # PyTorch selects with the ints first (NumPy would broadcast them with the
        # arrays, which moves the indexed dims to the front when a slice separates them)
        arrays = [isinstance(k, (Tensor, np.ndarray, list)) for k in key]
        base = getitem(x, tuple(slice(None) if a else k for k, a in zip(key, arrays)))
        rest = tuple(k if a or k is Ellipsis else slice(None)
                     for k, a, i in zip(key, arrays, ints) if not i)
        return getitem(base, rest)
    plain = tuple(np.asarray(k.numpy() if isinstance(k, Tensor) else k)
                  if isinstance(k, (Tensor, np.ndarray, list)) else k for k in key)
    for k in plain:
        if isinstance(k, np.ndarray) and k.dtype.kind not in "iub":
            raise fail("getitem", f"an index array of dtype {k.dtype}",
                       "pass integer (or boolean) index arrays")
    cs = _contig(x.shape)
    positions = None
    try:
        for d, n in enumerate(x.shape):
            coord = np.arange(n, dtype=np.int64).reshape((1,) * d + (n,) + (1,) * (x.ndim - d - 1))
            part = np.broadcast_to(coord, x.shape)[plain] * cs[d]
            positions = part if positions is None else positions + part
    except IndexError as e:
        raise fail("getitem", f"{e} (indexing a tensor of shape {fmt(x.shape)})",
                   "use indices within each axis, one per axis at most") from None
    return apply(Op.GATHER, x.reshape(-1), np.ascontiguousarray(positions), axis=0)


def _masked_select(x, mask) -> Tensor:
    """``x[mask]`` for a bool ``mask`` of x's shape or of its leading dims: the selected
    elements (or rows) in order, as one gather; eager only."""
    x = as_tensor(x)
    if is_replayed():
        raise fail("getitem", "a boolean mask inside fg.compile or fg.scan gives a shape that "
                   "depends on each call's values", "use fg.where(mask, x, 0) or "
                   "x.masked_fill(~mask, 0)")
    m = mask.numpy()
    if m.shape != x.shape[: m.ndim]:
        raise fail("getitem", f"mask of shape {fmt(m.shape)} for shape {fmt(x.shape)}",
                   "pass a mask of the tensor's shape or of its leading dims")
    rows = x.reshape((math.prod(m.shape),) + x.shape[m.ndim :])
    return apply(Op.GATHER, rows, np.flatnonzero(m), axis=0)


def take(x, indices, axis=0) -> Tensor:
    """Gather along ``axis`` (np.take): out shape = x.shape[:axis] + idx.shape + x.shape[axis+1:]."""
    return apply(Op.GATHER, x, indices, axis=axis)


def concatenate(tensors, dim=0, *, axis=None) -> Tensor:
    """Join tensors along an existing ``dim`` (or NumPy's ``axis=``), as torch.cat and
    np.concatenate; ``fg.cat`` and ``fg.concat`` are this function.

    Shapes must agree except along ``axis``, where the sizes add: (2, 3) and (4, 3) on axis 0
    give (6, 3). The gradient is split back into the inputs' slices.

    >>> import fastgrad as fg
    >>> fg.concatenate([fg.ones(2, 3), fg.zeros(4, 3)]).shape
    (6, 3)
    >>> fg.concat([fg.tensor([1.0]), fg.tensor([2.0, 3.0])]).numpy()
    array([1., 2., 3.])
    """
    tensors = _tensor_list("concat", tensors)
    return apply(Op.CONCAT, *tensors, axis=_dim("concat", dim, axis, 0))


def stack(tensors, dim=0, *, axis=None) -> Tensor:
    """Join k tensors of one shape along a new ``dim`` (or ``axis=``), as torch.stack and
    np.stack.

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
    axis = _dim("stack", dim, axis, 0)
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
    kind = INDEX_NODE if array.dtype.kind in "iu" else FLOAT_NODE
    node = tape.add_input(array if kind == INDEX_NODE else array.astype(tape.dtype, copy=False),
                          kind=kind, label=label)
    return Tensor._on_tape(tape, node, False)
