"""Family 0, unary elementwise ops: y = f(x, c0, c1), the two float constants c0, c1 in fparams.

Each op is one ``unary(...)`` call: name, code (append-only), NumPy forward ``f(x, c0, c1)``,
NumPy local gradient ``vjp(x, y, g, c0, c1) -> g * f'(x)``, the input domain its samples are
drawn from, sample constants, the front-end call that records it and what its VJP reads. The
JVP is the VJP applied to the tangent: an elementwise Jacobian is diagonal, hence symmetric.
Kernels: ``unary_forward`` / ``unary_vjp`` in kernels/elementwise.py.
"""

from __future__ import annotations

import numpy as np

from .base import UNARY_SHAPES, Layout, OpDef, real

__all__ = ["ABS", "ADD_SCALAR", "CLIP", "COS", "DIV_SCALAR", "EXP", "EXPM1", "FAMILY", "LAYOUT",
           "LEAKY_RELU", "LOG", "LOG1P", "MUL_SCALAR", "NEG", "POW_SCALAR", "RDIV_SCALAR", "RELU",
           "RPOW_SCALAR", "SIGMOID", "SIN", "SOFTPLUS", "SQRT", "TANH", "slope", "softplus",
           "stable_sigmoid", "unary", "unary_rule"]

FAMILY = 0
LAYOUT = Layout(floats=("c0", "c1"), shown=("c0", "c1"))


def unary_rule(name, shapes, c0=0.0, c1=0.0):
    """x (...) -> y (...), same shape; ``c0, c1``: the op's constants (0 when unused)."""
    return shapes[0], *LAYOUT.encode(c0=real(name, "the constant", c0),
                                     c1=real(name, "the constant", c1))


def unary(name, code, forward, vjp, domain="real", attrs=None, *, front_end, saves="inputs"):
    """The whole definition of a unary elementwise op from its two NumPy functions."""
    return OpDef(
        name, code, 1, unary_rule, LAYOUT,
        forward=lambda xs, a, out_shape: forward(xs[0], a.c0, a.c1),
        vjp=lambda xs, y, g, a: [vjp(xs[0], y, g, a.c0, a.c1)],
        jvp=lambda xs, ts, y, a: vjp(xs[0], y, ts[0], a.c0, a.c1),  # diagonal: J^T t == J t
        recover=lambda shapes, out_shape, a: [dict(c0=a.c0, c1=a.c1)],
        samples=[([s], attrs or {}, domain) for s in UNARY_SHAPES],
        front_end=front_end, kernel="elementwise", np_forward=forward, np_vjp=vjp, saves=saves)


