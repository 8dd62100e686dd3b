"""Elementwise kernels: each op's forward and its vector-Jacobian product side by side.

Unary kernels see contiguous slices ``x``, ``y`` (and gradients ``gx``, ``gy``) of equal size.
Binary kernels run over one contiguous "run" of the output: ``n`` elements starting at ``oy``,
reading ``a`` from ``oa`` with stride ``sa`` and ``b`` from ``ob`` with stride ``sb`` (stride 0 is
a broadcast operand). VJPs always *add* into gradients: a tensor used twice gets both terms.
"""

import numpy as np

from ..opcodes import Op
from ._jit import jit


@jit
def _sigmoid(v):
    if v >= 0:
        return 1.0 / (1.0 + np.exp(-v))
    e = np.exp(v)
    return e / (1.0 + e)


@jit
def _softplus(v):
    # log(1 + e^v) without overflow: max(v, 0) + log1p(e^-|v|)
    return max(v, 0.0) + np.log1p(np.exp(-abs(v)))


@jit
def unary_forward(code, x, y, c0, c1):
    n = x.size
    if code == Op.NEG:
        for i in range(n):
            y[i] = -x[i]
    elif code == Op.ABS:
        for i in range(n):
            y[i] = abs(x[i])
    elif code == Op.EXP:
        for i in range(n):
            y[i] = np.exp(x[i])
    elif code == Op.LOG:
        for i in range(n):
            y[i] = np.log(x[i])
    elif code == Op.SQRT:
        for i in range(n):
            y[i] = np.sqrt(x[i])
    elif code == Op.TANH:
        for i in range(n):
            y[i] = np.tanh(x[i])
    elif code == Op.SIGMOID:
        for i in range(n):
            y[i] = _sigmoid(x[i])
    elif code == Op.RELU:
        for i in range(n):
            y[i] = x[i] if x[i] > 0 else 0.0
    elif code == Op.LEAKY_RELU:
        for i in range(n):
            y[i] = x[i] if x[i] > 0 else c0 * x[i]
    elif code == Op.SOFTPLUS:
        for i in range(n):
            y[i] = _softplus(x[i])
    elif code == Op.CLIP:
        for i in range(n):
            y[i] = min(max(x[i], c0), c1)
    elif code == Op.ADD_SCALAR:
        for i in range(n):
            y[i] = x[i] + c0
    elif code == Op.MUL_SCALAR:
        for i in range(n):
            y[i] = x[i] * c0
    elif code == Op.DIV_SCALAR:
        for i in range(n):
            y[i] = x[i] / c0
    elif code == Op.RDIV_SCALAR:
        for i in range(n):
            y[i] = c0 / x[i]
    elif code == Op.POW_SCALAR:
        if c0 == 2.0:
            for i in range(n):
                y[i] = x[i] * x[i]
        else:
            for i in range(n):
                y[i] = x[i] ** c0
    elif code == Op.RPOW_SCALAR:
        for i in range(n):
            y[i] = c0 ** x[i]


@jit
def unary_vjp(code, x, y, gy, gx, c0, c1):
    n = x.size
    if code == Op.NEG:
        for i in range(n):
            gx[i] -= gy[i]
    elif code == Op.ABS:  # sign(x); 0 at 0 as in PyTorch
        for i in range(n):
            if x[i] > 0:
                gx[i] += gy[i]
            elif x[i] < 0:
                gx[i] -= gy[i]
    elif code == Op.EXP:
        for i in range(n):
            gx[i] += gy[i] * y[i]
    elif code == Op.LOG:
        for i in range(n):
            gx[i] += gy[i] / x[i]
    elif code == Op.SQRT:
        for i in range(n):
            gx[i] += gy[i] * 0.5 / y[i]
    elif code == Op.TANH:
        for i in range(n):
            gx[i] += gy[i] * (1.0 - y[i] * y[i])
    elif code == Op.SIGMOID:
        for i in range(n):
            gx[i] += gy[i] * y[i] * (1.0 - y[i])
    elif code == Op.RELU:
        for i in range(n):
            if x[i] > 0:
                gx[i] += gy[i]
    elif code == Op.LEAKY_RELU:
        for i in range(n):
            gx[i] += gy[i] if x[i] > 0 else c0 * gy[i]
    elif code == Op.SOFTPLUS:
        for i in range(n):
            gx[i] += gy[i] * _sigmoid(x[i])
    elif code == Op.CLIP:  # gradient passes where lo <= x <= hi, as torch.clamp
        for i in range(n):
            if x[i] >= c0 and x[i] <= c1:
                gx[i] += gy[i]
    elif code == Op.ADD_SCALAR:
        for i in range(n):
            gx[i] += gy[i]
    elif code == Op.MUL_SCALAR:
        for i in range(n):
            gx[i] += gy[i] * c0
    elif code == Op.DIV_SCALAR:
        for i in range(n):
            gx[i] += gy[i] / c0
    elif code == Op.RDIV_SCALAR:  # d(c/x) = -c/x^2 = -y/x
        for i in range(n):
            gx[i] -= gy[i] * y[i] / x[i]
    elif code == Op.POW_SCALAR:
        if c0 == 2.0:
            for i in range(n):
                gx[i] += gy[i] * 2.0 * x[i]
        elif c0 != 0.0:
            for i in range(n):
                gx[i] += gy[i] * c0 * x[i] ** (c0 - 1.0)
    elif code == Op.RPOW_SCALAR:  # d(c^x) = c^x log c
        lc = np.log(c0)
        for i in range(n):
            gx[i] += gy[i] * y[i] * lc


