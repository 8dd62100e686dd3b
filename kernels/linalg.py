"""Matrix products, forward and VJP, for 2-D and batched operands.

ip = [m, k, n, nbatch, trans_b, a_off_0, b_off_0, a_off_1, b_off_1, ...]: batch i multiplies the
(m, k) matrix at a_off_i of A by the (k, n) matrix at b_off_i of B (stored as (n, k) when trans_b,
so a Linear layer's (out, in) weight needs no transpose copy) into the i-th (m, n) block of C.
Offsets are computed at record time, so broadcast batch dimensions cost nothing here.

Why two code paths: np.dot calls BLAS, which wins for large matrices, but for the tiny products
of an RNN step or a narrow MLP the call overhead dominates and a loop that stays in cache wins.
"""

import numpy as np

from ._jit import jit

BLAS_MIN_WORK = 16384  # m*k*n above which BLAS beats the register loops (bench/bench_matmul.py)


@jit
def _small_matmul(A, ao, B, bo, C, co, m, k, n, tb):
    if tb:  # C[i, j] = <A[i, :], B[j, :]>: both rows contiguous
        for i in range(m):
            for j in range(n):
                s = 0.0
                for p in range(k):
                    s += A[ao + i * k + p] * B[bo + j * k + p]
                C[co + i * n + j] = s
        return
    for i in range(m):
        crow = co + i * n
        for j in range(n):
            C[crow + j] = 0.0
        for p in range(k):
            a = A[ao + i * k + p]
            brow = bo + p * n
            for j in range(n):
                C[crow + j] += a * B[brow + j]


@jit
def matmul_forward(A, B, C, ip):
    m, k, n, nb, tb = ip[0], ip[1], ip[2], ip[3], ip[4]
    big = m * k * n >= BLAS_MIN_WORK and m > 1 and n > 1
    for bi in range(nb):
        ao = ip[5 + 2 * bi]
        bo = ip[6 + 2 * bi]
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
def matmul_vjp(A, B, gC, gA, na, gB, nb_, ip):
    """gA += gC @ B^T (if na); gB += A^T @ gC (if nb_); with B stored transposed when trans_b."""
    m, k, n, nb, tb = ip[0], ip[1], ip[2], ip[3], ip[4]
    big = m * k * n >= BLAS_MIN_WORK and m > 1 and n > 1
    for bi in range(nb):
        ao = ip[5 + 2 * bi]
        bo = ip[6 + 2 * bi]
        co = bi * m * n
        if big:
            Cg = gC[co : co + m * n].reshape((m, n))
            if na:
                if tb:
                    gA[ao : ao + m * k] += np.dot(Cg, B[bo : bo + k * n].reshape((n, k))).ravel()
                else:
                    gA[ao : ao + m * k] += np.dot(Cg, B[bo : bo + k * n].reshape((k, n)).T).ravel()
            if nb_:
                Am = A[ao : ao + m * k].reshape((m, k))
                if tb:
                    gB[bo : bo + k * n] += np.dot(Cg.T, Am).ravel()
                else:
                    gB[bo : bo + k * n] += np.dot(Am.T, Cg).ravel()
            continue
        if na:
            for i in range(m):
                for p in range(k):
                    s = 0.0
                    if tb:
                        for j in range(n):
                            s += gC[co + i * n + j] * B[bo + j * k + p]
                    else:
                        for j in range(n):
                            s += gC[co + i * n + j] * B[bo + p * n + j]
                    gA[ao + i * k + p] += s
        if nb_:
            if tb:
                for i in range(m):
                    for j in range(n):
                        g = gC[co + i * n + j]
                        for p in range(k):
                            gB[bo + j * k + p] += g * A[ao + i * k + p]
            else:
                for i in range(m):
                    for p in range(k):
                        a = A[ao + i * k + p]
                        for j in range(n):
                            gB[bo + p * n + j] += a * gC[co + i * n + j]
