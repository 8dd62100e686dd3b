"""Elementwise kernels: each op's forward and its vector-Jacobian product side by side.

Unary kernels see contiguous slices ``x``, ``y`` (and gradients ``gx``, ``gy``) of equal size.
Binary kernels run over one contiguous "run" of the output: ``n`` elements starting at ``oy``,
reading ``a`` from ``oa`` with stride ``sa`` and ``b`` from ``ob`` with stride ``sb`` (stride 0 is
a broadcast operand). VJPs always *add* into gradients: a tensor used twice gets both terms.
"""

import numpy as np

from .codes import (
    NEG, ABS, EXP, LOG, SQRT, TANH, SIGMOID, RELU, LEAKY_RELU, SOFTPLUS, CLIP, ADD_SCALAR,
    MUL_SCALAR, DIV_SCALAR, RDIV_SCALAR, POW_SCALAR, RPOW_SCALAR, ADD, SUB, MUL, POW,
    MAXIMUM, MINIMUM, BCE_LOGITS, GT, GE, LT, LE, EQ, NE, SIN, COS, LOG1P, EXPM1,
    TAN, ASIN, ACOS, ATAN, SINH, COSH, ASINH, ACOSH, ATANH, LOG2, LOG10, RSQRT, FLOOR, CEIL,
    ROUND, SIGN, GELU, SILU, ELU, SELU, MISH, HARDSWISH, RELU6, LOGSIGMOID,
)
import math

from ._jit import jit, jit_inline, per_code
from .vecmath import exp64, sigmoid64, sigmoid_of, tanh_of
from .views import fattr, iattrs, needs, operand, operand_grad, output, output_grad
from ..ops import binary as _binary_ops
from ..ops import selection as _selection_ops
from ..ops.unary import SELU_ALPHA, SELU_SCALE

__all__ = ["DIMS", "NDIM", "binary_row_forward", "binary_row_vjp", "binary_run_forward",
           "binary_run_vjp", "unary_forward", "unary_row_forward", "unary_row_vjp", "unary_vjp",
           "where_row_forward", "where_row_vjp", "where_walk"]

# Where the broadcasting rows' attributes sit (fastgrad/ops/binary.py, selection.py): ndim, then
# the output's dims and each operand's strides, ndim each; Numba reads these ints as constants.
NDIM = _binary_ops.LAYOUT.index("ndim")
DIMS = NDIM + 1  # where the dims start; each operand's strides follow, ndim apiece
assert _selection_ops.LAYOUT.index("ndim") == NDIM

# Unsigned indices: Numba then skips the negative-index wraparound branch, which otherwise
# blocks vectorisation of strided loops (4x on a bias add, measured here).
U = np.uintp


@jit
def _sigmoid(v):
    return sigmoid64(np.float64(v))


@jit
def _softplus(v):
    # log(1 + e^v) without overflow: max(v, 0) + log1p(e^-|v|)
    return max(v, 0.0) + np.log1p(exp64(-abs(np.float64(v))))


LN2, LN10 = math.log(2.0), math.log(10.0)
SQRT2, SQRT_2_PI, SQRT_2PI = math.sqrt(2.0), math.sqrt(2.0 / math.pi), math.sqrt(2.0 * math.pi)


@jit
def _gelu_phi(v, approximate):
    """(Phi, d/dx of x Phi): GELU's factor and slope, exact or with the tanh approximation."""
    if approximate == 0.0:
        phi = 0.5 * (1.0 + math.erf(v / SQRT2))
        return phi, phi + v * math.exp(-0.5 * v * v) / SQRT_2PI
    t = np.tanh(SQRT_2_PI * (v + 0.044715 * (v * v * v)))
    return 0.5 * (1.0 + t), 0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * SQRT_2_PI * (
        1.0 + 3.0 * 0.044715 * (v * v))