@jit
def binary_run_forward(code, a, oa, sa, b, ob, sb, y, oy, n):
    if code == Op.ADD:
        for i in range(n):
            y[oy + i] = a[oa + i * sa] + b[ob + i * sb]
    elif code == Op.SUB:
        for i in range(n):
            y[oy + i] = a[oa + i * sa] - b[ob + i * sb]
    elif code == Op.MUL:
        for i in range(n):
            y[oy + i] = a[oa + i * sa] * b[ob + i * sb]
    elif code == Op.DIV:
        for i in range(n):
            y[oy + i] = a[oa + i * sa] / b[ob + i * sb]
    elif code == Op.POW:
        for i in range(n):
            y[oy + i] = a[oa + i * sa] ** b[ob + i * sb]
    elif code == Op.MAXIMUM:
        for i in range(n):
            u = a[oa + i * sa]
            v = b[ob + i * sb]
            y[oy + i] = u if (u >= v or u != u) else v
    elif code == Op.MINIMUM:
        for i in range(n):
            u = a[oa + i * sa]
            v = b[ob + i * sb]
            y[oy + i] = u if (u <= v or u != u) else v
    elif code == Op.BCE_LOGITS:  # max(x,0) - x z + log1p(exp(-|x|))
        for i in range(n):
            u = a[oa + i * sa]
            y[oy + i] = _softplus(u) - u * b[ob + i * sb]
    elif code == Op.GT:
        for i in range(n):
            y[oy + i] = 1.0 if a[oa + i * sa] > b[ob + i * sb] else 0.0
    elif code == Op.GE:
        for i in range(n):
            y[oy + i] = 1.0 if a[oa + i * sa] >= b[ob + i * sb] else 0.0
    elif code == Op.LT:
        for i in range(n):
            y[oy + i] = 1.0 if a[oa + i * sa] < b[ob + i * sb] else 0.0
    elif code == Op.LE:
        for i in range(n):
            y[oy + i] = 1.0 if a[oa + i * sa] <= b[ob + i * sb] else 0.0
    elif code == Op.EQ:
        for i in range(n):
            y[oy + i] = 1.0 if a[oa + i * sa] == b[ob + i * sb] else 0.0
    elif code == Op.NE:
        for i in range(n):
            y[oy + i] = 1.0 if a[oa + i * sa] != b[ob + i * sb] else 0.0


