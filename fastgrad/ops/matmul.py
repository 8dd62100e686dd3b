"""Family 4, matrix products: batched ``matmul`` and the fused layer rows ``linear`` (x @ W.T +
b) and ``linear_act`` (act(x @ W.T + c)). Kernels: kernels/linalg.py (BLAS or small loops).

All three share the product's fields m, k, n (an (m, k) @ (k, n) product), the number of
batched products and, per product, the element offsets of its A and B blocks; the fused rows
are one unbatched product with B transposed, so the matmul kernels run them.
"""

from __future__ import annotations

import math

import numpy as np

from .base import (Fusion, Layout, OpDef, Tail, broadcast_shapes, broadcast_strides, directions,
                   fail, fmt, lift, no_attrs, prim, unbroadcast)
from .binary import ADD
from .unary import RELU, SIGMOID, TANH

__all__ = ["ACTIVATIONS", "BLAS_MAX_DIM", "FAMILY", "FUSIONS", "LAYOUT", "LINEAR", "LINEAR_ACT",
           "LINEAR_ACTIVATIONS", "LINEAR_ACT_LAYOUT", "LINEAR_LAYOUT", "MATMUL", "check_blas_dims",
           "linear_act_rule", "linear_rule", "matmul_rule"]

FAMILY = 4
LAYOUT = Layout(ints=("m", "k", "n", "batch", "trans_b"),
                tails=(Tail("offsets", "batch", 2, ("a_offset", "b_offset")),),
                shown=("m", "k", "n", "batch", "trans_b"))
LINEAR_LAYOUT = Layout(ints=("m", "k", "n", "batch", "trans_b", "a_offset", "b_offset"),
                       shown=("m", "k", "n"))
# the fused row stores the activation as its unary op code, and whether c is the output's
# shape (1) or a bias row (0)
LINEAR_ACT_LAYOUT = Layout(ints=LINEAR_LAYOUT.ints + ("activation", "c_full"),
                           shown=("m", "k", "n", "activation", "c_full"))

# The activations LINEAR_ACT fuses, by name, as the code of the unary op it applies.
ACTIVATIONS = {d.name: d for d in (TANH, SIGMOID, RELU)}
LINEAR_ACTIVATIONS = {name: d.code for name, d in ACTIVATIONS.items()}
BLAS_MAX_DIM = 2**31 - 1  # BLAS takes m, k and n as 32-bit integers (kernels/blas.py)


def check_blas_dims(name, m, k, n, shapes):
    """Refuse a product whose m, k or n a 32-bit BLAS integer cannot hold."""
    if max(m, k, n) > BLAS_MAX_DIM:
        raise fail(name, f"shapes {', '.join(fmt(s) for s in shapes)} make a product of "
                   f"{m}x{k} by {k}x{n}; BLAS takes sizes up to {BLAS_MAX_DIM}",
                   "split the product into smaller ones (fewer rows per call)")


# ---- matmul
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
        from ..core.memory import guard_memory

        guard_memory(name, math.prod(batch) * (72 + 8 * m * n),
                     f"shapes {fmt(sa)} @ {fmt(sb)} broadcast to {math.prod(batch)} products; "
                     "use smaller batch axes")
    offsets = []
    for idx in np.ndindex(*batch):
        offsets += [sum(i * s for i, s in zip(idx, ba)) * m * k,
                    sum(i * s for i, s in zip(idx, bb)) * k * n]
    return batch + (m, n), *LAYOUT.encode(m=m, k=k, n=n, batch=math.prod(batch),
                                          trans_b=int(bool(trans_b)), offsets=offsets)


def _matmul_vjp(xs, y, g, a):
    x, b = xs
    bt = np.swapaxes(b, -1, -2) if a.trans_b else b
    gx = np.matmul(g, np.swapaxes(bt, -1, -2))
    gb = np.matmul(np.swapaxes(x, -1, -2), g)
    gb = np.swapaxes(gb, -1, -2) if a.trans_b else gb
    return [unbroadcast(gx, x.shape), unbroadcast(gb, b.shape)]


def _matmul_jvp(xs, ts, y, a):
    nd = y.ndim
    x, b = prim(xs[0], nd), prim(xs[1], nd)
    tb = None if ts[1] is None else lift(ts[1], nd)
    if a.trans_b:  # B is stored (n, k) and used transposed
        b = np.swapaxes(b, -1, -2)
        tb = None if tb is None else np.swapaxes(tb, -1, -2)
    out = 0
    if ts[0] is not None:
        out = out + np.matmul(lift(ts[0], nd), b)
    if tb is not None:
        out = out + np.matmul(x, tb)
    return np.broadcast_to(out, (directions(ts),) + y.shape)


