"""Matrix products, forward and VJP, for 2-D and batched operands.

ip = [m, k, n, nbatch, trans_b, a_off_0, b_off_0, a_off_1, b_off_1, ...]: batch i multiplies the
(m, k) matrix at a_off_i of A by the (k, n) matrix at b_off_i of B (stored as (n, k) when trans_b,
so a Linear layer's (out, in) weight needs no transpose copy) into the i-th (m, n) block of C.
Offsets are computed at record time, so broadcast batch dimensions cost nothing here.

Why two code paths: np.dot calls BLAS, which wins for large matrices, but for the tiny products
of an RNN step or a narrow MLP the call overhead dominates and a loop that stays in cache wins.
"""

import numpy as np

from ..opcodes import Op
from ._jit import jit, jit_reduce
from .elementwise import tanh32
from .vecmath import sigmoid64, tanh64

# Unsigned indices: Numba then skips the negative-index wraparound branch, which otherwise
# blocks vectorisation of strided loops (4x on a bias add, bench/README.md).
U = np.uintp

BLAS_MIN_WORK = 16384  # m*k*n above which BLAS beats the register loops (bench/bench_matmul.py)


# With trans_b (every Linear layer, LINEAR_ACT, the RNN cell) the loops below work on four rows
# or columns at a time. Why: a single running sum is a chain of dependent adds, bound by the add
# latency rather than the arithmetic, and an update of one row per pass loads and stores the
# destination once per term; four independent sums, or four terms per pass, keep the SIMD units
# busy (a 1x64x64 float32 product: 1.1 us -> 0.5 us). Those sums start from their first product
# so that they keep the arrays' dtype (a 0.0 start accumulates float32 products in float64).
# Without trans_b (a plain ``@``) the loops stay simple: blocking them as well cost more
# one-time compilation, for products no built-in layer records.


@jit_reduce
def _small_matmul(A, ao, B, bo, C, co, m, k, n, tb):
    if tb:  # C[i, j] = <A[i, :], B[j, :]>: both rows contiguous; four columns per pass
        for i in range(m):
            ai, ci = ao + i * k, co + i * n
            j = 0
            while j + 4 <= n:
                b0 = bo + j * k
                b1, b2, b3 = b0 + k, b0 + 2 * k, b0 + 3 * k
                a = A[U(ai)]
                s0, s1, s2, s3 = a * B[U(b0)], a * B[U(b1)], a * B[U(b2)], a * B[U(b3)]
                for p in range(1, k):
                    a = A[U(ai + p)]
                    s0 += a * B[U(b0 + p)]
                    s1 += a * B[U(b1 + p)]
                    s2 += a * B[U(b2 + p)]
                    s3 += a * B[U(b3 + p)]
                C[U(ci + j)] = s0
                C[U(ci + j + 1)] = s1
                C[U(ci + j + 2)] = s2
                C[U(ci + j + 3)] = s3
                j += 4
            for j in range(j, n):
                b0 = bo + j * k
                s = A[U(ai)] * B[U(b0)]
                for p in range(1, k):
                    s += A[U(ai + p)] * B[U(b0 + p)]
                C[U(ci + j)] = s
        return
    for i in range(m):  # C[i, :] = sum_p A[i, p] B[p, :]
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
        for i in range(m):
            ai, ci = ao + i * k, co + i * n
            if tb:  # gA[i, :] += sum_j gC[i, j] B[j, :]: four rows of B per pass
                j = 0
                while j + 4 <= n:
                    g0, g1, g2, g3 = gC[U(ci + j)], gC[U(ci + j + 1)], gC[U(ci + j + 2)], gC[
                        U(ci + j + 3)]
                    b0 = bo + j * k
                    b1, b2, b3 = b0 + k, b0 + 2 * k, b0 + 3 * k
                    for p in range(k):
                        gA[U(ai + p)] += (g0 * B[U(b0 + p)] + g1 * B[U(b1 + p)]
                                          + g2 * B[U(b2 + p)] + g3 * B[U(b3 + p)])
                    j += 4
                for j in range(j, n):
                    g0, b0 = gC[U(ci + j)], bo + j * k
                    for p in range(k):
                        gA[U(ai + p)] += g0 * B[U(b0 + p)]
            else:  # gA[i, p] += <gC[i, :], B[p, :]>
                for p in range(k):
                    s = 0.0
                    for j in range(n):
                        s += gC[U(ci + j)] * B[U(bo + p * n + j)]
                    gA[U(ai + p)] += s
    if nb_ and tb:  # gB[j, :] += gC[i, j] A[i, :]: four rows of gB per pass over A[i, :]
        for i in range(m):
            ai, ci = ao + i * k, co + i * n
            j = 0
            while j + 4 <= n:
                b0 = bo + j * k
                b1, b2, b3 = b0 + k, b0 + 2 * k, b0 + 3 * k
                g0, g1, g2, g3 = gC[U(ci + j)], gC[U(ci + j + 1)], gC[U(ci + j + 2)], gC[
                    U(ci + j + 3)]
                for p in range(k):
                    a = A[U(ai + p)]
                    gB[U(b0 + p)] += g0 * a
                    gB[U(b1 + p)] += g1 * a
                    gB[U(b2 + p)] += g2 * a
                    gB[U(b3 + p)] += g3 * a
                j += 4
            for j in range(j, n):
                b0, g0 = bo + j * k, gC[U(ci + j)]
                for p in range(k):
                    gB[U(b0 + p)] += g0 * A[U(ai + p)]
    elif nb_:  # gB[p, :] += A[i, p] gC[i, :]
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


