"""Family 0, unary elementwise ops: y = f(x, c0, c1), the two float constants c0, c1 in fparams.

Each op is one ``unary(...)`` call: name, code (append-only), NumPy forward ``f(x, c0, c1)``,
NumPy local gradient ``vjp(x, y, g, c0, c1) -> g * f'(x)``, the input domain its samples are
drawn from, sample constants, the front-end call that records it and what its VJP reads. The
JVP is the VJP applied to the tangent: an elementwise Jacobian is diagonal, hence symmetric.
Kernels: ``unary_forward`` / ``unary_vjp`` in kernels/elementwise.py.
"""

from __future__ import annotations

import math

import numpy as np

from .base import UNARY_SHAPES, Layout, OpDef, real

__all__ = ["ABS", "ACOS", "ACOSH", "ADD_SCALAR", "ASIN", "ASINH", "ATAN", "ATANH", "CEIL",
           "CLIP", "COS", "COSH", "DIV_SCALAR", "ELU", "EXP", "EXPM1", "FAMILY", "FLOOR", "GELU",
           "HARDSWISH", "LAYOUT", "LEAKY_RELU", "LOG", "LOG10", "LOG1P", "LOG2", "LOGSIGMOID",
           "MISH", "MUL_SCALAR", "NEG", "POW_SCALAR", "RDIV_SCALAR", "RELU", "RELU6", "ROUND",
           "RPOW_SCALAR", "RSQRT", "SELU", "SELU_ALPHA", "SELU_SCALE", "SIGMOID", "SIGN", "SILU",
           "SIN", "SINH", "SOFTPLUS", "SQRT", "TAN", "TANH", "erf", "slope", "softplus",
           "stable_sigmoid", "unary", "unary_rule"]

FAMILY = 0
LAYOUT = Layout(floats=("c0", "c1"), shown=("c0", "c1"))


def unary_rule(name, shapes, c0=0.0, c1=0.0):
    """x (...) -> y (...), same shape; ``c0, c1``: the op's constants (0 when unused)."""
    return shapes[0], *LAYOUT.encode(c0=real(name, "the constant", c0),
                                     c1=real(name, "the constant", c1))


def unary(name, code, forward, vjp, domain="real", attrs=None, *, front_end, saves="inputs",
          integers=False):
    """The whole definition of a unary elementwise op from its two NumPy functions."""
    return OpDef(
        name, code, 1, unary_rule, LAYOUT,
        forward=lambda xs, a, out_shape: forward(xs[0], a.c0, a.c1),
        vjp=lambda xs, y, g, a: [vjp(xs[0], y, g, a.c0, a.c1)],
        jvp=lambda xs, ts, y, a: vjp(xs[0], y, ts[0], a.c0, a.c1),  # diagonal: J^T t == J t
        recover=lambda shapes, out_shape, a: [dict(c0=a.c0, c1=a.c1)],
        samples=[([s], attrs or {}, domain) for s in UNARY_SHAPES],
        front_end=front_end, kernel="elementwise", np_forward=forward, np_vjp=vjp, saves=saves,
        integers=integers)


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


def _rpow_vjp(x, y, g, c):
    """d/dx c^x = c^x log c; 0 where c == 0 and x >= 0 (0 ** x), as PyTorch's pow."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((c == 0) & (x >= 0), 0.0, g * (y * np.log(c)))


def _softplus_bt(x, beta, threshold):
    """PyTorch's softplus: log(1 + exp(beta x)) / beta, and x itself where beta x > threshold."""
    if beta == 0:
        return softplus(x)
    y = softplus(beta * x) / beta
    return np.where(beta * x > threshold, x, y).astype(y.dtype)


def _softplus_slope(x, beta, threshold):
    if beta == 0:
        return stable_sigmoid(x)
    s = stable_sigmoid(beta * x)
    return np.where(beta * x > threshold, 1.0, s).astype(s.dtype)


# fmt: off
NEG = unary("neg", 1, lambda x, c0, c1: -x, lambda x, y, g, c0, c1: -g,
            front_end="-x", saves="nothing", integers=True)