MATMUL = OpDef(
    "matmul", 400, 2, matmul_rule, LAYOUT,
    forward=lambda xs, a, out_shape: np.matmul(
        xs[0], np.swapaxes(xs[1], -1, -2) if a.trans_b else xs[1]),
    vjp=_matmul_vjp, jvp=_matmul_jvp,
    recover=lambda shapes, out_shape, a: [dict(trans_b=bool(a.trans_b))],
    samples=[([(3, 4), (4, 5)], {}, "real"), ([(1, 6), (6, 1)], {}, "real"),
             ([(2, 3, 4), (4, 2)], {}, "real"), ([(2, 1, 3, 4), (3, 4, 2)], {}, "real"),
             ([(40, 30), (30, 20)], {}, "real"), ([(3, 4), (5, 4)], {"trans_b": True}, "real"),
             ([(40, 30), (20, 30)], {"trans_b": True}, "real")],
    front_end="x @ x.T", kernel="linalg", saves="other factor")


# ---- linear: x @ W.T + b in one row (bench: linear)
def _weight_nk(name, sx, sw, trans_b, call):
    """(n, k, m) of an x (..., k) times weight product: W is (n, k), used transposed, or with
    ``trans_b=False`` (k, n), used as it is (what the fusion pass makes of ``x @ W + b``)."""
    if len(sx) < 1 or len(sw) != 2:
        raise fail(name, f"needs x (..., k) and a 2-D weight, got {fmt(sx)} and {fmt(sw)}",
                   f"use {call}")
    n, k = sw if trans_b else sw[::-1]
    if sx[-1] != k:
        raise fail(name, f"x {fmt(sx)}, weight {fmt(sw)}: x's last axis must be {k}",
                   "fix the layer sizes (weight is (out, in))")
    return n, k, math.prod(sx[:-1])


def _as_nk(w, a):
    """The weight as the (n, k) matrix the product uses transposed."""
    return w if a.trans_b else w.T


def linear_rule(name, shapes, trans_b=True):
    """x (..., k), W (n, k), b (n,) -> (..., n): one unbatched x2 @ W.T product plus a bias row
    (``trans_b=False``: W is (k, n) and the product x2 @ W).

    Same integer attributes as an unbatched matmul (x seen as an (m, k) matrix), so the matmul
    kernels run it."""
    sx, sw, sb = shapes
    n, k, m = _weight_nk(name, sx, sw, trans_b, "fg.nn.functional.linear(x, weight, bias)")
    if len(sb) != 1 or sb[0] != n:
        raise fail(name, f"x {fmt(sx)}, weight {fmt(sw)}, bias {fmt(sb)}: the bias must be "
                   f"({n},)", "fix the layer sizes (weight is (out, in))")
    check_blas_dims(name, m, k, n, shapes)
    return tuple(sx[:-1]) + (n,), *LINEAR_LAYOUT.encode(m=m, k=k, n=n, batch=1,
                                                        trans_b=int(bool(trans_b)),
                                                        a_offset=0, b_offset=0)


def _linear_vjp(xs, y, g, a):
    x, w, _ = xs
    wn = _as_nk(w, a)
    g2, x2 = g.reshape(-1, wn.shape[0]), x.reshape(-1, wn.shape[1])
    gw = g2.T @ x2
    return [(g2 @ wn).reshape(x.shape), gw if a.trans_b else gw.T, g2.sum(axis=0)]


def _linear_jvp(xs, ts, y, a):
    """y = x @ W.T + c: ty = tx @ W.T + x @ tW.T + tc, c a bias (n,) or of y's shape."""
    x, w = xs[0], _as_nk(xs[1], a)
    out = 0
    if ts[0] is not None:
        out = out + ts[0] @ w.T
    if ts[1] is not None:
        out = out + np.einsum("...i,kni->k...n", x, ts[1] if a.trans_b
                              else np.swapaxes(ts[1], -1, -2))
    if ts[2] is not None:
        out = out + (ts[2] if ts[2].shape[1:] == y.shape else lift(ts[2], y.ndim))
    return np.broadcast_to(out, (directions(ts),) + y.shape)


