"""Matrix products, forward and VJP, for 2-D and batched operands.

ip = [m, k, n, nbatch, trans_b, a_off_0, b_off_0, a_off_1, b_off_1, ...]: batch i multiplies the
(m, k) matrix at a_off_i of A by the (k, n) matrix at b_off_i of B (stored as (n, k) when trans_b,
so a Linear layer's (out, in) weight needs no transpose copy) into the i-th (m, n) block of C.
Offsets are computed at record time, so broadcast batch dimensions cost nothing here.

Why two code paths: BLAS (gemm, kernels/blas.py) wins for large matrices, but for the tiny products
of an RNN step or a narrow MLP the call overhead dominates and a loop that stays in cache wins.
"""

import numpy as np

from ..ops import Op
from ..ops import matmul as _layouts
from .codes import LINEAR, LINEAR_ACT
from ._jit import jit, jit_inline, jit_reduce
from .blas import gemm
from .vecmath import sigmoid_of, tanh_of
from .views import (INTO_VALUE, add_scaled, iattrs, needs, operand, operand_grad, output,
                    output_grad)

__all__ = ["ACTIVATION", "BATCH", "BLAS_MIN_WORK", "BLAS_SMALL_KERNELS", "C_FULL", "K", "M", "N",
           "OFFSETS", "TB_BLAS_MIN_WORK_AVX512", "TB_LOOP_MAX_WORK", "TRANS_B",
           "VJP_LOOP_MAX_ROWS", "linear_act_forward", "linear_act_vjp", "linear_forward",
           "linear_vjp", "matmul_forward", "matmul_row_forward", "matmul_row_vjp", "matmul_vjp"]

# Where a product row's integer attributes sit (the layouts of fastgrad/ops/matmul.py; Numba
# reads these module ints as constants): m, k, n, the batch count, trans_b, then per batch
# entry the (a, b) offsets (a linear row's one pair at the same place), and for linear_act the
# activation's op code and whether the addend has the output's shape.
_PRODUCT, _FUSED = _layouts.LAYOUT, _layouts.LINEAR_ACT_LAYOUT
M, K, N, BATCH, TRANS_B = (_PRODUCT.index(f) for f in ("m", "k", "n", "batch", "trans_b"))
OFFSETS = len(_PRODUCT.ints)
ACTIVATION, C_FULL = _FUSED.index("activation"), _FUSED.index("c_full")
assert _FUSED.index("a_offset") == OFFSETS and _FUSED.index("b_offset") == OFFSETS + 1

# Unsigned indices: Numba then skips the negative-index wraparound branch, which otherwise
# blocks vectorisation of strided loops (4x on a bias add, measured here).
U = np.uintp

BLAS_MIN_WORK = 16384  # m*k*n from which BLAS beats the simple loops (plain @ products)
# trans_b products (every Linear layer, LINEAR_ACT, the RNN cell) stay in the blocked loops up
# to this much work when their dot products are long enough to fill SIMD lanes (k * itemsize
# >= 128 bytes). Measured on 2-core AMD EPYC, forward, loops vs BLAS: 16x64x64 float32 2.4 vs
# 4.2 us, float64 3.7 vs 4.6; 32x64x64 4.7 vs 5.8 / 7.1 vs 7.9; 64x128x10 2.5 vs 4.1 / 4.7 vs
# 8.0; 128x64x64 19.8 vs 14.0 (BLAS from there). Short rows leave the lanes idle: BLAS keeps
# those products once they have a few hundred outputs (100x2x16: 1.2 vs 0.6 us).
TB_LOOP_MAX_WORK = 131072

# An operand whose gradient target is its own value (INTO_VALUE, kernels/views.py): the BLAS
# path writes the weight's gradient product straight onto it, gemm(alpha=value_alpha, beta=1,
# C=the weight), so the gradient is never stored and no zeroing or second pass over it runs
# (docs/benchmarks.md, "Plain SGD folded into the backward sweep"). The loop path and the bias
# write the gradient into their slot, then add it while it is hot.