ABS = unary("abs", 2, lambda x, c0, c1: np.abs(x), lambda x, y, g, c0, c1: g * np.sign(x),
            "nonzero", front_end="abs(x)", integers=True)
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
# c0: beta, c1: the threshold above which beta * x passes x unchanged; c0 = 0 (rows recorded
# before beta existed): beta 1 and no threshold
SOFTPLUS = unary("softplus", 10, lambda x, c0, c1: _softplus_bt(x, c0, c1),
                 lambda x, y, g, c0, c1: g * _softplus_slope(x, c0, c1), "real",
                 {"c0": 2.0, "c1": 1.5}, front_end="fg.softplus(x)")
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
RPOW_SCALAR = unary("rpow_scalar", 17, lambda x, c0, c1: c0**x, lambda x, y, g, c0, c1:
                    _rpow_vjp(x, y, g, c0), "real", {"c0": 1.8}, front_end="2**x")
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


# ---- the trigonometric and hyperbolic functions, their inverses, logs in other bases
# fmt: off
TAN = unary("tan", 22, lambda x, c0, c1: np.tan(x), lambda x, y, g, c0, c1: g * (1 + y * y),
            "unit", front_end="x.tan()", saves="output")
ASIN = unary("asin", 23, lambda x, c0, c1: np.arcsin(x),
             lambda x, y, g, c0, c1: g / np.sqrt(1 - x * x), "unit", front_end="x.asin()")
ACOS = unary("acos", 24, lambda x, c0, c1: np.arccos(x),
             lambda x, y, g, c0, c1: -g / np.sqrt(1 - x * x), "unit", front_end="x.acos()")
ATAN = unary("atan", 25, lambda x, c0, c1: np.arctan(x),
             lambda x, y, g, c0, c1: g / (1 + x * x), front_end="x.atan()")
SINH = unary("sinh", 26, lambda x, c0, c1: np.sinh(x), lambda x, y, g, c0, c1: g * np.cosh(x),
             front_end="x.sinh()")
COSH = unary("cosh", 27, lambda x, c0, c1: np.cosh(x), lambda x, y, g, c0, c1: g * np.sinh(x),
             front_end="x.cosh()")
ASINH = unary("asinh", 28, lambda x, c0, c1: np.arcsinh(x),
              lambda x, y, g, c0, c1: g / np.sqrt(x * x + 1), front_end="x.asinh()")
ACOSH = unary("acosh", 29, lambda x, c0, c1: np.arccosh(x),
              lambda x, y, g, c0, c1: g / np.sqrt(x * x - 1), "above1", front_end="x.acosh()")
ATANH = unary("atanh", 30, lambda x, c0, c1: np.arctanh(x),
              lambda x, y, g, c0, c1: g / (1 - x * x), "unit", front_end="x.atanh()")
LOG2 = unary("log2", 31, lambda x, c0, c1: np.log2(x),
             lambda x, y, g, c0, c1: g / (x * np.log(2.0)), "positive", front_end="x.log2()")
LOG10 = unary("log10", 32, lambda x, c0, c1: np.log10(x),
              lambda x, y, g, c0, c1: g / (x * np.log(10.0)), "positive", front_end="x.log10()")
# 1 / sqrt(x); its slope -y^3 / 2 reads the output, as PyTorch
RSQRT = unary("rsqrt", 33, lambda x, c0, c1: 1 / np.sqrt(x),
              lambda x, y, g, c0, c1: -0.5 * g * (y * y * y), "positive", front_end="x.rsqrt()",
              saves="output")


# ---- steps: a zero gradient everywhere (PyTorch's: even where the seed or x is NaN)
def _no_slope(x, y, g, c0, c1):
    return np.zeros(np.broadcast(x, g).shape, np.result_type(x, np.float32))


FLOOR = unary("floor", 34, lambda x, c0, c1: np.floor(x), _no_slope, front_end="x.floor()",
              saves="nothing")
CEIL = unary("ceil", 35, lambda x, c0, c1: np.ceil(x), _no_slope, front_end="x.ceil()",
             saves="nothing")
# half to even, as torch.round and np.rint
ROUND = unary("round", 36, lambda x, c0, c1: np.rint(x), _no_slope, front_end="x.round()",
              saves="nothing")