LINEAR = OpDef(
    "linear", 401, 3, linear_rule, LINEAR_LAYOUT,
    forward=lambda xs, a, out_shape: xs[0] @ _as_nk(xs[1], a).T + xs[2],
    vjp=_linear_vjp, jvp=_linear_jvp,
    recover=lambda shapes, out_shape, a: [dict(trans_b=bool(a.trans_b))],
    samples=[([(3, 4), (5, 4), (5,)], {}, "real"), ([(4,), (3, 4), (3,)], {}, "real"),
             ([(2, 3, 4), (5, 4), (5,)], {}, "real"), ([(1, 6), (1, 6), (1,)], {}, "real"),
             ([(40, 30), (20, 30), (20,)], {}, "real"),
             ([(3, 4), (4, 5), (5,)], {"trans_b": False}, "real"),
             ([(40, 30), (30, 20), (20,)], {"trans_b": False}, "real")],
    front_end="fg.nn.functional.linear(x, x, v[:3])", kernel="linalg", saves="other factor")


# ---- linear_act: act(x @ W.T + c), c a bias (n,) or an addend of the output's shape, act
# tanh / sigmoid / relu: an MLP layer or an Elman RNN cell in one row (bench: rnn, 2 fewer rows
# per step)
def linear_act_rule(name, shapes, activation, trans_b=True):
    """x (..., k), W (n, k), c (n,) or (..., n) -> (..., n): act(x2 @ W.T + c), one unbatched
    trans_b product (x seen as (m, k)) then the add and the activation while the output is hot
    (``trans_b=False``: W is (k, n) and the product x2 @ W)."""
    sx, sw, sc = shapes
    if activation not in ACTIVATIONS:
        raise fail(name, f"unknown activation {activation!r}",
                   f"use one of {', '.join(ACTIVATIONS)}")
    n, k, m = _weight_nk(name, sx, sw, trans_b,
                         "fg.nn.functional.linear_act(x, weight, c, activation)")
    out = tuple(sx[:-1]) + (n,)
    check_blas_dims(name, m, k, n, shapes)
    if tuple(sc) == (n,):
        full = 0
    elif tuple(sc) == out:
        full = 1
    else:
        raise fail(name, f"c {fmt(sc)} must be a bias ({n},) or have the output's shape "
                   f"{fmt(out)}", "broadcast c to the output's shape first")
    return out, *LINEAR_ACT_LAYOUT.encode(m=m, k=k, n=n, batch=1, trans_b=int(bool(trans_b)),
                                          a_offset=0,
                                          b_offset=0, activation=ACTIVATIONS[activation].code,
                                          c_full=full)


def _activation(a):
    return next(d for d in ACTIVATIONS.values() if d.code == a.activation)


def _linear_act_vjp(xs, y, g, a):
    """The activation's VJP (from its pre-activation), then linear's."""
    x, w, c = xs
    wn = _as_nk(w, a)
    z = x @ wn.T + c
    gz = _activation(a).np_vjp(z, y, g, 0.0, 0.0)
    g2, x2 = gz.reshape(-1, wn.shape[0]), x.reshape(-1, wn.shape[1])
    gc = gz if c.shape == gz.shape and a.c_full else g2.sum(axis=0)
    gw = g2.T @ x2
    return [(g2 @ wn).reshape(x.shape), gw if a.trans_b else gw.T, gc.reshape(c.shape)]


def _linear_act_jvp(xs, ts, y, a):
    """y = act(z), z = x @ W.T + c: ty = act'(z) tz, with tz linear's tangent and the slope
    from the activation's own (diagonal) VJP."""
    z = xs[0] @ _as_nk(xs[1], a).T + xs[2]
    return _activation(a).np_vjp(z[None], y[None], _linear_jvp(xs, ts, y, a), 0.0, 0.0)


LINEAR_ACT = OpDef(
    "linear_act", 402, 3, linear_act_rule, LINEAR_ACT_LAYOUT,
    forward=lambda xs, a, out_shape: _activation(a).np_forward(
        xs[0] @ _as_nk(xs[1], a).T + xs[2], 0.0, 0.0),
    vjp=_linear_act_vjp, jvp=_linear_act_jvp,
    recover=lambda shapes, out_shape, a: [dict(activation=name, trans_b=bool(a.trans_b))
                                          for name, d in ACTIVATIONS.items()
                                          if d.code == a.activation],
    samples=[([(3, 4), (5, 4), (5,)], {"activation": "tanh"}, "real"),
             ([(1, 6), (7, 6), (1, 7)], {"activation": "tanh"}, "real"),
             ([(2, 3, 4), (5, 4), (2, 3, 5)], {"activation": "sigmoid"}, "real"),
             ([(4,), (3, 4), (3,)], {"activation": "sigmoid"}, "real"),
             ([(3, 4), (5, 4), (3, 5)], {"activation": "relu"}, "real"),
             ([(40, 30), (20, 30), (40, 20)], {"activation": "tanh"}, "real"),
             ([(3, 4), (4, 5), (3, 5)], {"activation": "tanh", "trans_b": False}, "real"),
             ([(2, 4), (4, 5), (5,)], {"activation": "relu", "trans_b": False}, "real"),
             ([(40, 30), (30, 20), (40, 20)], {"activation": "sigmoid", "trans_b": False},
              "real")],
    front_end='fg.nn.functional.linear_act(x, x, v[:3], "tanh")', kernel="linalg",
    saves="other factor")


