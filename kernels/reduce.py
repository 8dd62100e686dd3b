"""Reductions and normalisations along one axis.

The input is seen as (outer, n, inner) with the reduced axis in the middle (computed at record
time), so one kernel serves every axis: the output is (outer, inner). Reducing "all" is
(1, size, 1). Broadcasting gradients back over the reduced axis is the VJP of SUM.
"""

import numpy as np

from .codes import (
    SUM, MAX, SOFTMAX, LOG_SOFTMAX, MEAN, AMAX, LOGSUMEXP, PROD, CUMSUM,
)
from ._jit import jit, jit_inline, per_code
from .vecmath import exp64
from .views import iattrs, ioperand, needs, operand, operand_grad, output, output_grad
from ..ops import loss as _loss_ops
from ..ops import reduce as _reduce_ops

__all__ = ["CLASSES", "INNER", "N", "OUTER", "ROWS", "cross_entropy_forward", "cross_entropy_vjp",
           "loss_row_forward", "loss_row_vjp", "reduce_forward", "reduce_row_forward",
           "reduce_row_vjp", "reduce_vjp"]

# Where the rows' integer attributes sit (fastgrad/ops/reduce.py, loss.py; Numba reads these
# module ints as constants)
_REDUCTION, _LOSS = _reduce_ops.LAYOUT, _loss_ops.LAYOUT
OUTER, N, INNER = (_REDUCTION.index(f) for f in ("outer", "n", "inner"))
ROWS, CLASSES = _LOSS.index("rows"), _LOSS.index("classes")

# Unsigned indices: Numba then skips the negative-index wraparound branch, which otherwise
# blocks vectorisation of strided loops (4x on a bias add, measured here).
U = np.uintp


@jit
def _exp(v):
    return exp64(np.float64(v))


@jit_inline
def _nan_max(x, base, n, inner):
    """The largest of x[base + k * inner] for k < n (n >= 1); NaN if one is NaN, as np.max."""
    m = x[base]
    for k in range(1, n):
        v = x[U(base + k * inner)]
        if v > m or v != v:
            m = v
            if v != v:
                break
    return m


def _reduce_forward_of(op):
    def reduce_forward(code, x, y, outer, n, inner):
        if op == SUM or op == MEAN:  # mean: the sum / n (0 / 0 = NaN for an empty axis)
            if inner == 1:
                for o in range(outer):
                    s = 0.0
                    base = o * n
                    for k in range(n):
                        s += x[U(base + k)]
                    y[o] = s / n if op == MEAN else s
            else:
                for o in range(outer):
                    for j in range(inner):
                        y[U(o * inner + j)] = 0.0
                    for k in range(n):
                        base = (o * n + k) * inner
                        for j in range(inner):
                            y[U(o * inner + j)] += x[U(base + j)]
                if op == MEAN:
                    for i in range(outer * inner):
                        y[U(i)] = y[U(i)] / n
        elif op == MAX or op == AMAX:
            for o in range(outer):
                for j in range(inner):
                    y[U(o * inner + j)] = _nan_max(x, o * n * inner + j, n, inner)
        elif op == LOGSUMEXP:  # an infinite max is not subtracted (PyTorch's rule)
            for o in range(outer):
                for j in range(inner):
                    base = o * n * inner + j
                    m = _nan_max(x, base, n, inner) if n > 0 else 0.0
                    shift = 0.0 if m == np.inf or m == -np.inf else m
                    s = 0.0
                    for k in range(n):
                        s += _exp(x[U(base + k * inner)] - shift)
                    y[U(o * inner + j)] = np.log(s) + shift
        elif op == PROD:  # in the input's dtype, as NumPy and PyTorch (float32 overflows)
            for o in range(outer):
                for j in range(inner):
                    at = U(o * inner + j)
                    y[at] = 1.0
                    for k in range(n):
                        y[at] *= x[U(o * n * inner + j + k * inner)]
        elif op == CUMSUM:  # the running sum in float64, as PyTorch's accumulator
            for o in range(outer):
                for j in range(inner):
                    base = o * n * inner + j
                    s = 0.0
                    for k in range(n):
                        s += x[U(base + k * inner)]
                        y[U(base + k * inner)] = s
        elif (op == SOFTMAX or op == LOG_SOFTMAX) and n > 0:
            for o in range(outer):
                for j in range(inner):
                    base = o * n * inner + j
                    m = x[base]
                    for k in range(1, n):
                        m = max(m, x[U(base + k * inner)])
                    s = 0.0
                    for k in range(n):
                        s += _exp(x[U(base + k * inner)] - m)
                    if op == SOFTMAX:
                        for k in range(n):
                            y[U(base + k * inner)] = _exp(x[U(base + k * inner)] - m) / s
                    else:
                        lse = m + np.log(s)
                        for k in range(n):
                            y[U(base + k * inner)] = x[U(base + k * inner)] - lse

    return reduce_forward


