"""Family 2, selection: ``where(cond, a, b)``, a or b elementwise by cond != 0, broadcast.

Kernels: kernels/elementwise.py (the broadcast walk over three operands).
"""

from __future__ import annotations

import numpy as np

from .base import (Layout, OpDef, Tail, broadcast_shapes, broadcast_strides, directions, lift,
                   no_attrs, prim, unbroadcast)

__all__ = ["FAMILY", "LAYOUT", "WHERE", "where_rule"]

FAMILY = 2
# the output's ndim axes (not coalesced), their sizes, then each operand's element strides
LAYOUT = Layout(ints=("ndim",), tails=(Tail("dims", "ndim"), Tail("cond_strides", "ndim"),
                                       Tail("a_strides", "ndim"), Tail("b_strides", "ndim")))


def where_rule(name, shapes):
    """cond, a, b broadcastable -> y at the broadcast shape (a 0-d output walks one axis)."""
    out = broadcast_shapes(name, *shapes)
    strides = [broadcast_strides(s, out) for s in shapes] if out else [[0], [0], [0]]
    return out, *LAYOUT.encode(ndim=max(len(out), 1), dims=list(out) or [1],
                               cond_strides=strides[0], a_strides=strides[1],
                               b_strides=strides[2])


def _where_jvp(xs, ts, y, a):
    nd = y.ndim
    c = prim(xs[0], nd) != 0
    ta = lift(ts[1], nd) if ts[1] is not None else 0.0
    tb = lift(ts[2], nd) if ts[2] is not None else 0.0
    return np.broadcast_to(np.where(c, ta, tb), (directions(ts),) + y.shape)


WHERE = OpDef(
    "where", 200, 3, where_rule, LAYOUT,
    forward=lambda xs, a, out_shape: np.where(xs[0] != 0, xs[1], xs[2]),
    vjp=lambda xs, y, g, a: [None, unbroadcast(np.where(xs[0] != 0, g, 0), xs[1].shape),
                             unbroadcast(np.where(xs[0] != 0, 0, g), xs[2].shape)],
    jvp=_where_jvp, recover=no_attrs,
    samples=[([(3, 4), (3, 4), (3, 4)], {}, "cond"), ([(3, 1), (4,), ()], {}, "cond"),
             ([(2, 3), (1, 3), (2, 1)], {}, "cond")],
    front_end="fg.where(x > 1, x, v)", kernel="elementwise")
