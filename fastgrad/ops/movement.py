"""Family 5, data movement: reshape (an alias of its input's slot), strided views, gather along
an axis by an integer operand, and concatenation. Kernels: kernels/movement.py (reshape runs
no kernel: its output shares the input's slot, so its gradient is already in place).
"""

from __future__ import annotations

import math

import numpy as np

from .base import (NO_ATTRS, Layout, OpDef, Tail, directions, fail, fmt, int_tuple,
                   normalize_axis, split_axis)
from .reduce import axis_recover

__all__ = ["AXIS_LAYOUT", "CONCAT", "CONCAT_LAYOUT", "FAMILY", "GATHER", "INDEX_ADD", "RESHAPE",
           "STRIDED",
           "STRIDED_LAYOUT", "concat_rule", "gather_bound", "gather_rule", "reshape_rule",
           "strided_index", "strided_rule"]

FAMILY = 5


# ---- reshape
def reshape_rule(name, shapes, shape):
    """x -> the same elements as ``shape`` (one entry may be -1: inferred)."""
    src = shapes[0]
    size = math.prod(src)
    shape = int_tuple(name, "the target shape", shape)
    if shape.count(-1) > 1 or any(s < -1 for s in shape):
        raise fail(name, f"bad target shape {fmt(shape)}",
                   "use non-negative sizes and at most one -1")
    if -1 in shape:
        rest = math.prod(s for s in shape if s != -1)
        if rest == 0 or size % rest:
            raise fail(name, f"cannot reshape {fmt(src)} (size {size}) into {fmt(shape)}",
                       "make the sizes multiply to the input's size")
        shape = tuple(size // rest if s == -1 else s for s in shape)
    if math.prod(shape) != size:
        raise fail(name, f"cannot reshape {fmt(src)} (size {size}) into {fmt(shape)}",
                   "make the sizes multiply to the input's size")
    return shape, *NO_ATTRS.encode()


RESHAPE = OpDef(
    "reshape", 500, 1, reshape_rule, NO_ATTRS,
    forward=lambda xs, a, out_shape: xs[0].reshape(out_shape),
    vjp=lambda xs, y, g, a: [None],  # the output aliases the input's slot: g is already there
    jvp=lambda xs, ts, y, a: ts[0].reshape((-1,) + y.shape),
    recover=lambda shapes, out_shape, a: [dict(shape=out_shape)],
    samples=[([(3, 4)], {"shape": (4, 3)}, "real"), ([(2, 3, 4)], {"shape": (-1,)}, "real"),
             ([()], {"shape": (1, 1)}, "real")],
    front_end="x.reshape(4, 3)", kernel="movement", saves="nothing", integers=True)


# ---- strided: out[i...] = x[base + sum(i_d * strides_d)] (slices, transposes, broadcasts)
STRIDED_LAYOUT = Layout(ints=("ndim", "base"), tails=(Tail("dims", "ndim"),
                                                      Tail("strides", "ndim")),
                        shown=("base",))


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
    dims = list(out_shape) or [1]  # a 0-d view walks one axis of size 1
    return out_shape, *STRIDED_LAYOUT.encode(ndim=len(dims), base=base, dims=dims,
                                             strides=list(strides) or [0])


def strided_index(a):
    """The flat input offset of every output element, in C order."""
    grids = np.indices(tuple(int(s) for s in a.dims)).reshape(a.ndim, -1)
    return a.base + (grids * a.strides.reshape(a.ndim, 1)).sum(axis=0)


def _strided_vjp(xs, y, g, a):
    gx = np.zeros(xs[0].size)
    np.add.at(gx, strided_index(a), g.reshape(-1))
    return [gx.reshape(xs[0].shape)]


STRIDED = OpDef(
    "strided", 501, 1, strided_rule, STRIDED_LAYOUT,
    forward=lambda xs, a, out_shape: xs[0].reshape(-1)[strided_index(a)].reshape(out_shape),
    vjp=_strided_vjp,
    jvp=lambda xs, ts, y, a: ts[0].reshape(ts[0].shape[0], -1)[:, strided_index(a)]
    .reshape((-1,) + y.shape),
    recover=lambda shapes, out_shape, a: [dict(
        out_shape=out_shape, base=a.base,
        strides=tuple(int(s) for s in a.strides) if out_shape else ())],
    samples=[([(3, 4)], {"out_shape": (4, 3), "base": 0, "strides": (1, 4)}, "real"),
             ([(6,)], {"out_shape": (3,), "base": 5, "strides": (-2,)}, "real"),
             ([(4,)], {"out_shape": (3, 4), "base": 0, "strides": (0, 1)}, "real")],
    front_end="x[1:, ::2]", kernel="movement", saves="nothing", integers=True)


# ---- gather: x (..., n, ...) indexed along one axis by an integer operand
AXIS_LAYOUT = Layout(ints=("outer", "n", "inner"), shown=("outer", "n", "inner"))


def gather_rule(name, shapes, axis=0):
    """x (A, n, B), idx (I...) -> (A, I..., B): np.take(x, idx, axis)."""
    x, idx = shapes
    if not x:
        raise fail(name, "cannot index a 0-d tensor", "index a tensor with at least one axis")
    ax = normalize_axis(name, axis, len(x))
    outer, n, inner = split_axis(x, ax)
    return x[:ax] + idx + x[ax + 1 :], *AXIS_LAYOUT.encode(outer=outer, n=n, inner=inner)


def gather_bound(shapes, axis=0):
    """The indices gather accepts: [-n, n) along its axis."""
    x = shapes[0]
    n = x[normalize_axis("gather", axis, len(x))]
    return -n, n


def _gather_vjp(xs, y, g, a):
    gx = np.zeros((a.outer, a.n, a.inner))
    idx = xs[1].reshape(-1)
    np.add.at(gx, (slice(None), idx, slice(None)), g.reshape(a.outer, idx.size, a.inner))
    return [gx.reshape(xs[0].shape), None]


GATHER = OpDef(
    "gather", 502, 2, gather_rule, AXIS_LAYOUT,
    forward=lambda xs, a, out_shape: np.take(
        xs[0].reshape(a.outer, a.n, a.inner), xs[1].reshape(-1), axis=1).reshape(out_shape),
    vjp=_gather_vjp,
    jvp=lambda xs, ts, y, a: np.take(ts[0].reshape(ts[0].shape[0], a.outer, a.n, a.inner),
                                     np.asarray(xs[1]).reshape(-1), axis=2)
    .reshape((-1,) + y.shape),
    recover=axis_recover, int_inputs=(1,), int_bound=gather_bound,
    samples=[([(5, 3), (4,)], {"axis": 0}, "real"), ([(3, 4), (2, 3)], {"axis": 1}, "real"),
             ([(6,), (6,)], {}, "real")],
    front_end="x[np.array([2, 0])]", kernel="movement", saves="nothing", integers=True)


# ---- concat: pieces side by side along one axis, each seen as (outer, width)
CONCAT_LAYOUT = Layout(ints=("outer", "total"), tails=(Tail("widths", None),),
                       shown=("outer", "total"))


def concat_rule(name, shapes, axis=0):
    """x_i (A, n_i, B...) -> (A, sum n_i, B...); ``widths`` are n_i * prod(B) per piece."""
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
    inner = math.prod(first[ax + 1 :])
    widths = [s[ax] * inner for s in shapes]
    out = first[:ax] + (sum(s[ax] for s in shapes),) + first[ax + 1 :]
    return out, *CONCAT_LAYOUT.encode(outer=math.prod(first[:ax]), total=sum(widths),
                                      widths=widths)


def _concat_vjp(xs, y, g, a):
    cuts = np.cumsum(a.widths)[:-1]
    return [p.reshape(x.shape) for p, x in zip(np.split(g.reshape(a.outer, -1), cuts, axis=1),
                                                xs)]


def _concat_jvp(xs, ts, y, a):
    k = directions(ts)
    parts = [np.zeros((k, a.outer, x.size // max(a.outer, 1))) if t is None
             else t.reshape(k, a.outer, -1) for x, t in zip(xs, ts)]
    return np.concatenate(parts, axis=2).reshape((k,) + y.shape)


CONCAT = OpDef(
    "concat", 503, -1, concat_rule, CONCAT_LAYOUT,
    forward=lambda xs, a, out_shape: np.concatenate(
        [x.reshape(a.outer, -1) for x in xs], axis=1).reshape(out_shape),
    vjp=_concat_vjp, jvp=_concat_jvp, recover=axis_recover,
    samples=[([(2, 3), (4, 3)], {"axis": 0}, "real"),
             ([(2, 3), (2, 1), (2, 2)], {"axis": 1}, "real"),
             ([(3,), (3,)], {}, "real")],
    front_end="fg.concatenate([x, x], axis=1)", kernel="movement", saves="nothing",
    integers=True)


# ---- index_add: x (A, n, B) plus src (A, m, B) added at rows idx (m,) of its middle axis
def index_add_rule(name, shapes, axis=0):
    """x (A, n, B), idx (m,), src (A, m, B) -> x's shape: torch.index_add (np.add.at on a
    copy); repeated indices add up. ``x.scatter_add`` records it over flattened positions."""
    x, idx, src = shapes
    if not x:
        raise fail(name, "cannot index a 0-d tensor", "index a tensor with at least one axis")
    ax = normalize_axis(name, axis, len(x))
    if len(idx) != 1:
        raise fail(name, f"index must be 1-d, got shape {fmt(idx)}", "pass a 1-d index array")
    want = x[:ax] + idx + x[ax + 1 :]
    if src != want:
        raise fail(name, f"source of shape {fmt(src)} for x {fmt(x)} and {idx[0]} indices "
                   f"along axis {ax}", f"pass a source of shape {fmt(want)}")
    outer, n, inner = split_axis(x, ax)
    return x, *AXIS_LAYOUT.encode(outer=outer, n=n, inner=inner)


def index_add_bound(shapes, axis=0):
    """The indices index_add accepts: [0, n) along its axis (PyTorch's: no negative index)."""
    x = shapes[0]
    return 0, x[normalize_axis("index_add", axis, len(x))]


def _index_add_forward(xs, a, out_shape):
    y = np.array(xs[0], copy=True).reshape(a.outer, a.n, a.inner)
    idx = np.asarray(xs[1]).reshape(-1)
    np.add.at(y, (slice(None), idx, slice(None)), xs[2].reshape(a.outer, idx.size, a.inner))
    return y.reshape(out_shape)


def _index_add_vjp(xs, y, g, a):
    idx = np.asarray(xs[1]).reshape(-1)
    gsrc = np.take(g.reshape(a.outer, a.n, a.inner), idx, axis=1).reshape(xs[2].shape)
    return [g, None, gsrc]


def _index_add_jvp(xs, ts, y, a):
    k, idx = directions(ts), np.asarray(xs[1]).reshape(-1)
    out = np.zeros((k, a.outer, a.n, a.inner)) if ts[0] is None else \
        np.array(ts[0], np.float64).reshape(k, a.outer, a.n, a.inner)
    if ts[2] is not None:
        np.add.at(out, (slice(None), slice(None), idx, slice(None)),
                  ts[2].reshape(k, a.outer, idx.size, a.inner))
    return out.reshape((k,) + y.shape)


INDEX_ADD = OpDef(
    "index_add", 504, 3, index_add_rule, AXIS_LAYOUT,
    forward=_index_add_forward, vjp=_index_add_vjp, jvp=_index_add_jvp,
    recover=axis_recover, int_inputs=(1,), int_bound=index_add_bound,
    samples=[([(5, 3), (4,), (4, 3)], {"axis": 0}, "real"),
             ([(3, 4), (6,), (3, 6)], {"axis": 1}, "real"),
             ([(6,), (9,), (9,)], {}, "real")],
    front_end="x.index_add(0, np.array([2, 0, 2]), x)", kernel="movement", saves="nothing",
    integers=True)
