"""THE op table: the only list of fastgrad's primitive ops.

Each row (an ``OpDef``) says, for one op code: its arity, whether it is differentiable, the shape
rule run at record time (which validates the operands and computes the integer/float attributes
the kernels read), the NumPy reference of its forward (and, for elementwise ops, its local
gradient), and the test inputs it is checked on. ``Tensor`` methods, the reference interpreter
and the test suite are all derived from or checked against this table.

Adding an op: add its code to ``opcodes.Op``, a row here, its forward/VJP in one kernel file, and
one front-end line in tensor.py. (docs/adding-an-op.md walks through one.)

Shape rules return ``(out_shape, iparams, fparams)``. Strides and offsets in iparams are in
elements and relative to each operand's own slot, so tapes can be concatenated and replayed at
new inputs without rewriting them.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .errors import fail, flag  # noqa: F401 - flag: re-exported for the front end
from .opcodes import BINARY, CONTROL, LOSS, MATMUL, REDUCE, SHAPE, UNARY, WHERE, Op

MAX_NDIM = 32


# ----------------------------------------------------------------------------- shape helpers
def fmt(shape) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def contiguous_strides(shape):
    strides, acc = [], 1
    for s in reversed(shape):
        strides.append(acc)
        acc *= s
    return list(reversed(strides))


def broadcast_shapes(name, *shapes):
    nd = max(len(s) for s in shapes)
    out = []
    for d in range(nd):
        sizes = {s[d - nd + len(s)] for s in shapes if d - nd + len(s) >= 0} - {1}
        if len(sizes) > 1:
            raise fail(
                name,
                "shapes " + " and ".join(fmt(s) for s in shapes) + " do not broadcast",
                "make the sizes equal or 1 in each trailing axis (reshape or add an axis with "
                "x.reshape(...) / x[:, None])",
            )
        out.append(sizes.pop() if sizes else 1)
    return tuple(out)


def broadcast_strides(shape, out):
    """Element strides that read ``shape`` broadcast to ``out`` (0 along broadcast axes)."""
    cs = contiguous_strides(shape)
    lead = len(out) - len(shape)
    return [0 if d < lead or shape[d - lead] == 1 else cs[d - lead] for d in range(len(out))]


def coalesce(shape, *strides):
    """Drop size-1 axes and merge neighbours that every operand walks contiguously."""
    dims = [(s, [st[d] for st in strides]) for d, s in enumerate(shape) if s != 1]
    merged = []
    for size, sts in dims:
        if merged:
            psize, psts = merged[-1]
            if all(p == q * size for p, q in zip(psts, sts)):
                merged[-1] = (psize * size, sts)
                continue
        merged.append((size, sts))
    if not merged:
        merged = [(1, [0] * len(strides))]
    return [m[0] for m in merged], [[m[1][i] for m in merged] for i in range(len(strides))]


def normalize_axis(name, axis, ndim):
    """axis in [-k, k) with k = max(ndim, 1), as a non-negative int (a 0-d tensor is seen as
    having one axis of size 1, so axis 0 and -1 both name it)."""
    if not isinstance(axis, (int, np.integer)) or isinstance(axis, (bool, np.bool_)):
        raise fail(name, f"axis must be an int or None, got {axis!r}", "pass axis=int")
    k = max(ndim, 1)
    if not -k <= axis < k:
        raise fail(
            name,
            f"axis {axis} is out of range for a tensor with {ndim} dimension(s)",
            f"use an axis in [{-k}, {k - 1}]",
        )
    return int(axis) % k


def int_tuple(name, what, values, minimum=None):
    """``values`` as a tuple of Python ints (refusing floats, bools, strings, ...)."""
    if isinstance(values, (int, np.integer)) and not isinstance(values, (bool, np.bool_)):
        values = (values,)
    try:
        items = tuple(values)
    except TypeError:
        raise fail(name, f"{what} must be a sequence of ints, got {values!r}",
                   f"pass {what} as a tuple of ints") from None
    if any(isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer))
           for v in items):
        raise fail(name, f"{what} must be ints, got {items!r}", f"pass {what} as a tuple of ints")
    items = tuple(int(v) for v in items)
    if minimum is not None and any(v < minimum for v in items):
        raise fail(name, f"{what} {items} has entries below {minimum}",
                   f"use entries >= {minimum}")
    if len(items) > MAX_NDIM:
        raise fail(name, f"{what} has {len(items)} entries", f"use at most {MAX_NDIM} axes")
    return items


def real(name, what, value) -> float:
    """``value`` as a float, refusing strings, None, sequences and complex numbers."""
    if not isinstance(value, (numbers.Real, np.integer, np.floating)):
        raise fail(name, f"{what} must be a real number, got {value!r}", f"pass a float {what}")
    return float(value)


def split_axis(shape, axis):
    """(outer, n, inner) view of ``shape`` around ``axis``."""
    return math.prod(shape[:axis]), (shape[axis] if shape else 1), math.prod(shape[axis + 1 :])


# ----------------------------------------------------------------------------- shape rules
def unary_rule(name, shapes, c0=0.0, c1=0.0):
    return shapes[0], [], [real(name, "the constant", c0), real(name, "the constant", c1)]


def binary_rule(name, shapes):
    out = broadcast_shapes(name, *shapes)
    dims, (sa, sb) = coalesce(out, *(broadcast_strides(s, out) for s in shapes))
    return out, [len(dims), *dims, *sa, *sb], []


def where_rule(name, shapes):
    out = broadcast_shapes(name, *shapes)
    strides = [broadcast_strides(s, out) for s in shapes]
    dims = list(out) or [1]
    if not out:
        strides = [[0], [0], [0]]
    return out, [len(dims), *dims, *strides[0], *strides[1], *strides[2]], []


def reduce_rule(name, shapes, axis=None, keepdims=False):
    shape = shapes[0]
    keepdims = flag(name, "keepdims", keepdims)
    if axis is None:
        out = tuple(1 for _ in shape) if keepdims else ()
        outer, n, inner = 1, math.prod(shape), 1
    else:
        ax = normalize_axis(name, axis, len(shape))
        if not shape:
            return (), [1, 1, 1], []
        out = shape[:ax] + ((1,) if keepdims else ()) + shape[ax + 1 :]
        outer, n, inner = split_axis(shape, ax)
    if name == "max" and n == 0:
        raise fail(name, f"cannot take the max over an empty axis of shape {fmt(shape)}",
                   "reduce over a non-empty axis")
    return out, [outer, n, inner], []


def softmax_rule(name, shapes, axis=-1):
    shape = shapes[0]
    ax = normalize_axis(name, axis, len(shape))
    if not shape:
        return (), [1, 1, 1], []
    return shape, list(split_axis(shape, ax)), []


BLAS_MAX_DIM = 2**31 - 1  # BLAS takes m, k and n as 32-bit integers (kernels/blas.py)


def check_blas_dims(name, m, k, n, shapes):
    """Refuse a product whose m, k or n a 32-bit BLAS integer cannot hold."""
    if max(m, k, n) > BLAS_MAX_DIM:
        raise fail(name, f"shapes {', '.join(fmt(s) for s in shapes)} make a product of "
                   f"{m}x{k} by {k}x{n}; BLAS takes sizes up to {BLAS_MAX_DIM}",
                   "split the product into smaller ones (fewer rows per call)")


def matmul_rule(name, shapes, trans_b=False):
    """A (..., m, k) @ B (..., k, n); with trans_b, B is given as (..., n, k) and used as B^T."""
    sa, sb = shapes
    if len(sa) < 2 or len(sb) < 2:
        raise fail(name, f"operands need 2 or more dims, got {fmt(sa)} and {fmt(sb)}",
                   "use x @ w with 1-D operands through Tensor.__matmul__, which adds the axis")
    m, k = sa[-2:]
    n, k2 = sb[-2:] if trans_b else sb[-2:][::-1]
    if k != k2:
        raise fail(
            name,
            f"shapes {fmt(sa)} @ {fmt(sb)}: inner sizes {k} and {k2} differ",
            "the last axis of the left operand must equal the second-to-last of the right; "
            "transpose one operand (w.T) or fix the layer size",
        )
    check_blas_dims(name, m, k, n, shapes)
    batch = broadcast_shapes(name, sa[:-2], sb[:-2])
    ba = broadcast_strides(sa[:-2], batch)
    bb = broadcast_strides(sb[:-2], batch)
    if math.prod(batch) > 1 << 16:  # the offsets below are a Python loop: refuse absurd batches
        from .tape import guard_memory

        guard_memory(name, math.prod(batch) * (72 + 8 * m * n),
                     f"shapes {fmt(sa)} @ {fmt(sb)} broadcast to {math.prod(batch)} products; "
                     "use smaller batch axes")
    offsets = []
    for idx in np.ndindex(*batch):
        offsets += [sum(i * s for i, s in zip(idx, ba)) * m * k,
                    sum(i * s for i, s in zip(idx, bb)) * k * n]
    nb = math.prod(batch)
    return batch + (m, n), [m, k, n, nb, int(bool(trans_b)), *offsets], []


def linear_rule(name, shapes):
    """x (..., k), W (n, k), b (n,) -> (..., n): one unbatched x2 @ W.T product plus a bias row.

    Same integer attributes as an unbatched trans_b matmul (x seen as an (m, k) matrix), so the
    matmul kernels run it."""
    sx, sw, sb = shapes
    if len(sx) < 1 or len(sw) != 2 or len(sb) != 1:
        raise fail(name, f"needs x (..., k), weight (n, k) and bias (n,), got {fmt(sx)}, "
                   f"{fmt(sw)} and {fmt(sb)}", "use fg.nn.functional.linear(x, weight, bias)")
    (n, k), m = sw, math.prod(sx[:-1])
    if sx[-1] != k or sb[0] != n:
        raise fail(name, f"x {fmt(sx)}, weight {fmt(sw)}, bias {fmt(sb)}: x's last axis must be "
                   f"{k} and the bias size {n}", "fix the layer sizes (weight is (out, in))")
    check_blas_dims(name, m, k, n, shapes)
    return tuple(sx[:-1]) + (n,), [m, k, n, 1, 1, 0, 0], []


# The activations LINEAR_ACT fuses, by name, as the unary op whose code the row stores.
LINEAR_ACTIVATIONS = {"tanh": Op.TANH, "sigmoid": Op.SIGMOID, "relu": Op.RELU}


def linear_act_rule(name, shapes, activation):
    """x (..., k), W (n, k), c (n,) or (..., n) -> (..., n): act(x2 @ W.T + c), one unbatched
    trans_b product (x seen as (m, k)) then the add and the activation while the output is hot.

    ip = the matmul's [m, k, n, 1, 1, 0, 0], then the activation's unary op code and whether c
    has the output's shape (1) or is a bias row (0)."""
    sx, sw, sc = shapes
    if activation not in LINEAR_ACTIVATIONS:
        raise fail(name, f"unknown activation {activation!r}",
                   f"use one of {', '.join(LINEAR_ACTIVATIONS)}")
    if len(sx) < 1 or len(sw) != 2:
        raise fail(name, f"needs x (..., k) and weight (n, k), got {fmt(sx)} and {fmt(sw)}",
                   "use fg.nn.functional.linear_act(x, weight, c, activation)")
    (n, k), m = sw, math.prod(sx[:-1])
    out = tuple(sx[:-1]) + (n,)
    if sx[-1] != k:
        raise fail(name, f"x {fmt(sx)}, weight {fmt(sw)}: x's last axis must be {k}",
                   "fix the layer sizes (weight is (out, in))")
    check_blas_dims(name, m, k, n, shapes)
    if tuple(sc) == (n,):
        full = 0
    elif tuple(sc) == out:
        full = 1
    else:
        raise fail(name, f"c {fmt(sc)} must be a bias ({n},) or have the output's shape "
                   f"{fmt(out)}", "broadcast c to the output's shape first")
    return out, [m, k, n, 1, 1, 0, 0, int(LINEAR_ACTIVATIONS[activation]), full], []