def _host_has_avx512() -> bool:
    try:
        from llvmlite import binding
        return bool(binding.get_host_cpu_features().get("avx512f", False))
    except Exception:  # features unknown: the rule measured without AVX-512
        return False


# On a CPU with AVX-512 the BLAS SciPy ships (OpenBLAS) picks its SkylakeX kernels, which have
# a path for small matrices, and the blocked loops lose to it from a few thousand
# multiply-adds: measured on a 2-core Intel Xeon (Cascade Lake), loops vs BLAS, float32 /
# float64: 64x128x10 5.2 vs 3.2 / 8.5 vs 6.0 us; 32x64x64 9.2 vs 6.1 / 15.3 vs 10.1; 16x64x64
# 4.4 vs 3.1 / 7.6 vs 4.0; 4x64x64 1.2 vs 1.0 / 2.0 vs 1.4; 100x16x16 4.7 vs 1.8 / 4.7 vs 2.7;
# but 2x64x64 0.6 vs 0.8 / 1.0 vs 1.1 and 16x16x16 0.85 vs 0.83 / 0.78 vs 0.95. There, a
# trans_b product of at least 4 rows goes to BLAS from this much work. (A module-level
# constant: Numba compiles it in, and its cache keeps one build per CPU model.)
BLAS_SMALL_KERNELS = _host_has_avx512()
TB_BLAS_MIN_WORK_AVX512 = 8192
# VJPs: the update loops below win only for a few rows (1x64x64 float32: 0.8 vs 1.2 us; 4x64x64
# 2.4 vs 4.3); from 16 rows BLAS wins (16x8x64: 1.7 vs 4.1 us; 100x2x16: 2.1 vs 5.9).
VJP_LOOP_MAX_ROWS = 8


@jit
def _use_blas(m, k, n, itemsize):
    """Whether a trans_b product's forward goes to BLAS (see TB_LOOP_MAX_WORK and
    BLAS_SMALL_KERNELS)."""
    if m == 1 or n == 1:
        return False
    if k < 8 and m * n >= 512:  # short rows (then k * itemsize < 128 too)
        return True
    work = m * k * n
    if BLAS_SMALL_KERNELS:
        return m >= 4 and work >= TB_BLAS_MIN_WORK_AVX512
    if k * itemsize >= 128:
        return work > TB_LOOP_MAX_WORK
    return work >= BLAS_MIN_WORK


# With trans_b the forward computes two rows by four columns of C per pass: eight independent
# dot products, each vectorised along k. Why: a single running sum is a chain of dependent adds,
# bound by the add latency; eight chains sharing two loads of A and four of B keep the SIMD
# units busy (16x64x64 float32: 6.0 us with one row by four columns, 2.4 us like this). The
# sums start from a zero of the arrays' dtype, so float32 products are summed in float32.
# Without trans_b (a plain ``@``) the loops stay simple: products no built-in layer records.


@jit_reduce
def _dot_row_tb(A, a0, B, bo, C, c0, k, n):
    """C[c0 + j] = <A[a0:a0+k], B[j]> for the n rows of B (stored (n, k) from bo), four at a
    time: a single row (an RNN step at batch 1, or the last of an odd count)."""
    z = C.dtype.type(0)
    j = 0
    while j + 4 <= n:
        b0 = bo + j * k
        b1, b2, b3 = b0 + k, b0 + 2 * k, b0 + 3 * k
        s0 = s1 = s2 = s3 = z
        for p in range(k):
            x = A[U(a0 + p)]
            s0 += x * B[U(b0 + p)]
            s1 += x * B[U(b1 + p)]
            s2 += x * B[U(b2 + p)]
            s3 += x * B[U(b3 + p)]
        C[U(c0 + j)] = s0
        C[U(c0 + j + 1)] = s1
        C[U(c0 + j + 2)] = s2
        C[U(c0 + j + 3)] = s3
        j += 4
    while j < n:
        b0 = bo + j * k
        s = z
        for p in range(k):
            s += A[U(a0 + p)] * B[U(b0 + p)]
        C[U(c0 + j)] = s
        j += 1