@jit
def binary_run_vjp(code, a, oa, sa, ga, na, b, ob, sb, gb, nb, y, gy, oy, n):
    """Add this run's contribution to ga (if na) and gb (if nb); broadcast strides sum back."""
    if code == Op.ADD:
        for i in range(n):
            if na:
                ga[oa + i * sa] += gy[oy + i]
            if nb:
                gb[ob + i * sb] += gy[oy + i]
    elif code == Op.SUB:
        for i in range(n):
            if na:
                ga[oa + i * sa] += gy[oy + i]
            if nb:
                gb[ob + i * sb] -= gy[oy + i]
    elif code == Op.MUL:
        for i in range(n):
            g = gy[oy + i]
            if na:
                ga[oa + i * sa] += g * b[ob + i * sb]
            if nb:
                gb[ob + i * sb] += g * a[oa + i * sa]
    elif code == Op.DIV:
        for i in range(n):
            g = gy[oy + i]
            v = b[ob + i * sb]
            if na:
                ga[oa + i * sa] += g / v
            if nb:
                gb[ob + i * sb] -= g * y[oy + i] / v
    elif code == Op.POW:
        for i in range(n):
            g = gy[oy + i]
            u = a[oa + i * sa]
            v = b[ob + i * sb]
            if na and v != 0.0:
                ga[oa + i * sa] += g * v * u ** (v - 1.0)
            if nb and u != 0.0:  # d/dv u^v = u^v log u (0 at u == 0, as in PyTorch)
                gb[ob + i * sb] += g * y[oy + i] * np.log(u)
    elif code == Op.MAXIMUM or code == Op.MINIMUM:
        # the selected operand gets the gradient; ties split it evenly (as torch.maximum)
        for i in range(n):
            g = gy[oy + i]
            u = a[oa + i * sa]
            v = b[ob + i * sb]
            if u == v:
                if na:
                    ga[oa + i * sa] += 0.5 * g
                if nb:
                    gb[ob + i * sb] += 0.5 * g
            elif (u > v) == (code == Op.MAXIMUM):
                if na:
                    ga[oa + i * sa] += g
            elif nb:
                gb[ob + i * sb] += g
    elif code == Op.BCE_LOGITS:
        for i in range(n):
            g = gy[oy + i]
            u = a[oa + i * sa]
            if na:
                ga[oa + i * sa] += g * (_sigmoid(u) - b[ob + i * sb])
            if nb:
                gb[ob + i * sb] -= g * u
    # comparisons are piecewise constant: no gradient


@jit
def broadcast_walk(code, a, b, y, ip, forward, ga, na, gb, nb, gy):
    """Walk the output in contiguous runs along the last (coalesced) axis.

    ip = [ndim, shape..., strides_a..., strides_b...] in elements, computed at record time with
    broadcast axes given stride 0 and mergeable axes already merged, so the common cases (equal
    shapes, scalar operand, bias row) are one or a few long runs.
    """
    nd = ip[0]
    inner = ip[nd]
    sa_in = ip[2 * nd]
    sb_in = ip[3 * nd]
    runs = y.size // inner if inner > 0 else 0
    idx = np.zeros(nd, np.int64)
    oa = 0
    ob = 0
    for r in range(runs):
        if forward:
            binary_run_forward(code, a, oa, sa_in, b, ob, sb_in, y, r * inner, inner)
        else:
            binary_run_vjp(code, a, oa, sa_in, ga, na, b, ob, sb_in, gb, nb, y, gy, r * inner, inner)
        d = nd - 2
        while d >= 0:
            idx[d] += 1
            oa += ip[1 + nd + d]
            ob += ip[1 + 2 * nd + d]
            if idx[d] < ip[1 + d]:
                break
            oa -= ip[1 + nd + d] * ip[1 + d]
            ob -= ip[1 + 2 * nd + d] * ip[1 + d]
            idx[d] = 0
            d -= 1


@jit
def where_forward(c, a, b, y, ip):
    """y = a where c != 0 else b; ip = [ndim, shape..., strides_c..., strides_a..., strides_b...]."""
    nd = ip[0]
    idx = np.zeros(nd, np.int64)
    oc = 0
    oa = 0
    ob = 0
    for i in range(y.size):
        y[i] = a[oa] if c[oc] != 0 else b[ob]
        d = nd - 1
        while d >= 0:
            idx[d] += 1
            oc += ip[1 + nd + d]
            oa += ip[1 + 2 * nd + d]
            ob += ip[1 + 3 * nd + d]
            if idx[d] < ip[1 + d]:
                break
            oc -= ip[1 + nd + d] * ip[1 + d]
            oa -= ip[1 + 2 * nd + d] * ip[1 + d]
            ob -= ip[1 + 3 * nd + d] * ip[1 + d]
            idx[d] = 0
            d -= 1


@jit
def where_vjp(c, gy, ga, na, gb, nb, ip):
    nd = ip[0]
    idx = np.zeros(nd, np.int64)
    oc = 0
    oa = 0
    ob = 0
    for i in range(gy.size):
        if c[oc] != 0:
            if na:
                ga[oa] += gy[i]
        elif nb:
            gb[ob] += gy[i]
        d = nd - 1
        while d >= 0:
            idx[d] += 1
            oc += ip[1 + nd + d]
            oa += ip[1 + 2 * nd + d]
            ob += ip[1 + 3 * nd + d]
            if idx[d] < ip[1 + d]:
                break
            oc -= ip[1 + nd + d] * ip[1 + d]
            oa -= ip[1 + 2 * nd + d] * ip[1 + d]
            ob -= ip[1 + 3 * nd + d] * ip[1 + d]
            idx[d] = 0
            d -= 1