def _unary_forward_of(op):
    def unary_forward(code, x, y, c0, c1):
        n = x.size
        if op == NEG:
            for i in range(n):
                y[i] = -x[i]
        elif op == ABS:
            for i in range(n):
                y[i] = abs(x[i])
        elif op == EXP:
            for i in range(n):
                y[i] = exp64(np.float64(x[i]))
        elif op == LOG:
            for i in range(n):
                y[i] = np.log(x[i])
        elif op == SQRT:
            for i in range(n):
                y[i] = np.sqrt(x[i])
        elif op == TANH:
            for i in range(n):
                y[i] = tanh_of(x[i])
        elif op == SIGMOID:
            for i in range(n):
                y[i] = sigmoid_of(x[i])
        elif op == RELU:  # written so that NaN fails the test and passes through, as np.maximum
            for i in range(n):
                y[i] = 0.0 if x[i] <= 0 else x[i]
        elif op == LEAKY_RELU:
            for i in range(n):
                y[i] = x[i] if x[i] > 0 else c0 * x[i]
        elif op == SOFTPLUS:  # c0: beta, c1: threshold; c0 = 0: beta 1 and no threshold
            beta = 1.0 if c0 == 0.0 else c0
            for i in range(n):
                bx = beta * x[i]
                y[i] = x[i] if c0 != 0.0 and bx > c1 else _softplus(bx) / beta
        elif op == CLIP:
            for i in range(n):
                y[i] = min(max(x[i], c0), c1)
        elif op == ADD_SCALAR:
            for i in range(n):
                y[i] = x[i] + c0
        elif op == MUL_SCALAR:
            for i in range(n):
                y[i] = x[i] * c0
        elif op == DIV_SCALAR:
            for i in range(n):
                y[i] = x[i] / c0
        elif op == RDIV_SCALAR:
            for i in range(n):
                y[i] = c0 / x[i]
        elif op == POW_SCALAR:
            if c0 == 2.0:
                for i in range(n):
                    y[i] = x[i] * x[i]
            else:
                for i in range(n):
                    y[i] = x[i] ** c0
        elif op == RPOW_SCALAR:
            for i in range(n):
                y[i] = c0 ** x[i]
        elif op == SIN:
            for i in range(n):
                y[i] = np.sin(x[i])
        elif op == COS:
            for i in range(n):
                y[i] = np.cos(x[i])
        elif op == LOG1P:
            for i in range(n):
                y[i] = np.log1p(x[i])
        elif op == EXPM1:
            for i in range(n):
                y[i] = np.expm1(x[i])
        elif op == TAN:
            for i in range(n):
                y[i] = np.tan(x[i])
        elif op == ASIN:
            for i in range(n):
                y[i] = np.arcsin(x[i])
        elif op == ACOS:
            for i in range(n):
                y[i] = np.arccos(x[i])
        elif op == ATAN:
            for i in range(n):
                y[i] = np.arctan(x[i])
        elif op == SINH:
            for i in range(n):
                y[i] = np.sinh(x[i])
        elif op == COSH:
            for i in range(n):
                y[i] = np.cosh(x[i])
        elif op == ASINH:
            for i in range(n):
                y[i] = np.arcsinh(x[i])
        elif op == ACOSH:
            for i in range(n):
                y[i] = np.arccosh(x[i])
        elif op == ATANH:
            for i in range(n):
                y[i] = np.arctanh(x[i])
        elif op == LOG2:
            for i in range(n):
                y[i] = np.log2(x[i])
        elif op == LOG10:
            for i in range(n):
                y[i] = np.log10(x[i])
        elif op == RSQRT:
            for i in range(n):
                y[i] = 1.0 / np.sqrt(x[i])
        elif op == FLOOR:
            for i in range(n):
                y[i] = np.floor(x[i])
        elif op == CEIL:
            for i in range(n):
                y[i] = np.ceil(x[i])
        elif op == ROUND:  # half to even
            for i in range(n):
                y[i] = np.rint(x[i])
        elif op == SIGN:  # NaN stays NaN; -0.0 gives 0.0, as np.sign
            for i in range(n):
                v = x[i]
                y[i] = 1.0 if v > 0 else (-1.0 if v < 0 else (0.0 if v == 0 else v))
        elif op == GELU:
            for i in range(n):
                y[i] = x[i] * _gelu_phi(np.float64(x[i]), c0)[0]
        elif op == SILU:
            for i in range(n):
                y[i] = x[i] * _sigmoid(x[i])
        elif op == ELU:
            for i in range(n):
                y[i] = x[i] if x[i] > 0 else c0 * np.expm1(x[i])
        elif op == SELU:
            for i in range(n):
                y[i] = SELU_SCALE * (x[i] if x[i] > 0 else SELU_ALPHA * np.expm1(x[i]))
        elif op == MISH:
            for i in range(n):
                y[i] = x[i] * np.tanh(_softplus(x[i]))
        elif op == HARDSWISH:
            for i in range(n):
                y[i] = x[i] * min(max(x[i] + 3.0, 0.0), 6.0) / 6.0
        elif op == RELU6:
            for i in range(n):
                y[i] = min(max(x[i], 0.0), 6.0)
        elif op == LOGSIGMOID:
            for i in range(n):
                y[i] = -_softplus(-x[i])

    return unary_forward


