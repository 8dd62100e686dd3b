"""Family 1, binary elementwise ops with NumPy broadcasting: y = f(a, b).

Each op is one ``binary(...)`` call: name, code (append-only), NumPy forward ``f(a, b)``, NumPy
local gradients ``vjp(a, b, y, g) -> (ga, gb)`` at the broadcast shape (summed back over the
broadcast axes here), the sample domain and the front-end call. The JVP reuses the VJP (a
diagonal Jacobian). Comparisons are not differentiable. Kernels: ``binary_run_forward`` /
``binary_run_vjp`` in kernels/elementwise.py, walking the coalesced broadcast of the layout.
"""

from __future__ import annotations

import numpy as np

from .base import (BINARY_SHAPES, Layout, OpDef, Tail, broadcast_shapes, broadcast_strides,
                   coalesce, directions, lift, no_attrs, prim, unbroadcast)
from .unary import softplus, stable_sigmoid

__all__ = ["ADD", "BCE_LOGITS", "DIV", "EQ", "FAMILY", "GE", "GT", "LAYOUT", "LE", "LT", "MAXIMUM",
           "MINIMUM", "MUL", "NE", "POW", "SUB", "binary", "binary_rule", "comparison", "nan_at"]

FAMILY = 1
# the broadcast walk: ndim coalesced axes, their sizes, then each operand's element strides
LAYOUT = Layout(ints=("ndim",), tails=(Tail("dims", "ndim"), Tail("a_strides", "ndim"),
                                       Tail("b_strides", "ndim")))


def binary_rule(name, shapes):
    """a, b broadcastable -> y at the broadcast shape, walked as few contiguous runs as can be."""
    out = broadcast_shapes(name, *shapes)
    dims, (sa, sb) = coalesce(out, *(broadcast_strides(s, out) for s in shapes))
    return out, *LAYOUT.encode(ndim=len(dims), dims=dims, a_strides=sa, b_strides=sb)


def _vjp_of(vjp):
    def rule(xs, y, g, a):
        ga, gb = vjp(xs[0], xs[1], y, g)
        return [unbroadcast(np.broadcast_to(ga, y.shape), xs[0].shape),
                unbroadcast(np.broadcast_to(gb, y.shape), xs[1].shape)]

    return rule


def _jvp_of(vjp):
    def rule(xs, ts, y, a):
        nd = y.ndim
        pa, pb, py = prim(xs[0], nd), prim(xs[1], nd), prim(y, nd)
        out = 0
        if ts[0] is not None:
            out = out + vjp(pa, pb, py, lift(ts[0], nd))[0]
        if ts[1] is not None:
            out = out + vjp(pa, pb, py, lift(ts[1], nd))[1]
        return np.broadcast_to(out, (directions(ts),) + y.shape)

    return rule


def binary(name, code, forward, vjp, domain="real", *, front_end, saves="inputs",
           integers=False):
    """The whole definition of a binary elementwise op from its two NumPy functions
    (``vjp=None``: not differentiable)."""
    return OpDef(
        name, code, 2, binary_rule, LAYOUT,
        forward=lambda xs, a, out_shape: forward(xs[0], xs[1]),
        vjp=None if vjp is None else _vjp_of(vjp), jvp=None if vjp is None else _jvp_of(vjp),
        recover=no_attrs, samples=[(list(s), {}, domain) for s in BINARY_SHAPES],
        front_end=front_end, kernel="elementwise", differentiable=vjp is not None,
        np_forward=forward, np_vjp=vjp, saves=saves, integers=integers)


def comparison(name, code, fn, *, front_end):
    """A comparison: 1.0 where ``fn(a, b)`` holds, else 0.0, in the operands' dtype."""
    return binary(name, code, lambda a, b: fn(a, b).astype(a.dtype), None, front_end=front_end)


def nan_at(x):
    """NaN where x is NaN, else 0: added to the gradient of an operand that a selection
    (maximum, minimum) may pick, so that a NaN operand gets a NaN gradient."""
    return np.where(np.isnan(x), np.nan, 0.0).astype(np.result_type(x, np.float32))


def _pow_vjp(a, b, y, g):
    """d/da a^b = b a^(b-1), 0 where b == 0; d/db a^b = a^b log a, 0 where a == 0 and b >= 0
    (so 0 ** b has a zero gradient in b, -inf where b < 0): PyTorch's rules, and the kernel's."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return (np.where(b == 0, 0.0, g * b * a ** (b - 1)),
                np.where((a == 0) & (b >= 0), 0.0, g * (y * np.log(a))))


# fmt: off
ADD = binary("add", 100, lambda a, b: a + b, lambda a, b, y, g: (g, g),
             front_end="x + v", saves="nothing", integers=True)
SUB = binary("sub", 101, lambda a, b: a - b, lambda a, b, y, g: (g, -g),
             front_end="x - v", saves="nothing", integers=True)
MUL = binary("mul", 102, lambda a, b: a * b, lambda a, b, y, g: (g * b, g * a),
             front_end="x * v", saves="other factor", integers=True)
DIV = binary("div", 103, lambda a, b: a / b, lambda a, b, y, g: (g / b, -g * y / b), "nonzero",
             front_end="x / v")
POW = binary("pow", 104, lambda a, b: a**b, lambda a, b, y, g: _pow_vjp(a, b, y, g),
             "positive", front_end="x**v")
MAXIMUM = binary("maximum", 105, lambda a, b: np.maximum(a, b),
                 lambda a, b, y, g: (g * (a > b) + 0.5 * g * (a == b) + nan_at(a),
                                     g * (b > a) + 0.5 * g * (a == b) + nan_at(b)),
                 front_end="fg.maximum(x, v)", integers=True)
MINIMUM = binary("minimum", 106, lambda a, b: np.minimum(a, b),
                 lambda a, b, y, g: (g * (a < b) + 0.5 * g * (a == b) + nan_at(a),
                                     g * (b < a) + 0.5 * g * (a == b) + nan_at(b)),
                 front_end="fg.minimum(x, v)", integers=True)
BCE_LOGITS = binary("bce_logits", 107, lambda a, b: softplus(a) - a * b,
                    lambda a, b, y, g: (g * (stable_sigmoid(a) - b), -g * a),
                    front_end="fg.binary_cross_entropy_with_logits(x, x * 0.5)")
GT = comparison("gt", 108, np.greater, front_end="x > v")
GE = comparison("ge", 109, np.greater_equal, front_end="x >= v")
LT = comparison("lt", 110, np.less, front_end="x < v")
LE = comparison("le", 111, np.less_equal, front_end="x <= v")
EQ = comparison("eq", 112, np.equal, front_end="x == v")
NE = comparison("ne", 113, np.not_equal, front_end="x != v")
# fmt: on