# ---- fusion: the plain rows of a layer, as people write it, become one of the rows above
def _product_row(mm, c, tools, act=None):
    """(op, operands, attrs) of one LINEAR (``act`` None) or LINEAR_ACT row computing
    ``act(x @ B + c)`` from matmul row ``mm`` (x @ B) and addend node ``c``, or None. B is the
    weight used transposed when it is ``W.T`` (a transposed view, or a trans_b product) and as
    it is otherwise; c must be a bias (n,) (LINEAR_ACT also takes c of the output's shape)."""
    x, b = mm.inputs
    out = tools.shape(mm.out)
    if mm.attrs.batch != 1 or len(out) != 2 or len(tools.shape(x)) != 2:
        return None
    if mm.attrs.trans_b:
        w, trans_b = b, True
    elif tools.transposed(b) >= 0:
        w, trans_b = tools.transposed(b), True
    else:
        w, trans_b = b, False
    shape_c = tools.shape(c)
    if act is None:
        return (LINEAR.code, [x, w, c], dict(trans_b=trans_b)) if shape_c == out[-1:] else None
    if shape_c not in (out[-1:], out):
        return None
    return LINEAR_ACT.code, [x, w, c], dict(activation=act, trans_b=trans_b)


def _activation_name(row):
    return next(n for n, d in ACTIVATIONS.items() if d.code == row.op)


def _product_add(rows, tools):
    """x @ B + c (a matmul row, an add row): one LINEAR row."""
    mm, add = rows
    if tools.shape(add.out) != tools.shape(mm.out):
        return None
    row = _product_row(mm, add.inputs[1 - add.link], tools)
    return None if row is None else [(1, *row)]


def _product_add_act(rows, tools):
    """act(x @ B + c) (matmul, add, activation rows): one LINEAR_ACT row."""
    mm, add, act = rows
    if tools.shape(add.out) != tools.shape(mm.out):
        return None
    row = _product_row(mm, add.inputs[1 - add.link], tools, _activation_name(act))
    return None if row is None else [(2, *row)]


def _product_add_add_act(rows, tools):
    """act((x @ B + c1) + c2), as an RNN cell with its input projection inside is written: an
    add row c1 + c2 (into the second add's node) and one LINEAR_ACT row of act(x @ B + that);
    the three sums are rounded in another order than as written."""
    mm, first, second, act = rows
    out = tools.shape(mm.out)
    c1, c2 = first.inputs[1 - first.link], second.inputs[1 - second.link]
    if tools.shape(first.out) != out or tools.shape(second.out) != out or \
            np.broadcast_shapes(tools.shape(c1), tools.shape(c2)) != out:
        return None
    row = _product_row(mm, second.out, tools, _activation_name(act))
    return None if row is None else [(2, ADD.code, [c1, c2], {}), (3, *row)]


_ACT_CODES = {d.code for d in ACTIVATIONS.values()}
# Tried in this order: the longest chain first.
FUSIONS = (
    Fusion("linear_act", ({MATMUL.code}, {ADD.code}, {ADD.code}, _ACT_CODES),
           _product_add_add_act,
           samples=("(x @ w.T + c + b).tanh()", "(c + (b + x @ wt)).relu()")),
    Fusion("linear_act", ({MATMUL.code}, {ADD.code}, _ACT_CODES), _product_add_act,
           samples=("(x @ w.T + b).tanh()", "(b + x @ w.T).sigmoid()", "(x @ wt + b).relu()",
                    "(x @ w.T + c).tanh()", "(c + x @ wt).sigmoid()")),
    Fusion("linear", ({MATMUL.code}, {ADD.code}), _product_add,
           samples=("x @ w.T + b", "b + x @ wt")),
)