unary_forward = per_code(_unary_forward_of)


def _unary_vjp_of(op):
    def unary_vjp(code, x, y, gy, gx, c0, c1):
        n = x.size
        if op == NEG:
            for i in range(n):
                gx[i] -= gy[i]
        elif op == ABS:  # sign(x); 0 at 0 as in PyTorch; NaN at NaN as np.sign
            for i in range(n):
                if x[i] > 0:
                    gx[i] += gy[i]
                elif x[i] < 0:
                    gx[i] -= gy[i]
                elif x[i] != x[i]:
                    gx[i] += x[i]
        elif op == EXP:
            for i in range(n):
                gx[i] += gy[i] * y[i]
        elif op == LOG:
            for i in range(n):
                gx[i] += gy[i] / x[i]
        elif op == SQRT:
            for i in range(n):
                gx[i] += gy[i] * 0.5 / y[i]
        elif op == TANH:
            for i in range(n):
                gx[i] += gy[i] * (1.0 - y[i] * y[i])
        elif op == SIGMOID:
            for i in range(n):
                gx[i] += gy[i] * y[i] * (1.0 - y[i])
        elif op == RELU:  # the slope at a NaN is NaN (np.heaviside): the NaN reaches x's grad
            for i in range(n):
                if x[i] > 0:
                    gx[i] += gy[i]
                elif x[i] != x[i]:
                    gx[i] += x[i]
        elif op == LEAKY_RELU:
            for i in range(n):
                gx[i] += gy[i] if x[i] > 0 else (c0 * gy[i] if x[i] <= 0 else x[i])
        elif op == SOFTPLUS:
            beta = 1.0 if c0 == 0.0 else c0
            for i in range(n):
                bx = beta * x[i]
                gx[i] += gy[i] * (1.0 if c0 != 0.0 and bx > c1 else _sigmoid(bx))
        elif op == CLIP:  # gradient passes where lo <= x <= hi, as torch.clamp; NaN at NaN
            for i in range(n):
                if x[i] >= c0 and x[i] <= c1:
                    gx[i] += gy[i]
                elif x[i] != x[i]:
                    gx[i] += x[i]
        elif op == ADD_SCALAR:
            for i in range(n):
                gx[i] += gy[i]
        elif op == MUL_SCALAR:
            for i in range(n):
                gx[i] += gy[i] * c0
        elif op == DIV_SCALAR:
            for i in range(n):
                gx[i] += gy[i] / c0
        elif op == RDIV_SCALAR:  # d(c/x) = -c/x^2 = -y/x
            for i in range(n):
                gx[i] -= gy[i] * y[i] / x[i]
        elif op == POW_SCALAR:
            if c0 == 2.0:
                for i in range(n):
                    gx[i] += gy[i] * 2.0 * x[i]
            elif c0 != 0.0:
                for i in range(n):
                    gx[i] += gy[i] * c0 * x[i] ** (c0 - 1.0)
        elif op == RPOW_SCALAR:  # d(c^x) = c^x log c; 0 at c == 0 where x >= 0, as PyTorch
            lc = np.log(c0)
            if c0 == 0.0:
                for i in range(n):
                    if not x[i] >= 0.0:
                        gx[i] += gy[i] * (y[i] * lc)
            else:
                for i in range(n):
                    gx[i] += gy[i] * (y[i] * lc)
        elif op == SIN:
            for i in range(n):
                gx[i] += gy[i] * np.cos(x[i])
        elif op == COS:
            for i in range(n):
                gx[i] -= gy[i] * np.sin(x[i])
        elif op == LOG1P:
            for i in range(n):
                gx[i] += gy[i] / (1.0 + x[i])
        elif op == EXPM1:  # exp(x) = y + 1: the output, as PyTorch
            for i in range(n):
                gx[i] += gy[i] * (y[i] + 1.0)
        elif op == TAN:
            for i in range(n):
                gx[i] += gy[i] * (1.0 + y[i] * y[i])
        elif op == ASIN:
            for i in range(n):
                gx[i] += gy[i] / np.sqrt(1.0 - x[i] * x[i])
        elif op == ACOS:
            for i in range(n):
                gx[i] -= gy[i] / np.sqrt(1.0 - x[i] * x[i])
        elif op == ATAN:
            for i in range(n):
                gx[i] += gy[i] / (1.0 + x[i] * x[i])
        elif op == SINH:
            for i in range(n):
                gx[i] += gy[i] * np.cosh(x[i])
        elif op == COSH:
            for i in range(n):
                gx[i] += gy[i] * np.sinh(x[i])
        elif op == ASINH:
            for i in range(n):
                gx[i] += gy[i] / np.sqrt(x[i] * x[i] + 1.0)
        elif op == ACOSH:
            for i in range(n):
                gx[i] += gy[i] / np.sqrt(x[i] * x[i] - 1.0)
        elif op == ATANH:
            for i in range(n):
                gx[i] += gy[i] / (1.0 - x[i] * x[i])
        elif op == LOG2:
            for i in range(n):
                gx[i] += gy[i] / (x[i] * LN2)
        elif op == LOG10:
            for i in range(n):
                gx[i] += gy[i] / (x[i] * LN10)
        elif op == RSQRT:  # -y^3 / 2, from the output as PyTorch
            for i in range(n):
                gx[i] += -0.5 * gy[i] * (y[i] * y[i] * y[i])
        elif op == FLOOR or op == CEIL or op == ROUND or op == SIGN:
            pass  # a zero slope, even at NaN (PyTorch's)
        elif op == GELU:
            for i in range(n):
                gx[i] += gy[i] * _gelu_phi(np.float64(x[i]), c0)[1]
        elif op == SILU:
            for i in range(n):
                s = _sigmoid(x[i])
                gx[i] += gy[i] * (s * (1.0 + x[i] * (1.0 - s)))
        elif op == ELU or op == SELU:
            scale = SELU_SCALE if op == SELU else 1.0
            alpha = SELU_ALPHA if op == SELU else c0
            for i in range(n):
                if x[i] > 0:
                    gx[i] += gy[i] * scale
                elif x[i] <= 0:
                    gx[i] += gy[i] * (scale * (alpha * np.exp(x[i])))
                else:
                    gx[i] += x[i]
        elif op == MISH:
            for i in range(n):
                t = np.tanh(_softplus(x[i]))
                gx[i] += gy[i] * (t + x[i] * _sigmoid(x[i]) * (1.0 - t * t))
        elif op == HARDSWISH:  # PyTorch's: 0 below -3, x / 3 + 1/2 up to 3, then 1
            for i in range(n):
                v = x[i]
                if v < -3.0:
                    gx[i] += gy[i] * 0.0
                elif v <= 3.0:
                    gx[i] += gy[i] * (v / 3.0 + 0.5)
                elif v > 3.0:
                    gx[i] += gy[i]
                else:
                    gx[i] += v
        elif op == RELU6:  # passes where 0 < x < 6, as torch's hardtanh
            for i in range(n):
                if x[i] > 0.0 and x[i] < 6.0:
                    gx[i] += gy[i]
                elif x[i] != x[i]:
                    gx[i] += x[i]
        elif op == LOGSIGMOID:
            for i in range(n):
                gx[i] += gy[i] * _sigmoid(-x[i])

    return unary_vjp


