"""Data movement: strided views (transpose, slicing, broadcast_to), gather, concatenate and
index_add.

Each forward copies into the output slot; each VJP scatters-adds back, so overlapping reads
(a broadcast, a repeated gather index) sum their gradients as they must.
"""

import numpy as np

from ._jit import jit, jit_entry, jit_inline
from .codes import CONCAT, GATHER, INDEX_ADD, STRIDED
from ..ops import movement as _layouts
from .views import (iattrs, ioperand, n_operands, needs, operand, operand_grad, output,
                    output_grad)

__all__ = ["BASE", "CONCAT_OUTER", "DIMS", "INNER", "N", "NDIM", "OUTER", "TOTAL", "WIDTHS",
           "concat_piece", "gather_forward", "gather_vjp", "load_indices",
           "shape_row_forward", "shape_row_vjp", "strided_copy"]

# Where the rows' integer attributes sit (fastgrad/ops/movement.py; Numba reads these module
# ints as constants): strided [ndim, base, dims..., strides...], gather [outer, n, inner],
# concat [outer, total, widths...]
_STRIDED, _AXIS = _layouts.STRIDED_LAYOUT, _layouts.AXIS_LAYOUT
_CONCAT = _layouts.CONCAT_LAYOUT
NDIM, BASE, DIMS = _STRIDED.index("ndim"), _STRIDED.index("base"), len(_STRIDED.ints)
OUTER, N, INNER = (_AXIS.index(f) for f in ("outer", "n", "inner"))
CONCAT_OUTER, TOTAL, WIDTHS = _CONCAT.index("outer"), _CONCAT.index("total"), len(_CONCAT.ints)

# Unsigned indices: Numba then skips the negative-index wraparound branch, which otherwise
# blocks vectorisation of strided loops (4x on a bias add, measured here).
U = np.uintp


@jit
def strided_copy(x, y, ip, forward):
    """Forward: y[i] = x[base + sum_d idx_d * stride_d]. Backward (x, y = gx, gy): gx[...] += gy[i].

    ip = [ndim, base, shape..., strides...]; the multi-index advances like an odometer.
    """
    nd = ip[NDIM]
    idx = np.zeros(nd, np.int64)
    off = ip[BASE]
    for i in range(y.size):
        if forward:
            y[i] = x[off]
        else:
            x[off] += y[i]
        d = nd - 1
        while d >= 0:
            idx[d] += 1
            off += ip[U(DIMS + nd + d)]
            if idx[d] < ip[U(DIMS + d)]:
                break
            off -= ip[U(DIMS + nd + d)] * ip[U(DIMS + d)]
            idx[d] = 0
            d -= 1


@jit
def gather_forward(x, index, y, outer, n, inner, add):
    """y (outer, m, inner) = x (outer, n, inner) taken at index (m,) along the middle axis;
    with ``add``, y += those rows (index_add's VJP for its source: the gradient read back at
    the rows it was added to)."""
    m = index.size
    for o in range(outer):
        for t in range(m):
            src = (o * n + index[t]) * inner
            dst = (o * m + t) * inner
            if add:
                for j in range(inner):
                    y[U(dst + j)] += x[U(src + j)]
            else:
                for j in range(inner):
                    y[U(dst + j)] = x[U(src + j)]


@jit
def gather_vjp(index, gy, gx, outer, n, inner):
    m = index.size
    for o in range(outer):
        for t in range(m):
            src = (o * n + index[t]) * inner
            dst = (o * m + t) * inner
            for j in range(inner):
                gx[U(src + j)] += gy[U(dst + j)]


@jit
def concat_piece(x, y, outer, width, total, pos, forward):
    """Copy input piece (outer, width) into columns [pos, pos+width) of y (outer, total), or back."""
    for o in range(outer):
        for t in range(width):
            if forward:
                y[U(o * total + pos + t)] = x[U(o * width + t)]
            else:
                x[U(o * width + t)] += y[U(o * total + pos + t)]


