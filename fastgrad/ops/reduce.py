"""Family 3, reductions and normalisations along one axis, the input seen as (outer, n, inner).

sum, mean, max, amax, logsumexp and prod reduce the n axis; softmax and log_softmax normalise
along it, cumsum accumulates along it. The layout is the
three sizes; the rules turn ``axis`` / ``keepdims`` into them. Kernels: kernels/reduce.py.
"""

from __future__ import annotations

import math

import numpy as np

from .base import Layout, OpDef, fail, flag, fmt, normalize_axis, split_axis

__all__ = ["AMAX", "CUMSUM", "FAMILY", "LAYOUT", "LOGSUMEXP", "LOG_SOFTMAX", "MAX", "PROD", "MEAN", "SOFTMAX", "SUM", "axis_recover",
           "reduce_recover", "reduce_rule", "softmax_rule"]

FAMILY = 3
LAYOUT = Layout(ints=("outer", "n", "inner"), shown=("outer", "n", "inner"))


def reduce_rule(name, shapes, axis=None, keepdims=False):
    """x (...) -> the reduction over ``axis`` (None: every axis), kept as size 1 with keepdims."""
    shape = shapes[0]
    keepdims = flag(name, "keepdims", keepdims)
    if axis is None:
        out = tuple(1 for _ in shape) if keepdims else ()
        outer, n, inner = 1, math.prod(shape), 1
    else:
        ax = normalize_axis(name, axis, len(shape))
        if not shape:
            return (), *LAYOUT.encode(outer=1, n=1, inner=1)
        out = shape[:ax] + ((1,) if keepdims else ()) + shape[ax + 1 :]
        outer, n, inner = split_axis(shape, ax)
    if name in ("max", "amax") and n == 0:
        raise fail(name, f"cannot take the max over an empty axis of shape {fmt(shape)}",
                   "reduce over a non-empty axis")
    return out, *LAYOUT.encode(outer=outer, n=n, inner=inner)


def softmax_rule(name, shapes, axis=-1):
    """x (...) -> the same shape, normalised along ``axis``."""
    shape = shapes[0]
    ax = normalize_axis(name, axis, len(shape))
    if not shape:
        return (), *LAYOUT.encode(outer=1, n=1, inner=1)
    outer, n, inner = split_axis(shape, ax)
    return shape, *LAYOUT.encode(outer=outer, n=n, inner=inner)


def _x3(x, a):
    """x as (outer, n, inner)."""
    return x.reshape(a.outer, a.n, a.inner)


def _t3(t, a):
    """A tangent (k, ...) as (k, outer, n, inner)."""
    return t.reshape(t.shape[0], a.outer, a.n, a.inner)


def reduce_recover(shapes, out_shape, a):
    nd = len(shapes[0])
    return [dict(axis=ax, keepdims=k) for ax in [None, *range(max(nd, 1))] for k in (False, True)]


def axis_recover(shapes, out_shape, a):
    """The rule's ``axis`` candidates for a row over operand 0's axes."""
    return [dict(axis=ax) for ax in range(max(len(shapes[0]), 1))]


# ---- sum
def _sum_vjp(xs, y, g, a):
    return [np.broadcast_to(g.reshape(a.outer, 1, a.inner), (a.outer, a.n, a.inner))
            .reshape(xs[0].shape)]


SUM = OpDef(
    "sum", 300, 1, reduce_rule, LAYOUT,
    forward=lambda xs, a, out_shape: _x3(xs[0], a).sum(axis=1).reshape(out_shape),
    vjp=_sum_vjp,
    jvp=lambda xs, ts, y, a: _t3(ts[0], a).sum(axis=2).reshape((-1,) + y.shape),
    recover=reduce_recover,
    samples=[([(5,)], {}, "real"), ([(3, 4)], {"axis": 0}, "real"),
             ([(3, 4)], {"axis": 1, "keepdims": True}, "real"),
             ([(2, 3, 4)], {"axis": -2}, "real"), ([()], {}, "real")],
    front_end="x.sum(axis=0)", kernel="reduce", saves="nothing", integers=True)