unary_vjp = per_code(_unary_vjp_of)


def _binary_run_forward_of(op):
    def binary_run_forward(code, row_op, a, oa, sa, b, ob, sb, y, oy, n):
        """y[oy:oy+n] = op(a, b) over one run. ``row_op``: the row's own op, read by the
        arithmetic kernel (code ADD), which runs the rows of the four arithmetic ops
        (dispatch.py KERNEL_OF): one branch per run, outside its loop."""
        if op == ADD:
            if row_op == ADD:
                for i in range(n):
                    y[U(oy + i)] = a[U(oa + i * sa)] + b[U(ob + i * sb)]
            elif row_op == SUB:
                for i in range(n):
                    y[U(oy + i)] = a[U(oa + i * sa)] - b[U(ob + i * sb)]
            elif row_op == MUL:
                for i in range(n):
                    y[U(oy + i)] = a[U(oa + i * sa)] * b[U(ob + i * sb)]
            else:  # DIV
                for i in range(n):
                    y[U(oy + i)] = a[U(oa + i * sa)] / b[U(ob + i * sb)]
        elif op == POW:
            for i in range(n):
                y[U(oy + i)] = a[U(oa + i * sa)] ** b[U(ob + i * sb)]
        elif op == MAXIMUM:
            for i in range(n):
                u = a[U(oa + i * sa)]
                v = b[U(ob + i * sb)]
                y[U(oy + i)] = u if (u >= v or u != u) else v
        elif op == MINIMUM:
            for i in range(n):
                u = a[U(oa + i * sa)]
                v = b[U(ob + i * sb)]
                y[U(oy + i)] = u if (u <= v or u != u) else v
        elif op == BCE_LOGITS:  # max(x,0) - x z + log1p(exp(-|x|))
            for i in range(n):
                u = a[U(oa + i * sa)]
                y[U(oy + i)] = _softplus(u) - u * b[U(ob + i * sb)]
        elif op == GT:
            for i in range(n):
                y[U(oy + i)] = 1.0 if a[U(oa + i * sa)] > b[U(ob + i * sb)] else 0.0
        elif op == GE:
            for i in range(n):
                y[U(oy + i)] = 1.0 if a[U(oa + i * sa)] >= b[U(ob + i * sb)] else 0.0
        elif op == LT:
            for i in range(n):
                y[U(oy + i)] = 1.0 if a[U(oa + i * sa)] < b[U(ob + i * sb)] else 0.0
        elif op == LE:
            for i in range(n):
                y[U(oy + i)] = 1.0 if a[U(oa + i * sa)] <= b[U(ob + i * sb)] else 0.0
        elif op == EQ:
            for i in range(n):
                y[U(oy + i)] = 1.0 if a[U(oa + i * sa)] == b[U(ob + i * sb)] else 0.0
        elif op == NE:
            for i in range(n):
                y[U(oy + i)] = 1.0 if a[U(oa + i * sa)] != b[U(ob + i * sb)] else 0.0

    return binary_run_forward