reduce_forward = per_code(_reduce_forward_of)


def _reduce_vjp_of(op):
    def reduce_vjp(code, x, y, gy, gx, outer, n, inner):
        one = np.ones(1, x.dtype)[0]  # a product in the input's dtype, as NumPy's
        if op == SUM:
            for o in range(outer):
                for k in range(n):
                    base = (o * n + k) * inner
                    for j in range(inner):
                        gx[U(base + j)] += gy[U(o * inner + j)]
        elif op == MEAN:
            for o in range(outer):
                for k in range(n):
                    base = (o * n + k) * inner
                    for j in range(inner):
                        gx[U(base + j)] += gy[U(o * inner + j)] / n
        elif op == MAX:  # the first maximal element takes the gradient, as torch.max(dim);
            # a NaN maximum: every NaN element gets a NaN gradient (the slope at a NaN is NaN), the
            # others none, as elementwise maximum
            for o in range(outer):
                for j in range(inner):
                    base = o * n * inner + j
                    m = y[U(o * inner + j)]
                    for k in range(n):
                        v = x[U(base + k * inner)]
                        if m != m:
                            if v != v:
                                gx[U(base + k * inner)] += v
                        elif v == m:
                            gx[U(base + k * inner)] += gy[U(o * inner + j)]
                            break
        elif op == AMAX:  # the maximal elements share the gradient equally, as torch.amax;
            # a NaN maximum as MAX's
            for o in range(outer):
                for j in range(inner):
                    base = o * n * inner + j
                    m = y[U(o * inner + j)]
                    if m != m:
                        for k in range(n):
                            v = x[U(base + k * inner)]
                            if v != v:
                                gx[U(base + k * inner)] += v
                        continue
                    count = 0
                    for k in range(n):
                        if x[U(base + k * inner)] == m:
                            count += 1
                    share = gy[U(o * inner + j)] / count
                    for k in range(n):
                        if x[U(base + k * inner)] == m:
                            gx[U(base + k * inner)] += share
        elif op == LOGSUMEXP:  # gx = g * softmax = g * exp(x - y)
            for o in range(outer):
                for j in range(inner):
                    base = o * n * inner + j
                    m = y[U(o * inner + j)]
                    g = gy[U(o * inner + j)]
                    for k in range(n):
                        p = base + k * inner
                        gx[p] += _exp(x[p] - m) * g
        elif op == PROD:  # the product of the others: y / x without zeros (PyTorch's rule)
            for o in range(outer):
                for j in range(inner):
                    base = o * n * inner + j
                    g = gy[U(o * inner + j)]
                    zeros = 0
                    for k in range(n):
                        if x[U(base + k * inner)] == 0:
                            zeros += 1
                    if zeros == 0:
                        m = y[U(o * inner + j)]
                        for k in range(n):
                            p = base + k * inner
                            gx[p] += m / x[p] * g
                    else:  # the others hold a zero: 0, or NaN where they hold a NaN or inf
                        rest = one
                        bad = 0  # non-zero elements that are NaN or inf
                        for k in range(n):
                            v = x[U(base + k * inner)]
                            if v != 0:
                                rest *= v
                                if not np.isfinite(v):
                                    bad += 1
                        for k in range(n):
                            p = base + k * inner
                            v = x[p]
                            if v == 0 and zeros == 1:
                                gx[p] += rest * g
                            elif zeros == 1 and bad - (0 if np.isfinite(v) else 1) > 0:
                                gx[p] += np.nan
                            else:
                                gx[p] += 0.0 * g
        elif op == CUMSUM:  # the reversed running sum of g (float64)
            for o in range(outer):
                for j in range(inner):
                    base = o * n * inner + j
                    s = 0.0
                    for k in range(n - 1, -1, -1):
                        p = base + k * inner
                        s += gy[p]
                        gx[p] += s
        elif op == SOFTMAX:  # gx = y * (g - <g, y>)
            for o in range(outer):
                for j in range(inner):
                    base = o * n * inner + j
                    dot = 0.0
                    for k in range(n):
                        dot += gy[U(base + k * inner)] * y[U(base + k * inner)]
                    for k in range(n):
                        p = base + k * inner
                        gx[p] += y[p] * (gy[p] - dot)
        elif op == LOG_SOFTMAX:  # gx = g - softmax * sum(g)
            for o in range(outer):
                for j in range(inner):
                    base = o * n * inner + j
                    s = 0.0
                    for k in range(n):
                        s += gy[U(base + k * inner)]
                    for k in range(n):
                        p = base + k * inner
                        gx[p] += gy[p] - _exp(y[p]) * s

    return reduce_vjp