@jit_entry
def load_indices(dst, src, lo, hi):
    """Copy the integer array ``src`` (any shape and integer dtype, ``dst.size`` entries) into
    the int64 slot ``dst``; True when every entry lies in [lo, hi). A compiled step loads its
    integer inputs (labels, indices) with this one native call, and checks them before any
    kernel indexes with them (np.copyto plus a separate range check took two calls). The
    copy is checked, not ``src``: the caller's array may change meanwhile (another thread), and
    the values checked must be the values used (lo >= 0: an unsigned value above 2**63 - 1,
    wrapped negative by the copy, is refused). On False, ``dst`` holds ``lo`` (no out-of-range
    index stays in the slot): the caller raises."""
    flat = src.ravel()
    for i in range(dst.size):
        dst[i] = flat[i]
    ok = True
    for i in range(dst.size):
        v = dst[i]
        ok &= (v >= lo) & (v < hi)
    if not ok:
        dst[:] = lo
    return ok


# ----------------------------------------------------------------------------- rows of the tape
# (as in elementwise.py: inlined into each op's row kernels, ``code`` a constant there)


@jit_inline
def shape_row_forward(code, tape, values, ivalues, params, r):
    ip = iattrs(tape, r)
    if code == STRIDED:
        strided_copy(operand(tape, values, params, r, 0), output(tape, values, params, r), ip,
                     True)
    elif code == GATHER:
        gather_forward(operand(tape, values, params, r, 0), ioperand(tape, ivalues, r, 1),
                       output(tape, values, params, r), ip[OUTER], ip[N], ip[INNER], False)
    elif code == CONCAT:
        y = output(tape, values, params, r)
        outer, total = ip[CONCAT_OUTER], ip[TOTAL]
        pos = 0
        for t in range(n_operands(tape, r)):
            width = ip[WIDTHS + t]
            concat_piece(operand(tape, values, params, r, t), y, outer, width, total, pos, True)
            pos += width
    elif code == INDEX_ADD:  # y = x, then src's rows added at the indices (as gather's VJP)
        x, y = operand(tape, values, params, r, 0), output(tape, values, params, r)
        for i in range(y.size):
            y[i] = x[i]
        gather_vjp(ioperand(tape, ivalues, r, 1), operand(tape, values, params, r, 2), y,
                   ip[OUTER], ip[N], ip[INNER])
    # RESHAPE: the output aliases the input's slot; nothing to do


@jit_inline
def shape_row_vjp(code, tape, values, ivalues, params, grads, pgrads, need, scratch, r):
    ip = iattrs(tape, r)
    gy = output_grad(tape, grads, pgrads, r)
    if code == STRIDED:
        if needs(tape, need, r, 0):
            strided_copy(operand_grad(tape, grads, pgrads, r, 0), gy, ip, False)
    elif code == GATHER:
        if needs(tape, need, r, 0):
            gather_vjp(ioperand(tape, ivalues, r, 1), gy, operand_grad(tape, grads, pgrads, r, 0),
                       ip[OUTER], ip[N], ip[INNER])
    elif code == CONCAT:
        outer, total = ip[CONCAT_OUTER], ip[TOTAL]
        pos = 0
        for t in range(n_operands(tape, r)):
            width = ip[WIDTHS + t]
            if needs(tape, need, r, t):
                concat_piece(operand_grad(tape, grads, pgrads, r, t), gy, outer, width, total,
                             pos, False)
            pos += width
    elif code == INDEX_ADD:
        if needs(tape, need, r, 0):
            gx = operand_grad(tape, grads, pgrads, r, 0)
            for i in range(gy.size):
                gx[i] += gy[i]
        if needs(tape, need, r, 2):
            gather_forward(gy, ioperand(tape, ivalues, r, 1),
                           operand_grad(tape, grads, pgrads, r, 2), ip[OUTER], ip[N], ip[INNER],
                           True)
