"""Matrix products, forward and VJP, for 2-D and batched operands.

ip = [m, k, n, nbatch, trans_b, a_off_0, b_off_0, a_off_1, b_off_1, ...]: batch i multiplies the
(m, k) matrix at a_off_i of A by the (k, n) matrix at b_off_i of B (stored as (n, k) when trans_b,
so a Linear layer's (out, in) weight needs no transpose copy) into the i-th (m, n) block of C.
Offsets are computed at record time, so broadcast batch dimensions cost nothing here.

Why two code paths: np.dot calls BLAS, which wins for large matrices, but for the tiny products
of an RNN step or a narrow MLP the call overhead dominates and a loop that stays in cache wins.
"""

import numpy as np

from ._jit import jit, jit_reduce

# Unsigned indices: Numba then skips the negative-index wraparound branch, which otherwise
# blocks vectorisation of strided loops (4x on a bias add, bench/README.md).
U = np.uintp

BLAS_MIN_WORK = 16384  # m*k*n above which BLAS beats the register loops (bench/bench_matmul.py)


@jit_reduce
def _small_matmul(A, ao, B, bo, C, co, m, k, n, tb):
    if tb:  # C[i, j] = <A[i, :], B[j, :]>: both rows contiguous
        for i in range(m):
            for j in range(n):
                s = 0.0
                for p in range(k):
                    s += A[U(ao + i * k + p)] * B[U(bo + j * k + p)]
                C[U(co + i * n + j)] = s
        return
    for i in range(m):
        crow = co + i * n
        for j in range(n):
            C[U(crow + j)] = 0.0
        for p in range(k):
            a = A[U(ao + i * k + p)]
            brow = bo + p * n
            for j in range(n):
                C[U(crow + j)] += a * B[U(brow + j)]


@jit
def matmul_forward(A, B, C, ip):
    m, k, n, nb, tb = ip[0], ip[1], ip[2], ip[3], ip[4]
    big = m * k * n >= BLAS_MIN_WORK and m > 1 and n > 1
    for bi in range(nb):
        ao = ip[U(5 + 2 * bi)]
        bo = ip[U(6 + 2 * bi)]
        co = bi * m * n
        if big:
            Am = A[ao : ao + m * k].reshape((m, k))
            Cm = C[co : co + m * n].reshape((m, n))
            if tb:
                np.dot(Am, B[bo : bo + k * n].reshape((n, k)).T, Cm)
            else:
                np.dot(Am, B[bo : bo + k * n].reshape((k, n)), Cm)
        else:
            _small_matmul(A, ao, B, bo, C, co, m, k, n, tb)


@jit
def _add_into(dst, off, src):
    for i in range(src.size):
        dst[U(off + i)] += src[i]


@jit
def matmul_vjp(A, B, gC, gA, na, gB, nb_, ip, scratch):
    """gA += gC @ B^T (if na); gB += A^T @ gC (if nb_); with B stored transposed when trans_b.

    na / nb_ are gradient modes: 0 none, 1 accumulate, 2 this row is the only consumer: with a
    single (unbatched) product the gradient is then overwritten, not added to, on both paths, so
    a training step skips clearing it (fastgrad/compile.py, ``overwritten_by_vjp``). Otherwise
    BLAS writes into ``scratch`` and we add: never an allocation per call (a fresh 400 KB
    buffer costs more than the product on this VM).
    """
    m, k, n, nb, tb = ip[0], ip[1], ip[2], ip[3], ip[4]
    big = m * k * n >= BLAS_MIN_WORK and m > 1 and n > 1
    for bi in range(nb):
        ao = ip[5 + 2 * bi]
        bo = ip[6 + 2 * bi]
        co = bi * m * n
        if big:
            Cg = gC[co : co + m * n].reshape((m, n))
            if na:
                out = gA[ao : ao + m * k] if na == 2 and nb == 1 else scratch[: m * k]
                if tb:
                    np.dot(Cg, B[bo : bo + k * n].reshape((n, k)), out.reshape((m, k)))
                else:
                    np.dot(Cg, B[bo : bo + k * n].reshape((k, n)).T, out.reshape((m, k)))
                if not (na == 2 and nb == 1):
                    _add_into(gA, ao, out)
            if nb_:
                out = gB[bo : bo + k * n] if nb_ == 2 and nb == 1 else scratch[: k * n]
                Am = A[ao : ao + m * k].reshape((m, k))
                if tb:
                    np.dot(Cg.T, Am, out.reshape((n, k)))
                else:
                    np.dot(Am.T, Cg, out.reshape((k, n)))
                if not (nb_ == 2 and nb == 1):
                    _add_into(gB, bo, out)
            continue
        _small_matmul_vjp(A, ao, B, bo, gC, co, gA, na, gB, nb_, m, k, n, tb, nb == 1)


@jit_reduce
def _small_matmul_vjp(A, ao, B, bo, gC, co, gA, na, gB, nb_, m, k, n, tb, single):
    # Mode 2 with a single product: this row is the gradient's only writer, so it overwrites
    # (like the BLAS path) and the training step need not clear that slot beforehand.
    if na == 2 and single:
        for i in range(m * k):
            gA[U(ao + i)] = 0.0
    if nb_ == 2 and single:
        for i in range(k * n):
            gB[U(bo + i)] = 0.0
    if na:
        if tb:  # gA[i, :] += sum_j gC[i, j] B[j, :]: contiguous rows, no reduction
            for i in range(m):
                for j in range(n):
                    g = gC[U(co + i * n + j)]
                    for p in range(k):
                        gA[U(ao + i * k + p)] += g * B[U(bo + j * k + p)]
        else:
            for i in range(m):
                for p in range(k):
                    s = 0.0
                    for j in range(n):
                        s += gC[U(co + i * n + j)] * B[U(bo + p * n + j)]
                    gA[U(ao + i * k + p)] += s
    if nb_:
        if tb:
            for i in range(m):
                for j in range(n):
                    g = gC[U(co + i * n + j)]
                    for p in range(k):
                        gB[U(bo + j * k + p)] += g * A[U(ao + i * k + p)]
        else:
            for i in range(m):
                for p in range(k):
                    a = A[U(ao + i * k + p)]
                    for j in range(n):
                        gB[U(bo + p * n + j)] += a * gC[U(co + i * n + j)]


@jit
def linear_forward(X, W, b, Y, ip):
    """Y (m, n) = X (m, k) @ W.T + b: the matmul, then the bias row added while Y is hot."""
    matmul_forward(X, W, Y, ip)
    m, n = ip[0], ip[2]
    for i in range(m):
        for j in range(n):
            Y[U(i * n + j)] += b[j]


@jit
def linear_vjp(X, W, gY, gX, nx, gW, nw, gb, nbias, ip, scratch):
    """The matmul VJPs, and gb (+)= column sums of gY (overwritten in mode 2, as matmul)."""
    matmul_vjp(X, W, gY, gX, nx, gW, nw, ip, scratch)
    if nbias:
        m, n = ip[0], ip[2]
        if nbias == 2:
            gb[:] = 0.0
        for i in range(m):
            for j in range(n):
                gb[j] += gY[U(i * n + j)]
