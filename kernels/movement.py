"""Data movement: strided views (transpose, slicing, broadcast_to), gather and concatenate.

Each forward copies into the output slot; each VJP scatters-adds back, so overlapping reads
(a broadcast, a repeated gather index) sum their gradients as they must.
"""

import numpy as np

from ._jit import jit


@jit
def strided_forward(x, y, ip):
    """y[i] = x[base + sum_d idx_d * stride_d]; ip = [ndim, base, shape..., strides...]."""
    nd = ip[0]
    idx = np.zeros(nd, np.int64)
    off = ip[1]
    for i in range(y.size):
        y[i] = x[off]
        d = nd - 1
        while d >= 0:
            idx[d] += 1
            off += ip[2 + nd + d]
            if idx[d] < ip[2 + d]:
                break
            off -= ip[2 + nd + d] * ip[2 + d]
            idx[d] = 0
            d -= 1


@jit
def strided_vjp(gy, gx, ip):
    nd = ip[0]
    idx = np.zeros(nd, np.int64)
    off = ip[1]
    for i in range(gy.size):
        gx[off] += gy[i]
        d = nd - 1
        while d >= 0:
            idx[d] += 1
            off += ip[2 + nd + d]
            if idx[d] < ip[2 + d]:
                break
            off -= ip[2 + nd + d] * ip[2 + d]
            idx[d] = 0
            d -= 1


@jit
def gather_forward(x, index, y, outer, n, inner):
    """y (outer, m, inner) = x (outer, n, inner) taken at index (m,) along the middle axis."""
    m = index.size
    for o in range(outer):
        for t in range(m):
            src = (o * n + index[t]) * inner
            dst = (o * m + t) * inner
            for j in range(inner):
                y[dst + j] = x[src + j]


@jit
def gather_vjp(index, gy, gx, outer, n, inner):
    m = index.size
    for o in range(outer):
        for t in range(m):
            src = (o * n + index[t]) * inner
            dst = (o * m + t) * inner
            for j in range(inner):
                gx[src + j] += gy[dst + j]


@jit
def concat_piece(x, y, outer, width, total, pos, forward):
    """Copy input piece (outer, width) into columns [pos, pos+width) of y (outer, total), or back."""
    for o in range(outer):
        for t in range(width):
            if forward:
                y[o * total + pos + t] = x[o * width + t]
            else:
                x[o * width + t] += y[o * total + pos + t]