@jit_reduce
def _dot_rows_tb(A, a0, a1, B, bo, C, c0, c1, k, n):
    """C[c0 + j] = <A[a0:a0+k], B[j]>, C[c1 + j] = <A[a1:a1+k], B[j]> for the n rows of B
    (stored (n, k) from bo): two rows of C, four columns per pass."""
    z = C.dtype.type(0)
    j = 0
    while j + 4 <= n:
        b0 = bo + j * k
        b1, b2, b3 = b0 + k, b0 + 2 * k, b0 + 3 * k
        s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = z
        for p in range(k):
            x0, x1 = A[U(a0 + p)], A[U(a1 + p)]
            y0, y1, y2, y3 = B[U(b0 + p)], B[U(b1 + p)], B[U(b2 + p)], B[U(b3 + p)]
            s00 += x0 * y0
            s01 += x0 * y1
            s02 += x0 * y2
            s03 += x0 * y3
            s10 += x1 * y0
            s11 += x1 * y1
            s12 += x1 * y2
            s13 += x1 * y3
        C[U(c1 + j)] = s10
        C[U(c1 + j + 1)] = s11
        C[U(c1 + j + 2)] = s12
        C[U(c1 + j + 3)] = s13
        C[U(c0 + j)] = s00
        C[U(c0 + j + 1)] = s01
        C[U(c0 + j + 2)] = s02
        C[U(c0 + j + 3)] = s03
        j += 4
    while j < n:
        b0 = bo + j * k
        s0 = s1 = z
        for p in range(k):
            y = B[U(b0 + p)]
            s0 += A[U(a0 + p)] * y
            s1 += A[U(a1 + p)] * y
        C[U(c1 + j)] = s1
        C[U(c0 + j)] = s0
        j += 1


@jit_reduce
def _small_matmul(A, ao, B, bo, C, co, m, k, n, tb):
    if tb:  # C[i, j] = <A[i, :], B[j, :]>: both rows contiguous; two rows of C per pass
        for i in range(0, m - 1, 2):
            a0, c0 = ao + i * k, co + i * n
            _dot_rows_tb(A, a0, a0 + k, B, bo, C, c0, c0 + n, k, n)
        if m % 2:
            _dot_row_tb(A, ao + (m - 1) * k, B, bo, C, co + (m - 1) * n, k, n)
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
    m, k, n, nb, tb = ip[M], ip[K], ip[N], ip[BATCH], ip[TRANS_B]
    if tb:
        big = _use_blas(m, k, n, C.itemsize)
    else:
        big = m * k * n >= BLAS_MIN_WORK and m > 1 and n > 1
    for bi in range(nb):
        ao = ip[U(OFFSETS + 2 * bi)]
        bo = ip[U(OFFSETS + 1 + 2 * bi)]
        co = bi * m * n
        if big:
            gemm(False, tb, m, n, k, 1.0, A, ao, B, bo, 0.0, C, co)
        else:
            _small_matmul(A, ao, B, bo, C, co, m, k, n, tb)


