"""BLAS gemm with an accumulating beta, callable from the kernels.

Why not np.dot: Numba's np.dot always overwrites its output (beta = 0), so a gradient that
accumulates (+=) needed the product in scratch and then a pass adding it in: two extra sweeps
over the result per VJP. gemm does C = alpha op(A) op(B) + beta C in one.

Why this route: it calls ``numba_xxgemm``, the C helper inside Numba that np.dot itself calls
(it reaches SciPy's BLAS, resolved when the process starts). The symbol is named, not an
address baked into the code, so the kernels stay cacheable; a ctypes function pointer would not.
"""

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

_I8 = ir.IntType(8)
_VOIDP = _I8.as_pointer()


@intrinsic
def gemm(typingctx, trans_a, trans_b, m, n, k, A, a_off, B, b_off, beta, C, c_off):
    """C[c_off:] (m, n), row-major = op(A) @ op(B) + beta * C, op(A) (m, k), op(B) (k, n).

    A from a_off holds op(A) row-major, or its transpose (k, m) when trans_a; B from b_off
    holds op(B) (k, n), or (n, k) when trans_b. All three arrays share a float dtype and are
    1-D buffers addressed by offset, as the tape's arenas are. Returns BLAS's status (0: ok).
    No bounds are checked: the caller passes extents its tape validated.

    Example, inside a jitted kernel: ``gemm(False, True, 2, 3, 4, A, 0, W, 0, 1.0, G, 0)`` adds
    A (2, 4) @ W^T into G (2, 3), W stored (3, 4) as a Linear layer's weight is.
    """
    arrays = (A, B, C)
    if not all(isinstance(t, types.Array) for t in arrays):
        return None
    dt = C.dtype
    if dt not in (types.float32, types.float64) or A.dtype != dt or B.dtype != dt:
        return None
    kind = ord("s" if dt == types.float32 else "d")
    ints = (m, n, k, a_off, b_off, c_off)
    if not all(isinstance(t, types.Integer) for t in ints):
        return None
    sig = types.int32(trans_a, trans_b, m, n, k, A, a_off, B, b_off, beta, C, c_off)

    def codegen(context, builder, signature, args):
        ta, tb, m_, n_, k_, a, ao, b, bo, beta_, c, co = args
        tys = signature.args
        intp = context.get_value_type(types.intp)

        def as_intp(v, ty):
            return context.cast(builder, v, ty, types.intp)

        def as_flag(v, ty):
            return builder.icmp_unsigned("!=", context.cast(builder, v, ty, types.intp),
                                         ir.Constant(intp, 0))

        def data(arr, arrty, off, offty):
            ptr = context.make_array(arrty)(context, builder, arr).data
            return builder.bitcast(builder.gep(ptr, [as_intp(off, offty)]), _VOIDP)

        m_, n_, k_ = as_intp(m_, tys[2]), as_intp(n_, tys[3]), as_intp(k_, tys[4])
        ta, tb = as_flag(ta, tys[0]), as_flag(tb, tys[1])
        t, nt = ir.Constant(_I8, ord("t")), ir.Constant(_I8, ord("n"))
        alpha = cgutils.alloca_once_value(builder, context.get_constant(dt, 1.0))
        beta_v = cgutils.alloca_once_value(builder, context.cast(builder, beta_, tys[9], dt))
        # Column-major BLAS sees each row-major matrix transposed: C^T = op(B)^T op(A)^T.
        fnty = ir.FunctionType(ir.IntType(32), [_I8, _I8, _I8, intp, intp, intp,
                                                _VOIDP, _VOIDP, intp, _VOIDP, intp, _VOIDP,
                                                _VOIDP, intp])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "numba_xxgemm")
        return builder.call(fn, [
            ir.Constant(_I8, kind),
            builder.select(tb, t, nt), builder.select(ta, t, nt),
            n_, m_, k_,
            builder.bitcast(alpha, _VOIDP),
            data(b, tys[7], bo, tys[8]), builder.select(tb, k_, n_),
            data(a, tys[5], ao, tys[6]), builder.select(ta, m_, k_),
            builder.bitcast(beta_v, _VOIDP),
            data(c, tys[10], co, tys[11]), n_,
        ])

    return sig, codegen