reduce_vjp = per_code(_reduce_vjp_of)


@jit
def _shifted_exps(x, nrows, ncls):
    """(exp(x - row max) as float64 (nrows * ncls), row max (nrows)) for logits (nrows, ncls).

    Why three passes: the exponentials then run as one flat loop that LLVM vectorises; inside
    a per-row loop of ncls (10 for MNIST) they stayed scalar, 4-5x slower (measured here).
    """
    e = np.empty(nrows * ncls, np.float64)
    mx = np.empty(nrows, x.dtype)
    for i in range(nrows):
        base = i * ncls
        m = x[base]
        for c in range(1, ncls):
            m = max(m, x[U(base + c)])
        mx[i] = m
        for c in range(ncls):
            e[U(base + c)] = x[U(base + c)] - m
    for k in range(nrows * ncls):
        e[U(k)] = _exp(e[U(k)])
    return e, mx


@jit
def cross_entropy_forward(x, labels, y, nrows, ncls):
    """Per-row loss logsumexp(x_i) - x_i[label_i] for logits (nrows, ncls)."""
    e, mx = _shifted_exps(x, nrows, ncls)
    for i in range(nrows):
        base = i * ncls
        s = 0.0
        for c in range(ncls):
            s += e[U(base + c)]
        y[i] = mx[i] + np.log(s) - x[base + labels[i]]


@jit
def cross_entropy_vjp(x, labels, gy, gx, nrows, ncls):
    e, mx = _shifted_exps(x, nrows, ncls)
    for i in range(nrows):
        base = i * ncls
        s = 0.0
        for c in range(ncls):
            s += e[U(base + c)]
        g = gy[i]
        for c in range(ncls):
            gx[U(base + c)] += g * e[U(base + c)] / s
        gx[base + labels[i]] -= g


# ----------------------------------------------------------------------------- rows of the tape
# (as in elementwise.py: inlined into each op's row kernels, ``code`` a constant there)


@jit_inline
def reduce_row_forward(code, tape, values, ivalues, params, r):
    ip = iattrs(tape, r)
    reduce_forward(code, operand(tape, values, params, r, 0), output(tape, values, params, r),
                   ip[OUTER], ip[N], ip[INNER])


@jit_inline
def reduce_row_vjp(code, tape, values, ivalues, params, grads, pgrads, need, scratch, r):
    if needs(tape, need, r, 0):
        ip = iattrs(tape, r)
        reduce_vjp(code, operand(tape, values, params, r, 0), output(tape, values, params, r),
                   output_grad(tape, grads, pgrads, r), operand_grad(tape, grads, pgrads, r, 0),
                   ip[OUTER], ip[N], ip[INNER])


@jit_inline
def loss_row_forward(code, tape, values, ivalues, params, r):
    ip = iattrs(tape, r)
    cross_entropy_forward(operand(tape, values, params, r, 0), ioperand(tape, ivalues, r, 1),
                          output(tape, values, params, r), ip[ROWS], ip[CLASSES])


@jit_inline
def loss_row_vjp(code, tape, values, ivalues, params, grads, pgrads, need, scratch, r):
    if needs(tape, need, r, 0):
        ip = iattrs(tape, r)
        cross_entropy_vjp(operand(tape, values, params, r, 0), ioperand(tape, ivalues, r, 1),
                          output_grad(tape, grads, pgrads, r),
                          operand_grad(tape, grads, pgrads, r, 0), ip[ROWS], ip[CLASSES])