@jit
def matmul_vjp(A, B, gC, gA, na, gB, nb_, ip, scratch, value_alpha):
    """gA += gC @ B^T (if na); gB += A^T @ gC (if nb_); with B stored transposed when trans_b.

    na / nb_ are gradient modes: 0 none, 1 accumulate, 2 this row is the only consumer: with a
    single (unbatched) product the gradient is then overwritten, not added to, on both paths, so
    a training step skips clearing it (training/program.py, ``overwritten_by_vjp``). The BLAS
    path accumulates with gemm's beta = 1 (kernels/blas.py): no scratch, no second pass.
    nb_ = INTO_VALUE (a single product): B += value_alpha * (A^T @ gC), after gA has read B;
    gB is then work space (the loop path).
    ``scratch`` is unused here; it stays in the signature every VJP kernel shares.
    """
    m, k, n, nb, tb = ip[M], ip[K], ip[N], ip[BATCH], ip[TRANS_B]
    if tb:
        big = m > VJP_LOOP_MAX_ROWS and n > 1
    else:
        big = m * k * n >= BLAS_MIN_WORK and m > 1 and n > 1
    for bi in range(nb):
        ao = ip[OFFSETS + 2 * bi]
        bo = ip[OFFSETS + 1 + 2 * bi]
        co = bi * m * n
        if big:
            if na:  # gA (m, k) (+)= gC (m, n) @ B^T, B stored (n, k) when tb, else (k, n)
                beta = 0.0 if na == 2 and nb == 1 else 1.0
                gemm(False, not tb, m, k, n, 1.0, gC, co, B, bo, beta, gA, ao)
            if nb_:
                # B's target: its gradient slot (+)=, or B itself += value_alpha (its gradient)
                alpha, beta, out = 1.0, 1.0, gB
                if nb_ == INTO_VALUE:
                    alpha, out = value_alpha, B
                elif nb_ == 2 and nb == 1:
                    beta = 0.0
                if tb:  # gB (n, k) (+)= gC^T (n, m) @ A (m, k)
                    gemm(True, False, n, k, m, alpha, gC, co, A, ao, beta, out, bo)
                else:  # gB (k, n) (+)= A^T (k, m) @ gC (m, n)
                    gemm(True, False, k, n, m, alpha, A, ao, gC, co, beta, out, bo)
            continue
        _small_matmul_vjp(A, ao, B, bo, gC, co, gA, na, gB, min(nb_, 2), m, k, n, tb, nb == 1)
        if nb_ == INTO_VALUE:
            add_scaled(B[bo : bo + k * n], value_alpha, gB[bo : bo + k * n])


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


# The fused layer's forward and VJP: helpers of LINEAR_ACT's row kernels and of the single-cell
# scan loops (scan.py) alike, each compiled once (inlined, each caller typed them again).


@jit
def linear_forward(X, W, b, Y, ip):
    """Y (m, n) = X (m, k) @ W.T + b: the matmul, then the bias row added while Y is hot."""
    matmul_forward(X, W, Y, ip)
    m, n = ip[M], ip[N]
    for i in range(m):
        for j in range(n):
            Y[U(i * n + j)] += b[j]


@jit
def linear_vjp(X, W, b, gY, gX, nx, gW, nw, gb, nbias, ip, scratch, value_alpha):
    """The matmul VJPs, and gb (+)= column sums of gY (overwritten in mode 2, as matmul; then
    b += value_alpha gb for an INTO_VALUE target)."""
    matmul_vjp(X, W, gY, gX, nx, gW, nw, ip, scratch, value_alpha)
    if nbias:
        m, n = ip[M], ip[N]
        if nbias >= 2:
            gb[:] = 0.0
        for i in range(m):
            for j in range(n):
                gb[j] += gY[U(i * n + j)]
        if nbias == INTO_VALUE:
            add_scaled(b, value_alpha, gb)


@jit
def linear_act_forward(X, W, c, Y, ip):
    """Y (m, n) = act(X (m, k) @ W.T + c), c a bias (n,) or (m, n): the product, then the add
    and the activation in one pass while Y is hot (ip[ACTIVATION]: the activation's unary op
    code, ip[C_FULL]: c has Y's shape)."""
    matmul_forward(X, W, Y, ip)
    m, n = ip[M], ip[N]
    rows, cols = (1, m * n) if ip[C_FULL] else (m, n)  # a full addend: one long row
    _add_activate(ip[ACTIVATION], Y, c, rows, cols)