binary_run_forward = per_code(_binary_run_forward_of)


def _binary_run_vjp_of(op):
    def binary_run_vjp(code, row_op, a, oa, sa, ga, na, b, ob, sb, gb, nb, y, gy, oy, n):
        """Add this run's contribution to ga (if na) and gb (if nb); broadcast strides sum back.
        ``row_op`` as in binary_run_forward.

        One loop per operand, so each loop is branch-free and vectorises."""
        if op == ADD:
            if row_op == ADD or row_op == SUB:
                if na:
                    for i in range(n):
                        ga[U(oa + i * sa)] += gy[U(oy + i)]
                if nb:
                    if row_op == ADD:
                        for i in range(n):
                            gb[U(ob + i * sb)] += gy[U(oy + i)]
                    else:
                        for i in range(n):
                            gb[U(ob + i * sb)] -= gy[U(oy + i)]
            elif row_op == MUL:
                if na:
                    for i in range(n):
                        ga[U(oa + i * sa)] += gy[U(oy + i)] * b[U(ob + i * sb)]
                if nb:
                    for i in range(n):
                        gb[U(ob + i * sb)] += gy[U(oy + i)] * a[U(oa + i * sa)]
            else:  # DIV
                if na:
                    for i in range(n):
                        ga[U(oa + i * sa)] += gy[U(oy + i)] / b[U(ob + i * sb)]
                if nb:
                    for i in range(n):
                        gb[U(ob + i * sb)] -= gy[U(oy + i)] * y[U(oy + i)] / b[U(ob + i * sb)]
        elif op == POW:
            for i in range(n):
                g = gy[U(oy + i)]
                u = a[U(oa + i * sa)]
                v = b[U(ob + i * sb)]
                if na and v != 0.0:
                    ga[U(oa + i * sa)] += g * v * u ** (v - 1.0)
                if nb and not (u == 0.0 and v >= 0.0):  # d/dv u^v = u^v log u; 0 at u == 0
                    # where v >= 0 and -inf where v < 0, as PyTorch
                    gb[U(ob + i * sb)] += g * (y[U(oy + i)] * np.log(u))
        elif op == MAXIMUM or op == MINIMUM:
            # the selected operand gets the gradient; ties split it evenly (as torch.maximum); an
            # operand that is NaN gets a NaN gradient, the other none (it was not selected)
            for i in range(n):
                g = gy[U(oy + i)]
                u = a[U(oa + i * sa)]
                v = b[U(ob + i * sb)]
                if u != u or v != v:
                    if na and u != u:
                        ga[U(oa + i * sa)] += u
                    if nb and v != v:
                        gb[U(ob + i * sb)] += v
                elif u == v:
                    if na:
                        ga[U(oa + i * sa)] += 0.5 * g
                    if nb:
                        gb[U(ob + i * sb)] += 0.5 * g
                elif (u > v) == (op == MAXIMUM):
                    if na:
                        ga[U(oa + i * sa)] += g
                elif nb:
                    gb[U(ob + i * sb)] += g
        elif op == BCE_LOGITS:
            for i in range(n):
                g = gy[U(oy + i)]
                u = a[U(oa + i * sa)]
                if na:
                    ga[U(oa + i * sa)] += g * (_sigmoid(u) - b[U(ob + i * sb)])
                if nb:
                    gb[U(ob + i * sb)] -= g * u
        # comparisons are piecewise constant: no gradient

    return binary_run_vjp