def reshape_rule(name, shapes, shape):
    src = shapes[0]
    size = math.prod(src)
    shape = int_tuple(name, "the target shape", shape)
    if shape.count(-1) > 1 or any(s < -1 for s in shape):
        raise fail(name, f"bad target shape {fmt(shape)}", "use non-negative sizes and at most one -1")
    if -1 in shape:
        rest = math.prod(s for s in shape if s != -1)
        if rest == 0 or size % rest:
            raise fail(name, f"cannot reshape {fmt(src)} (size {size}) into {fmt(shape)}",
                       "make the sizes multiply to the input's size")
        shape = tuple(size // rest if s == -1 else s for s in shape)
    if math.prod(shape) != size:
        raise fail(name, f"cannot reshape {fmt(src)} (size {size}) into {fmt(shape)}",
                   "make the sizes multiply to the input's size")
    return shape, [], []


def strided_rule(name, shapes, out_shape, base, strides):
    """A view of the input: out[i...] = x[base + sum(i_d * strides_d)]. Every offset is checked."""
    size = math.prod(shapes[0])
    out_shape = int_tuple(name, "the view shape", out_shape, minimum=0)
    strides = int_tuple(name, "the view strides", strides)
    (base,) = int_tuple(name, "the view offset", (base,))
    if len(strides) != len(out_shape):
        raise fail(name, f"view shape {fmt(out_shape)} and strides {strides} differ in length",
                   "give one stride per axis")
    if math.prod(out_shape) > 0:
        lo = base + sum(min(0, (n - 1) * s) for n, s in zip(out_shape, strides))
        hi = base + sum(max(0, (n - 1) * s) for n, s in zip(out_shape, strides))
        if lo < 0 or hi >= size:
            raise fail(name, f"view of {fmt(shapes[0])} reads outside the tensor",
                       "check the slice or axes")
    dims = list(out_shape) or [1]
    st = list(strides) or [0]
    return out_shape, [len(dims), int(base), *dims, *[int(s) for s in st]], []


def gather_rule(name, shapes, axis=0):
    x, idx = shapes
    if not x:
        raise fail(name, "cannot index a 0-d tensor", "index a tensor with at least one axis")
    ax = normalize_axis(name, axis, len(x))
    outer, n, inner = split_axis(x, ax)
    return x[:ax] + idx + x[ax + 1 :], [outer, n, inner], []


def gather_bound(shapes, axis=0):
    x = shapes[0]
    n = x[normalize_axis("gather", axis, len(x))]
    return -n, n


def concat_rule(name, shapes, axis=0):
    first = shapes[0]
    if not first:
        raise fail(name, "cannot concatenate 0-d tensors", "use fg.stack, or reshape to (1,)")
    ax = normalize_axis(name, axis, len(first))
    for s in shapes[1:]:
        if len(s) != len(first) or s[:ax] != first[:ax] or s[ax + 1 :] != first[ax + 1 :]:
            raise fail(
                name,
                "shapes " + ", ".join(fmt(t) for t in shapes) + f" differ outside axis {ax}",
                "make every size equal except along the concatenation axis",
            )
    outer = math.prod(first[:ax])
    inner = math.prod(first[ax + 1 :])
    widths = [s[ax] * inner for s in shapes]
    out = first[:ax] + (sum(s[ax] for s in shapes),) + first[ax + 1 :]
    return out, [outer, sum(widths), *widths], []


def cross_entropy_rule(name, shapes):
    logits, labels = shapes
    if len(logits) != 2 or labels != logits[:1]:
        raise fail(
            name,
            f"expects logits (N, C) and integer labels (N,), got {fmt(logits)} and {fmt(labels)}",
            "reshape logits to (N, C) and pass one class index per row",
        )
    if logits[1] == 0:
        raise fail(name, "logits have zero classes", "give at least one class")
    return (logits[0],), [logits[0], logits[1]], []


def control_rule(name, shapes, **attrs):
    raise fail(name, "is recorded by fg.scan, not by apply()", "call fg.scan")


def cross_entropy_bound(shapes):
    return 0, shapes[0][1]


# ----------------------------------------------------------------------------- the table
UNARY_SHAPES = [(), (5,), (3, 4), (2, 3, 4)]
BINARY_SHAPES = [((3, 4), (3, 4)), ((3, 4), (4,)), ((3, 1), (1, 4)), ((), (2, 3)),
                 ((2, 1, 3), (4, 1)), ((5,), ())]


@dataclass(frozen=True)
class OpDef:
    """One primitive. ``samples`` are (input shapes, attrs, domain) triples the tests run."""

    op: Op
    family: int
    arity: int  # -1: variadic
    rule: Callable
    differentiable: bool = True
    int_inputs: tuple = ()  # positions of integer (index/label) operands
    int_bound: Callable | None = None  # (shapes, **attrs) -> (lo, hi): valid integer range
    np_forward: Callable | None = None  # elementwise reference forward
    np_vjp: Callable | None = None  # elementwise reference local gradient(s)
    samples: list = field(default_factory=list)
    checked_by: str = ""  # control ops are tested by their own suite instead of samples

    @property
    def name(self) -> str:
        return self.op.name.lower()


def _sig(x):
    return np.where(x >= 0, 1 / (1 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1 + np.exp(-np.abs(x))))


def _softplus(x):
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


def _slope(x, slope):
    """A piecewise op's local slope ``slope`` (an array or a bool mask of x's shape), NaN where x
    is NaN: the slope at a NaN is undefined (np.heaviside(nan, 0) is nan), so a NaN input gets a
    NaN gradient rather than a silent 0 or 1."""
    return np.where(np.isnan(x), np.nan, slope).astype(np.result_type(x, np.float32))


def _nan_at(x):
    """NaN where x is NaN, else 0: added to the gradient of an operand that a selection
    (maximum, minimum) may pick, so that a NaN operand gets a NaN gradient."""
    return np.where(np.isnan(x), np.nan, 0.0).astype(np.result_type(x, np.float32))


def _unary(op, fwd, vjp, domain="real", attrs=None):
    attrs = attrs or {}
    return OpDef(op, UNARY, 1, unary_rule, np_forward=fwd, np_vjp=vjp,
                 samples=[([s], attrs, domain) for s in UNARY_SHAPES])


def _binary(op, fwd, vjp, domain="real", differentiable=True):
    return OpDef(op, BINARY, 2, binary_rule, differentiable=differentiable, np_forward=fwd,
                 np_vjp=vjp, samples=[(list(s), {}, domain) for s in BINARY_SHAPES])


def _cmp(op, fwd):
    return _binary(op, lambda a, b: fwd(a, b).astype(a.dtype), None, differentiable=False)


_ROWS = [
    # unary: np_forward(x, c0, c1) -> y ; np_vjp(x, y, g, c0, c1) -> gx
    _unary(Op.NEG, lambda x, c0, c1: -x, lambda x, y, g, c0, c1: -g),
    _unary(Op.ABS, lambda x, c0, c1: np.abs(x), lambda x, y, g, c0, c1: g * np.sign(x), "nonzero"),
    _unary(Op.EXP, lambda x, c0, c1: np.exp(x), lambda x, y, g, c0, c1: g * y),
    _unary(Op.LOG, lambda x, c0, c1: np.log(x), lambda x, y, g, c0, c1: g / x, "positive"),
    _unary(Op.SQRT, lambda x, c0, c1: np.sqrt(x), lambda x, y, g, c0, c1: g * 0.5 / y, "positive"),
    _unary(Op.TANH, lambda x, c0, c1: np.tanh(x), lambda x, y, g, c0, c1: g * (1 - y * y)),
    _unary(Op.SIGMOID, lambda x, c0, c1: _sig(x), lambda x, y, g, c0, c1: g * y * (1 - y)),
    # NaN propagates as in NumPy and PyTorch: relu(nan) = np.maximum(nan, 0) = nan
    _unary(Op.RELU, lambda x, c0, c1: np.maximum(x, 0).astype(x.dtype),
           lambda x, y, g, c0, c1: g * _slope(x, x > 0), "nonzero"),
    _unary(Op.LEAKY_RELU, lambda x, c0, c1: np.where(x > 0, x, c0 * x).astype(x.dtype),
           lambda x, y, g, c0, c1: g * _slope(x, np.where(x > 0, 1, c0)), "nonzero",
           {"c0": 0.01}),
    _unary(Op.SOFTPLUS, lambda x, c0, c1: _softplus(x), lambda x, y, g, c0, c1: g * _sig(x)),
    _unary(Op.CLIP, lambda x, c0, c1: np.clip(x, c0, c1),
           lambda x, y, g, c0, c1: g * _slope(x, (x >= c0) & (x <= c1)), "real",
           {"c0": -0.5, "c1": 0.7}),
    _unary(Op.ADD_SCALAR, lambda x, c0, c1: x + c0, lambda x, y, g, c0, c1: g, "real", {"c0": 1.5}),
    _unary(Op.MUL_SCALAR, lambda x, c0, c1: x * c0, lambda x, y, g, c0, c1: g * c0, "real",
           {"c0": -2.5}),
    _unary(Op.DIV_SCALAR, lambda x, c0, c1: x / c0, lambda x, y, g, c0, c1: g / c0, "real",
           {"c0": 3.0}),
    _unary(Op.RDIV_SCALAR, lambda x, c0, c1: c0 / x, lambda x, y, g, c0, c1: -g * y / x,
           "nonzero", {"c0": 2.0}),
    _unary(Op.POW_SCALAR, lambda x, c0, c1: x**c0, lambda x, y, g, c0, c1: g * c0 * x ** (c0 - 1),
           "positive", {"c0": 1.7}),
    _unary(Op.RPOW_SCALAR, lambda x, c0, c1: c0**x, lambda x, y, g, c0, c1: g * y * np.log(c0),
           "real", {"c0": 1.8}),
    # binary: np_forward(a, b) -> y ; np_vjp(a, b, y, g) -> (ga, gb) at the broadcast shape
    _binary(Op.ADD, lambda a, b: a + b, lambda a, b, y, g: (g, g)),
    _binary(Op.SUB, lambda a, b: a - b, lambda a, b, y, g: (g, -g)),
    _binary(Op.MUL, lambda a, b: a * b, lambda a, b, y, g: (g * b, g * a)),
    _binary(Op.DIV, lambda a, b: a / b, lambda a, b, y, g: (g / b, -g * y / b), "nonzero"),
    # d/da a^b is 0 where b == 0 and d/db a^b is 0 where a == 0, as in PyTorch (and the kernel)
    _binary(Op.POW, lambda a, b: a**b,
            lambda a, b, y, g: (np.where(b == 0, 0.0, g * b * a ** (b - 1)),
                                np.where(a == 0, 0.0, g * y * np.log(np.where(a == 0, 1, a)))),
            "positive"),
    _binary(Op.MAXIMUM, lambda a, b: np.maximum(a, b),
            lambda a, b, y, g: (g * (a > b) + 0.5 * g * (a == b) + _nan_at(a),
                                g * (b > a) + 0.5 * g * (a == b) + _nan_at(b))),
    _binary(Op.MINIMUM, lambda a, b: np.minimum(a, b),
            lambda a, b, y, g: (g * (a < b) + 0.5 * g * (a == b) + _nan_at(a),
                                g * (b < a) + 0.5 * g * (a == b) + _nan_at(b))),
    _binary(Op.BCE_LOGITS, lambda a, b: _softplus(a) - a * b,
            lambda a, b, y, g: (g * (_sig(a) - b), -g * a)),
    _cmp(Op.GT, np.greater),
    _cmp(Op.GE, np.greater_equal),
    _cmp(Op.LT, np.less),
    _cmp(Op.LE, np.less_equal),
    _cmp(Op.EQ, np.equal),
    _cmp(Op.NE, np.not_equal),
    OpDef(Op.WHERE, WHERE, 3, where_rule,
          samples=[([(3, 4), (3, 4), (3, 4)], {}, "cond"), ([(3, 1), (4,), ()], {}, "cond"),
                   ([(2, 3), (1, 3), (2, 1)], {}, "cond")]),
    OpDef(Op.SUM, REDUCE, 1, reduce_rule,
          samples=[([(5,)], {}, "real"), ([(3, 4)], {"axis": 0}, "real"),
                   ([(3, 4)], {"axis": 1, "keepdims": True}, "real"),
                   ([(2, 3, 4)], {"axis": -2}, "real"), ([()], {}, "real")]),
    OpDef(Op.MAX, REDUCE, 1, reduce_rule,
          samples=[([(5,)], {}, "distinct"), ([(3, 4)], {"axis": 0}, "distinct"),
                   ([(2, 3, 4)], {"axis": 1, "keepdims": True}, "distinct")]),
    OpDef(Op.SOFTMAX, REDUCE, 1, softmax_rule,
          samples=[([(5,)], {}, "real"), ([(3, 4)], {"axis": 0}, "real"),
                   ([(2, 3, 4)], {"axis": 1}, "real")]),
    OpDef(Op.LOG_SOFTMAX, REDUCE, 1, softmax_rule,
          samples=[([(5,)], {}, "real"), ([(3, 4)], {"axis": 0}, "real"),
                   ([(2, 3, 4)], {"axis": -1}, "real")]),
    OpDef(Op.MATMUL, MATMUL, 2, matmul_rule,
          samples=[([(3, 4), (4, 5)], {}, "real"), ([(1, 6), (6, 1)], {}, "real"),
                   ([(2, 3, 4), (4, 2)], {}, "real"), ([(2, 1, 3, 4), (3, 4, 2)], {}, "real"),
                   ([(40, 30), (30, 20)], {}, "real"), ([(3, 4), (5, 4)], {"trans_b": True}, "real"),
                   ([(40, 30), (20, 30)], {"trans_b": True}, "real")]),
    OpDef(Op.LINEAR, MATMUL, 3, linear_rule,
          samples=[([(3, 4), (5, 4), (5,)], {}, "real"), ([(4,), (3, 4), (3,)], {}, "real"),
                   ([(2, 3, 4), (5, 4), (5,)], {}, "real"), ([(1, 6), (1, 6), (1,)], {}, "real"),
                   ([(40, 30), (20, 30), (20,)], {}, "real")]),
    OpDef(Op.LINEAR_ACT, MATMUL, 3, linear_act_rule,
          samples=[([(3, 4), (5, 4), (5,)], {"activation": "tanh"}, "real"),
                   ([(1, 6), (7, 6), (1, 7)], {"activation": "tanh"}, "real"),
                   ([(2, 3, 4), (5, 4), (2, 3, 5)], {"activation": "sigmoid"}, "real"),
                   ([(4,), (3, 4), (3,)], {"activation": "sigmoid"}, "real"),
                   ([(3, 4), (5, 4), (3, 5)], {"activation": "relu"}, "real"),
                   ([(40, 30), (20, 30), (40, 20)], {"activation": "tanh"}, "real")]),
    OpDef(Op.RESHAPE, SHAPE, 1, reshape_rule,
          samples=[([(3, 4)], {"shape": (4, 3)}, "real"), ([(2, 3, 4)], {"shape": (-1,)}, "real"),
                   ([()], {"shape": (1, 1)}, "real")]),
    OpDef(Op.STRIDED, SHAPE, 1, strided_rule,
          samples=[([(3, 4)], {"out_shape": (4, 3), "base": 0, "strides": (1, 4)}, "real"),
                   ([(6,)], {"out_shape": (3,), "base": 5, "strides": (-2,)}, "real"),
                   ([(4,)], {"out_shape": (3, 4), "base": 0, "strides": (0, 1)}, "real")]),
    OpDef(Op.GATHER, SHAPE, 2, gather_rule, int_inputs=(1,), int_bound=gather_bound,
          samples=[([(5, 3), (4,)], {"axis": 0}, "real"), ([(3, 4), (2, 3)], {"axis": 1}, "real"),
                   ([(6,), (6,)], {}, "real")]),
    OpDef(Op.CONCAT, SHAPE, -1, concat_rule,
          samples=[([(2, 3), (4, 3)], {"axis": 0}, "real"),
                   ([(2, 3), (2, 1), (2, 2)], {"axis": 1}, "real"),
                   ([(3,), (3,)], {}, "real")]),
    OpDef(Op.CROSS_ENTROPY, LOSS, 2, cross_entropy_rule, int_inputs=(1,),
          int_bound=lambda shapes: cross_entropy_bound(shapes),
          samples=[([(4, 3), (4,)], {}, "real"), ([(1, 5), (1,)], {}, "real")]),
    OpDef(Op.SCAN_BEGIN, CONTROL, -1, control_rule, differentiable=False,
          checked_by="tests/test_scan.py"),
    OpDef(Op.SCAN, CONTROL, -1, control_rule, checked_by="tests/test_scan.py"),
]

TABLE: dict[Op, OpDef] = {row.op: row for row in _ROWS}
assert set(TABLE) == set(Op), f"ops without a table row: {set(Op) - set(TABLE)}"