@jit
def _add_activate(act, Y, c, m, n):
    """Y[i, j] = act(Y[i, j] + c[j]) for the m rows of Y (m, n), in place: the same arithmetic
    as an add row then a tanh / sigmoid / relu row (unary_forward).

    Why one pass that always stores a new value: written as Y = act(Y) alone, a relu keeps
    Y[i] where it is positive, and LLVM turns that into a masked store, microcoded on AMD
    (0.5 us against 0.08 us per 1,024 values); unary_forward(act, Y, Y) would instead fail the
    runtime check that input and output do not overlap and run the scalar loop."""
    for i in range(m):
        o = i * n
        if act == Op.TANH:
            for j in range(n):
                Y[U(o + j)] = tanh_of(Y[U(o + j)] + c[U(j)])
        elif act == Op.SIGMOID:
            for j in range(n):
                Y[U(o + j)] = sigmoid_of(Y[U(o + j)] + c[U(j)])
        else:
            for j in range(n):
                v = Y[U(o + j)] + c[U(j)]
                Y[U(o + j)] = 0.0 if v <= 0 else v  # NaN passes through, as np.maximum


@jit
def linear_act_vjp(X, W, c, Y, gY, gX, nx, gW, nw, gc, nc, ip, scratch, value_alpha):
    """gZ = gY * act'(Z), read off the output (tanh: 1 - Y^2, sigmoid: Y (1 - Y), relu: Y > 0,
    NaN where Y is: relu's slope at a NaN, as the unary RELU row),
    into scratch[:m*n]; then the matmul VJPs of gZ (the rest of scratch is theirs) and gc (+)=
    gZ or its column sums (overwritten in mode 2, as matmul; then c += value_alpha gc for an
    INTO_VALUE target)."""
    m, n, act = ip[M], ip[N], ip[ACTIVATION]
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
            gz[i] = gY[i] if Y[i] > 0 else (0.0 if Y[i] <= 0 else Y[i])
    matmul_vjp(X, W, gz, gX, nx, gW, nw, ip, scratch[mn:], value_alpha)
    if nc:
        if nc >= 2:
            gc[:] = 0.0
        if ip[C_FULL]:
            for i in range(mn):
                gc[U(i)] += gz[U(i)]
        else:
            for i in range(m):
                for j in range(n):
                    gc[U(j)] += gz[U(i * n + j)]
        if nc == INTO_VALUE:
            add_scaled(c, value_alpha, gc)


# ----------------------------------------------------------------------------- rows of the tape
# (as in elementwise.py: inlined into each op's row kernels, ``code`` a constant there)


@jit_inline
def matmul_row_forward(code, tape, values, ivalues, params, r):
    A = operand(tape, values, params, r, 0)
    B = operand(tape, values, params, r, 1)
    y = output(tape, values, params, r)
    ip = iattrs(tape, r)
    if code == LINEAR or code == LINEAR_ACT:  # one kernel runs both (dispatch.py KERNEL_OF)
        if tape[0][r] == LINEAR_ACT:
            linear_act_forward(A, B, operand(tape, values, params, r, 2), y, ip)
        else:
            linear_forward(A, B, operand(tape, values, params, r, 2), y, ip)
    else:
        matmul_forward(A, B, y, ip)


@jit_inline
def matmul_row_vjp(code, tape, values, ivalues, params, grads, pgrads, need, scratch, r,
                   value_alpha):
    """``value_alpha``: the scale of the gradient written into an INTO_VALUE target."""
    A = operand(tape, values, params, r, 0)
    B = operand(tape, values, params, r, 1)
    gy = output_grad(tape, grads, pgrads, r)
    gA = operand_grad(tape, grads, pgrads, r, 0)
    gB = operand_grad(tape, grads, pgrads, r, 1)
    na, nb = needs(tape, need, r, 0), needs(tape, need, r, 1)
    ip = iattrs(tape, r)
    if code == LINEAR or code == LINEAR_ACT:
        C = operand(tape, values, params, r, 2)
        gC = operand_grad(tape, grads, pgrads, r, 2)
        nc = needs(tape, need, r, 2)
        if tape[0][r] == LINEAR:
            linear_vjp(A, B, C, gy, gA, na, gB, nb, gC, nc, ip, scratch, value_alpha)
        else:
            linear_act_vjp(A, B, C, output(tape, values, params, r), gy, gA, na, gB, nb, gC,
                           nc, ip, scratch, value_alpha)
    else:
        matmul_vjp(A, B, gy, gA, na, gB, nb, ip, scratch, value_alpha)