binary_run_vjp = per_code(_binary_run_vjp_of)


@jit
def _next_run(ip, nd, idx, oa, ob):
    """Advance the odometer ``idx`` over the outer axes by one run; the operands' new offsets."""
    d = nd - 2
    while d >= 0:
        idx[d] += 1
        oa += ip[U(DIMS + nd + d)]
        ob += ip[U(DIMS + 2 * nd + d)]
        if idx[d] < ip[U(DIMS + d)]:
            break
        oa -= ip[U(DIMS + nd + d)] * ip[U(DIMS + d)]
        ob -= ip[U(DIMS + 2 * nd + d)] * ip[U(DIMS + d)]
        idx[d] = 0
        d -= 1
    return oa, ob


@jit
def where_walk(c, a, b, y, ip, forward, ga, na, gb, nb):
    """Forward: y = a where c != 0 else b. Backward (y = gy): ga += gy where c, gb += gy elsewhere.

    ip = [ndim, shape..., strides_c..., strides_a..., strides_b...].
    """
    nd = ip[NDIM]
    idx = np.zeros(nd, np.int64)
    oc = 0
    oa = 0
    ob = 0
    for i in range(y.size):
        if forward:
            y[i] = a[oa] if c[oc] != 0 else b[ob]
        elif c[oc] != 0:
            if na:
                ga[oa] += y[i]
        elif nb:
            gb[ob] += y[i]
        d = nd - 1
        while d >= 0:
            idx[d] += 1
            oc += ip[U(DIMS + nd + d)]
            oa += ip[U(DIMS + 2 * nd + d)]
            ob += ip[U(DIMS + 3 * nd + d)]
            if idx[d] < ip[U(DIMS + d)]:
                break
            oc -= ip[U(DIMS + nd + d)] * ip[U(DIMS + d)]
            oa -= ip[U(DIMS + 2 * nd + d)] * ip[U(DIMS + d)]
            ob -= ip[U(DIMS + 3 * nd + d)] * ip[U(DIMS + d)]
            idx[d] = 0
            d -= 1


# ----------------------------------------------------------------------------- rows of the tape
# Each family's forward and VJP of one tape row (views.py reads its operands). ``code`` is the
# op's code, a constant once these are inlined into its row kernels (dispatch.py), so the
# branches of the other ops of the family are dropped before they are compiled.


@jit_inline
def unary_row_forward(code, tape, values, ivalues, params, r):
    unary_forward(code, operand(tape, values, params, r, 0), output(tape, values, params, r),
                  fattr(tape, r, 0), fattr(tape, r, 1))