# ---- max: the first maximal element takes the gradient, as the values of torch.max(x, dim),
# whose indices name that element (the kernels' tie rule)
def _first_max(x3, y, a):
    return np.argmax(x3 == y.reshape(a.outer, 1, a.inner), axis=1)


def _max_vjp(xs, y, g, a):
    # where the max is NaN, each NaN element gets a NaN gradient (the slope at a NaN), the
    # others none
    x3, y3 = _x3(xs[0], a), y.reshape(a.outer, 1, a.inner)
    first = _first_max(x3, y, a)
    out = np.zeros((a.outer, a.n, a.inner))
    o, j = np.meshgrid(np.arange(a.outer), np.arange(a.inner), indexing="ij")
    out[o, first, j] = np.where(np.isnan(y3[:, 0, :]), 0.0, g.reshape(a.outer, a.inner))
    out[np.isnan(x3)] = np.nan
    return [out.reshape(xs[0].shape)]


def _max_jvp(xs, ts, y, a):
    first = _first_max(_x3(xs[0], a), y, a)
    picked = np.take_along_axis(_t3(ts[0], a), first[None, :, None, :], axis=2)
    return picked.reshape((-1,) + y.shape)


MAX = OpDef(
    "max", 301, 1, reduce_rule, LAYOUT,
    forward=lambda xs, a, out_shape: _x3(xs[0], a).max(axis=1).reshape(out_shape),
    vjp=_max_vjp, jvp=_max_jvp, recover=reduce_recover,
    samples=[([(5,)], {}, "distinct"), ([(3, 4)], {"axis": 0}, "distinct"),
             ([(2, 3, 4)], {"axis": 1, "keepdims": True}, "distinct")],
    front_end="x.max(axis=1).values", kernel="reduce", integers=True)


# ---- amax: every maximal element takes an equal share of the gradient, as torch.amax and the
# full torch.max(x) (a tie is a kink: the mean of the one-sided slopes)
def _maximal(x3, y, a):
    """Where x (outer, n, inner) equals its max, and how many elements do per reduction."""
    at = x3 == y.reshape(a.outer, 1, a.inner)
    return at, np.maximum(at.sum(axis=1, keepdims=True), 1)


def _amax_vjp(xs, y, g, a):
    # a NaN maximum: each NaN element gets a NaN gradient, the others none (as max)
    x3 = _x3(xs[0], a)
    at, count = _maximal(x3, y, a)
    out = np.where(at, g.reshape(a.outer, 1, a.inner) / count, 0.0)
    out[np.isnan(x3)] = np.nan
    return [out.reshape(xs[0].shape)]


def _amax_jvp(xs, ts, y, a):
    at, count = _maximal(_x3(xs[0], a), y, a)
    return ((_t3(ts[0], a) * at).sum(axis=2) / count[:, 0, :]).reshape((-1,) + y.shape)


AMAX = OpDef(
    "amax", 305, 1, reduce_rule, LAYOUT,
    forward=lambda xs, a, out_shape: _x3(xs[0], a).max(axis=1).reshape(out_shape),
    vjp=_amax_vjp, jvp=_amax_jvp, recover=reduce_recover,
    samples=[([(5,)], {}, "distinct"), ([(3, 4)], {"axis": 0}, "distinct"),
             ([(2, 3, 4)], {"axis": 1, "keepdims": True}, "distinct")],
    front_end="x.amax(axis=1)", kernel="reduce", integers=True)


# ---- softmax and log_softmax: forward through the stable log-sum-exp; both read the output
def _log_softmax3(x, a):
    z = _x3(x, a) - _x3(x, a).max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _softmax_vjp(xs, y, g, a):
    y3, g3 = _x3(y, a), _x3(g, a)
    return [(y3 * (g3 - (g3 * y3).sum(axis=1, keepdims=True))).reshape(xs[0].shape)]