@jit
def linear_act_forward(X, W, c, Y, ip):
    """Y (m, n) = act(X (m, k) @ W.T + c), c a bias (n,) or (m, n): the product, then the add
    and the activation in place while Y is hot (ip[7]: the activation's unary op code, ip[8]:
    c has Y's shape)."""
    matmul_forward(X, W, Y, ip)
    m, n = ip[0], ip[2]
    if ip[8]:
        for i in range(m * n):
            Y[U(i)] += c[U(i)]
    else:
        for i in range(m):
            for j in range(n):
                Y[U(i * n + j)] += c[U(j)]
    _activate_in_place(ip[7], Y)


@jit
def _activate_in_place(act, Y):
    """Y = act(Y), the same arithmetic as the tanh / sigmoid / relu rows (unary_forward).

    Why not unary_forward(act, Y, Y): LLVM vectorises its loops behind a runtime check that
    input and output do not overlap, which fails when they are one array, leaving the scalar
    loop (a tanh layer of 100 x 16 float32: 13 us slower per step)."""
    if act == Op.TANH:
        if Y.itemsize == 4:
            for i in range(Y.size):
                Y[i] = tanh32(Y[i])
        else:
            for i in range(Y.size):
                Y[i] = tanh64(np.float64(Y[i]))
    elif act == Op.SIGMOID:
        for i in range(Y.size):
            Y[i] = sigmoid64(np.float64(Y[i]))
    else:
        for i in range(Y.size):
            Y[i] = Y[i] if Y[i] > 0 else 0.0


@jit
def linear_act_vjp(X, W, Y, gY, gX, nx, gW, nw, gc, nc, ip, scratch):
    """gZ = gY * act'(Z), read off the output (tanh: 1 - Y^2, sigmoid: Y (1 - Y), relu: Y > 0),
    into scratch[:m*n]; then the matmul VJPs of gZ (the rest of scratch is theirs) and gc (+)=
    gZ or its column sums (overwritten in mode 2, as matmul)."""
    m, n, act = ip[0], ip[2], ip[7]
    mn = m * n
    gz = scratch[:mn]
    if act == Op.TANH:
        for i in range(mn):
            gz[i] = gY[i] * (1.0 - Y[i] * Y[i])
    elif act == Op.SIGMOID:
        for i in range(mn):
            gz[i] = gY[i] * Y[i] * (1.0 - Y[i])
    else:
        for i in range(mn):
            gz[i] = gY[i] if Y[i] > 0 else 0.0
    matmul_vjp(X, W, gz, gX, nx, gW, nw, ip, scratch[mn:])
    if nc:
        if nc == 2:
            gc[:] = 0.0
        if ip[8]:
            for i in range(mn):
                gc[U(i)] += gz[U(i)]
        else:
            for i in range(m):
                for j in range(n):
                    gc[U(j)] += gz[U(i * n + j)]