@jit_inline
def unary_row_vjp(code, tape, values, ivalues, params, grads, pgrads, need, scratch, r):
    if needs(tape, need, r, 0):
        unary_vjp(code, operand(tape, values, params, r, 0), output(tape, values, params, r),
                  output_grad(tape, grads, pgrads, r), operand_grad(tape, grads, pgrads, r, 0),
                  fattr(tape, r, 0), fattr(tape, r, 1))


@jit_inline
def binary_row_forward(code, tape, values, ivalues, params, r):
    """y = op(a, b) over the output in contiguous runs along the last (coalesced) axis.

    ip = [ndim, shape..., strides_a..., strides_b...] in elements, computed at record time with
    broadcast axes given stride 0 and mergeable axes already merged, so the common cases (equal
    shapes, scalar operand, bias row) are one or a few long runs.
    """
    a = operand(tape, values, params, r, 0)
    b = operand(tape, values, params, r, 1)
    y = output(tape, values, params, r)
    ip = iattrs(tape, r)
    nd = ip[NDIM]
    inner = ip[DIMS + nd - 1]  # the last dim, and each operand's stride along it
    sa_in = ip[U(DIMS + 2 * nd - 1)]
    sb_in = ip[U(DIMS + 3 * nd - 1)]
    runs = y.size // inner if inner > 0 else 0
    row_op = tape[0][r]
    if runs == 1:  # equal shapes, a scalar operand: one run, no odometer (nor its allocation)
        o = np.int64(0)  # not a literal 0, which would compile another copy of each run kernel
        binary_run_forward(code, row_op, a, o, sa_in, b, o, sb_in, y, o, inner)
        return
    idx = np.zeros(nd, np.int64)
    oa = np.int64(0)
    ob = np.int64(0)
    for k in range(runs):
        binary_run_forward(code, row_op, a, oa, sa_in, b, ob, sb_in, y, k * inner, inner)
        oa, ob = _next_run(ip, nd, idx, oa, ob)


@jit_inline
def binary_row_vjp(code, tape, values, ivalues, params, grads, pgrads, need, scratch, r):
    """Add the VJP of op(a, b) into a's gradient (if it needs one) and b's, walking the output
    as binary_row_forward does; broadcast strides sum the gradient back."""
    a = operand(tape, values, params, r, 0)
    b = operand(tape, values, params, r, 1)
    y = output(tape, values, params, r)
    gy = output_grad(tape, grads, pgrads, r)
    ga = operand_grad(tape, grads, pgrads, r, 0)
    gb = operand_grad(tape, grads, pgrads, r, 1)
    na = needs(tape, need, r, 0) != 0
    nb = needs(tape, need, r, 1) != 0
    ip = iattrs(tape, r)
    nd = ip[NDIM]
    inner = ip[DIMS + nd - 1]  # the last dim, and each operand's stride along it
    sa_in = ip[U(DIMS + 2 * nd - 1)]
    sb_in = ip[U(DIMS + 3 * nd - 1)]
    runs = y.size // inner if inner > 0 else 0
    row_op = tape[0][r]
    if runs == 1:
        o = np.int64(0)
        binary_run_vjp(code, row_op, a, o, sa_in, ga, na, b, o, sb_in, gb, nb, y, gy, o, inner)
        return
    idx = np.zeros(nd, np.int64)
    oa = np.int64(0)
    ob = np.int64(0)
    for k in range(runs):
        binary_run_vjp(code, row_op, a, oa, sa_in, ga, na, b, ob, sb_in, gb, nb, y, gy,
                       k * inner, inner)
        oa, ob = _next_run(ip, nd, idx, oa, ob)


@jit_inline
def where_row_forward(code, tape, values, ivalues, params, r):
    B = operand(tape, values, params, r, 1)
    C = operand(tape, values, params, r, 2)
    where_walk(operand(tape, values, params, r, 0), B, C, output(tape, values, params, r),
               iattrs(tape, r), True, B, False, C, False)


@jit_inline
def where_row_vjp(code, tape, values, ivalues, params, grads, pgrads, need, scratch, r):
    gB = operand_grad(tape, grads, pgrads, r, 1)
    gC = operand_grad(tape, grads, pgrads, r, 2)
    where_walk(operand(tape, values, params, r, 0), gB, gC, output_grad(tape, grads, pgrads, r),
               iattrs(tape, r), False, gB, needs(tape, need, r, 1) != 0, gC,
               needs(tape, need, r, 2) != 0)