def _softmax_jvp(xs, ts, y, a):
    y3, t3 = _t3(y[None], a), _t3(ts[0], a)
    return (y3 * (t3 - (y3 * t3).sum(axis=2, keepdims=True))).reshape((-1,) + y.shape)


SOFTMAX = OpDef(
    "softmax", 302, 1, softmax_rule, LAYOUT,
    forward=lambda xs, a, out_shape: np.exp(_log_softmax3(xs[0], a)).reshape(out_shape),
    vjp=_softmax_vjp, jvp=_softmax_jvp, recover=axis_recover,
    samples=[([(5,)], {}, "real"), ([(3, 4)], {"axis": 0}, "real"),
             ([(2, 3, 4)], {"axis": 1}, "real")],
    front_end="x.softmax()", kernel="reduce")


def _log_softmax_vjp(xs, y, g, a):
    y3, g3 = _x3(y, a), _x3(g, a)
    return [(g3 - np.exp(y3) * g3.sum(axis=1, keepdims=True)).reshape(xs[0].shape)]


def _log_softmax_jvp(xs, ts, y, a):
    p3, t3 = np.exp(_t3(y[None], a)), _t3(ts[0], a)
    return (t3 - (p3 * t3).sum(axis=2, keepdims=True)).reshape((-1,) + y.shape)


LOG_SOFTMAX = OpDef(
    "log_softmax", 303, 1, softmax_rule, LAYOUT,
    forward=lambda xs, a, out_shape: _log_softmax3(xs[0], a).reshape(out_shape),
    vjp=_log_softmax_vjp, jvp=_log_softmax_jvp, recover=axis_recover,
    samples=[([(5,)], {}, "real"), ([(3, 4)], {"axis": 0}, "real"),
             ([(2, 3, 4)], {"axis": -1}, "real")],
    front_end="x.log_softmax()", kernel="reduce")


# ---- mean: the sum divided by n (as NumPy, 0 / 0 is NaN for an empty axis); one row, where
# a sum then a division by the count were two (and two ops' kernels to compile)
def _mean(xs, a, out_shape):
    with np.errstate(invalid="ignore"):  # an empty axis: 0 / 0, NaN as the kernel gives
        return (_x3(xs[0], a).sum(axis=1) / a.n).reshape(out_shape)


def _mean_vjp(xs, y, g, a):
    return _sum_vjp(xs, y, g / max(a.n, 1), a)  # an empty axis has no element to receive it


MEAN = OpDef(
    "mean", 304, 1, reduce_rule, LAYOUT,
    forward=_mean, vjp=_mean_vjp,
    jvp=lambda xs, ts, y, a: (_t3(ts[0], a).sum(axis=2) / max(a.n, 1)).reshape((-1,) + y.shape),
    recover=reduce_recover,
    samples=[([(5,)], {}, "real"), ([(3, 4)], {"axis": 0}, "real"),
             ([(3, 4)], {"axis": 1, "keepdims": True}, "real"),
             ([(2, 3, 4)], {"axis": -2}, "real"), ([()], {}, "real")],
    front_end="x.mean(axis=0)", kernel="reduce", saves="nothing")



# ---- logsumexp: log(sum(exp(x))) through the max shift; an infinite max is not subtracted
# (PyTorch's rule: a row of -inf gives -inf, a +inf gives +inf); the gradient is softmax
def _lse_shift(x3):
    m = x3.max(axis=1, keepdims=True) if x3.shape[1] else np.zeros(x3.shape[:1] + (1,) + x3.shape[2:])
    return np.where(np.isinf(m), 0.0, m).astype(x3.dtype)


def _logsumexp(xs, a, out_shape):
    x3 = _x3(xs[0], a)
    m = _lse_shift(x3)
    with np.errstate(divide="ignore"):  # an empty axis or a row of -inf: log(0) = -inf
        return (np.log(np.exp(x3 - m).sum(axis=1, keepdims=True)) + m).reshape(out_shape)


def _logsumexp_vjp(xs, y, g, a):
    p = np.exp(_x3(xs[0], a) - y.reshape(a.outer, 1, a.inner))
    return [(p * g.reshape(a.outer, 1, a.inner)).reshape(xs[0].shape)]