def stable_sigmoid(x):
    """1 / (1 + exp(-x)) without overflow for large |x|."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def softplus(x):
    """log(1 + exp(x)) without overflow for large x."""
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


def slope(x, s):
    """A piecewise op's local slope ``s`` (an array or a bool mask of x's shape), NaN where x
    is NaN: the slope at a NaN is undefined (np.heaviside(nan, 0) is nan), so a NaN input gets a
    NaN gradient rather than a silent 0 or 1."""
    return np.where(np.isnan(x), np.nan, s).astype(np.result_type(x, np.float32))


# fmt: off
NEG = unary("neg", 1, lambda x, c0, c1: -x, lambda x, y, g, c0, c1: -g,
            front_end="-x", saves="nothing")
ABS = unary("abs", 2, lambda x, c0, c1: np.abs(x), lambda x, y, g, c0, c1: g * np.sign(x),
            "nonzero", front_end="abs(x)")
EXP = unary("exp", 3, lambda x, c0, c1: np.exp(x), lambda x, y, g, c0, c1: g * y,
            front_end="fg.exp(x)", saves="output")
LOG = unary("log", 4, lambda x, c0, c1: np.log(x), lambda x, y, g, c0, c1: g / x,
            "positive", front_end="fg.log(x)")
SQRT = unary("sqrt", 5, lambda x, c0, c1: np.sqrt(x), lambda x, y, g, c0, c1: g * 0.5 / y,
             "positive", front_end="fg.sqrt(x)", saves="output")
TANH = unary("tanh", 6, lambda x, c0, c1: np.tanh(x), lambda x, y, g, c0, c1: g * (1 - y * y),
             front_end="x.tanh()", saves="output")
SIGMOID = unary("sigmoid", 7, lambda x, c0, c1: stable_sigmoid(x),
                lambda x, y, g, c0, c1: g * y * (1 - y), front_end="x.sigmoid()", saves="output")
# NaN propagates as in NumPy and PyTorch: relu(nan) = np.maximum(nan, 0) = nan
RELU = unary("relu", 8, lambda x, c0, c1: np.maximum(x, 0).astype(x.dtype),
             lambda x, y, g, c0, c1: g * slope(x, x > 0), "nonzero", front_end="fg.relu(x)")
LEAKY_RELU = unary("leaky_relu", 9, lambda x, c0, c1: np.where(x > 0, x, c0 * x).astype(x.dtype),
                   lambda x, y, g, c0, c1: g * slope(x, np.where(x > 0, 1, c0)), "nonzero",
                   {"c0": 0.01}, front_end="fg.leaky_relu(x, 0.1)")
SOFTPLUS = unary("softplus", 10, lambda x, c0, c1: softplus(x),
                 lambda x, y, g, c0, c1: g * stable_sigmoid(x), front_end="fg.softplus(x)")
CLIP = unary("clip", 11, lambda x, c0, c1: np.clip(x, c0, c1),
             lambda x, y, g, c0, c1: g * slope(x, (x >= c0) & (x <= c1)), "real",
             {"c0": -0.5, "c1": 0.7}, front_end="x.clip(0.6, 1.5)")
ADD_SCALAR = unary("add_scalar", 12, lambda x, c0, c1: x + c0, lambda x, y, g, c0, c1: g,
                   "real", {"c0": 1.5}, front_end="x + 1", saves="nothing")
MUL_SCALAR = unary("mul_scalar", 13, lambda x, c0, c1: x * c0, lambda x, y, g, c0, c1: g * c0,
                   "real", {"c0": -2.5}, front_end="x * 2", saves="nothing")
DIV_SCALAR = unary("div_scalar", 14, lambda x, c0, c1: x / c0, lambda x, y, g, c0, c1: g / c0,
                   "real", {"c0": 3.0}, front_end="x / 3", saves="nothing")
RDIV_SCALAR = unary("rdiv_scalar", 15, lambda x, c0, c1: c0 / x,
                    lambda x, y, g, c0, c1: -g * y / x, "nonzero", {"c0": 2.0},
                    front_end="2 / x")
POW_SCALAR = unary("pow_scalar", 16, lambda x, c0, c1: x**c0,
                   lambda x, y, g, c0, c1: g * c0 * x ** (c0 - 1), "positive", {"c0": 1.7},
                   front_end="x**2")
RPOW_SCALAR = unary("rpow_scalar", 17, lambda x, c0, c1: c0**x,
                    lambda x, y, g, c0, c1: g * y * np.log(c0), "real", {"c0": 1.8},
                    front_end="2**x")
SIN = unary("sin", 18, lambda x, c0, c1: np.sin(x), lambda x, y, g, c0, c1: g * np.cos(x),
            front_end="x.sin()")
COS = unary("cos", 19, lambda x, c0, c1: np.cos(x), lambda x, y, g, c0, c1: -g * np.sin(x),
            front_end="x.cos()")
# log(1 + x) and exp(x) - 1, accurate near 0; expm1' = exp(x) = y + 1 reads the output (PyTorch)
LOG1P = unary("log1p", 20, lambda x, c0, c1: np.log1p(x), lambda x, y, g, c0, c1: g / (1 + x),
              "positive", front_end="x.log1p()")
EXPM1 = unary("expm1", 21, lambda x, c0, c1: np.expm1(x), lambda x, y, g, c0, c1: g * (y + 1),
              front_end="x.expm1()", saves="output")
# fmt: on