SIGN = unary("sign", 37, lambda x, c0, c1: np.sign(x), _no_slope, front_end="x.sign()",
             saves="nothing")
# fmt: on


# ---- activations, each with PyTorch's forward and backward formulas
_SQRT_2_PI = np.sqrt(2.0 / np.pi)


def erf(x):
    """The error function elementwise (a reference: math.erf in float64, cast back)."""
    x = np.asarray(x)
    return np.vectorize(math.erf, otypes=[np.float64])(x).astype(np.result_type(x, np.float32))


def _gelu(x, c0, c1):
    if c0 == 0.0:  # exact: x * Phi(x)
        return 0.5 * x * (1 + erf(x / np.sqrt(2.0)))
    return 0.5 * x * (1 + np.tanh(_SQRT_2_PI * (x + 0.044715 * (x * x * x))))


def _gelu_vjp(x, y, g, c0, c1):
    if c0 == 0.0:
        return g * (0.5 * (1 + erf(x / np.sqrt(2.0))) + x * np.exp(-0.5 * x * x) / np.sqrt(2 * np.pi))
    t = np.tanh(_SQRT_2_PI * (x + 0.044715 * (x * x * x)))
    return g * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _SQRT_2_PI * (1 + 3 * 0.044715 * (x * x)))


def _mish_vjp(x, y, g, c0, c1):
    t = np.tanh(softplus(x))
    return g * (t + x * stable_sigmoid(x) * (1 - t * t))


def _hardswish_vjp(x, y, g, c0, c1):
    return g * slope(x, np.where(x < -3, 0.0, np.where(x <= 3, x / 3 + 0.5, 1.0)))


SELU_SCALE, SELU_ALPHA = 1.0507009873554804934193349852946, 1.6732632423543772848170429916717

# fmt: off
# c0: 0 the exact GELU, 1 the tanh approximation (approximate="tanh")
GELU = unary("gelu", 38, _gelu, _gelu_vjp, "real", {"c0": 1.0}, front_end="fg.gelu(x)")
SILU = unary("silu", 39, lambda x, c0, c1: x * stable_sigmoid(x),
             lambda x, y, g, c0, c1: g * (stable_sigmoid(x) * (1 + x * (1 - stable_sigmoid(x)))),
             front_end="fg.silu(x)")
# c0: alpha
ELU = unary("elu", 40, lambda x, c0, c1: np.where(x > 0, x, c0 * np.expm1(x)).astype(x.dtype),
            lambda x, y, g, c0, c1: g * slope(x, np.where(x > 0, 1.0, c0 * np.exp(x))),
            "nonzero", {"c0": 1.0}, front_end="fg.elu(x)")
SELU = unary("selu", 41, lambda x, c0, c1:
             (SELU_SCALE * np.where(x > 0, x, SELU_ALPHA * np.expm1(x))).astype(x.dtype),
             lambda x, y, g, c0, c1:
             g * slope(x, SELU_SCALE * np.where(x > 0, 1.0, SELU_ALPHA * np.exp(x))),
             "nonzero", front_end="fg.selu(x)")
MISH = unary("mish", 42, lambda x, c0, c1: x * np.tanh(softplus(x)), _mish_vjp,
             front_end="fg.mish(x)")
HARDSWISH = unary("hardswish", 43,
                  lambda x, c0, c1: x * np.minimum(np.maximum(x + 3, 0), 6) / 6, _hardswish_vjp,
                  "wide", front_end="fg.hardswish(x)")
# the gradient passes where 0 < x < 6, as torch's hardtanh (clip's passes at the bounds)
RELU6 = unary("relu6", 44, lambda x, c0, c1: np.minimum(np.maximum(x, 0), 6).astype(x.dtype),
              lambda x, y, g, c0, c1: g * slope(x, (x > 0) & (x < 6)), "wide",
              front_end="fg.relu6(x)")
LOGSIGMOID = unary("logsigmoid", 45, lambda x, c0, c1: -softplus(-x),
                   lambda x, y, g, c0, c1: g * stable_sigmoid(-x), front_end="fg.logsigmoid(x)")
# fmt: on