def _logsumexp_jvp(xs, ts, y, a):
    p = np.exp(_x3(xs[0], a) - y.reshape(a.outer, 1, a.inner))
    return (_t3(ts[0], a) * p[None]).sum(axis=2).reshape((-1,) + y.shape)


LOGSUMEXP = OpDef(
    "logsumexp", 306, 1, reduce_rule, LAYOUT,
    forward=_logsumexp, vjp=_logsumexp_vjp, jvp=_logsumexp_jvp, recover=reduce_recover,
    samples=[([(5,)], {}, "real"), ([(3, 4)], {"axis": 0}, "real"),
             ([(2, 3, 4)], {"axis": 1, "keepdims": True}, "real")],
    front_end="x.logsumexp(1)", kernel="reduce", saves="output")


# ---- prod: the gradient of each element is the product of the others (PyTorch's rule: y / x
# without zeros; with one zero, 0 except the zero's, the product of the rest, and NaN where
# the others hold a NaN or an inf, as 0 times it; with two zeros, 0)
def _others(x3):
    """The product of the other elements along axis 1, for each element."""
    zeros = (x3 == 0).sum(axis=1, keepdims=True)
    nonzero = np.where(x3 == 0, 1, x3).prod(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        no_zero = x3.prod(axis=1, keepdims=True) / x3
    bad = ((x3 != 0) & ~np.isfinite(x3)).sum(axis=1, keepdims=True)
    bad_others = bad - ((x3 != 0) & ~np.isfinite(x3))  # NaN or inf among the others
    zero_times = np.where((bad_others > 0) & (zeros == 1), np.nan, 0.0)  # 2 zeros: all 0
    return np.where(zeros == 0, no_zero,
                    np.where((zeros == 1) & (x3 == 0), nonzero, zero_times))


def _prod_vjp(xs, y, g, a):
    return [(_others(_x3(xs[0], a)) * g.reshape(a.outer, 1, a.inner)).reshape(xs[0].shape)]


PROD = OpDef(
    "prod", 307, 1, reduce_rule, LAYOUT,
    forward=lambda xs, a, out_shape: _x3(xs[0], a).prod(axis=1).reshape(out_shape),
    vjp=_prod_vjp,
    jvp=lambda xs, ts, y, a: (_t3(ts[0], a) * _others(_x3(xs[0], a))[None]).sum(axis=2)
    .reshape((-1,) + y.shape),
    recover=reduce_recover,
    samples=[([(5,)], {}, "nonzero"), ([(3, 4)], {"axis": 0}, "nonzero"),
             ([(2, 3, 4)], {"axis": 1, "keepdims": True}, "nonzero"), ([()], {}, "nonzero")],
    front_end="x.prod(1)", kernel="reduce")


# ---- cumsum: running sums along the axis, accumulated in float64 as PyTorch's (a float32 sum
# that overflows and comes back is finite); the gradient is the reversed running sum of g
def _cumsum_vjp(xs, y, g, a):
    g3 = _x3(g, a)
    return [np.flip(np.flip(g3, axis=1).cumsum(axis=1, dtype=np.float64), axis=1)
            .astype(g.dtype).reshape(xs[0].shape)]


CUMSUM = OpDef(
    "cumsum", 308, 1, softmax_rule, LAYOUT,
    forward=lambda xs, a, out_shape: _x3(xs[0], a).cumsum(axis=1, dtype=np.float64)
    .astype(xs[0].dtype).reshape(out_shape),
    vjp=_cumsum_vjp,
    jvp=lambda xs, ts, y, a: _t3(ts[0], a).cumsum(axis=2).reshape((-1,) + y.shape),
    recover=axis_recover,
    samples=[([(5,)], {}, "real"), ([(3, 4)], {"axis": 0}, "real"),
             ([(2, 3, 4)], {"axis": 1}, "real")],
    front_end="x.cumsum(1)", kernel="reduce", saves="nothing")
