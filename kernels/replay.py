"""The two replay loops: one native call walks the whole tape forward or backward.

The tape arrives as a tuple of flat arrays (see fastgrad/tape.py for the format):
    (ops, outs, in_ptr, in_idx, ip_ptr, iparams, fp_ptr, fparams, node_off, node_size, node_kind)
Row r computes node outs[r] by op ops[r] from nodes in_idx[in_ptr[r]:in_ptr[r+1]], with integer
attributes iparams[ip_ptr[r]:ip_ptr[r+1]] and float attributes fparams[fp_ptr[r]:fp_ptr[r+1]].
Node v lives at _view(v, values, params, kind, node_off, node_size); integer nodes (kind 1) live in
ivalues, and parameter nodes of a compiled program (kind 2) live in the optimizer's flat
parameter buffer ``params`` (their gradients in ``pgrads``), so no copy is made per step.
Dispatch is on the family (code // 100), then on the code inside the family kernel.
"""

import numpy as np

from ..opcodes import BINARY, LOSS, MATMUL, REDUCE, SHAPE, UNARY, WHERE, Op
from ._jit import jit
from .elementwise import broadcast_walk, unary_forward, unary_vjp, where_forward, where_vjp
from .linalg import matmul_forward, matmul_vjp
from .movement import concat_piece, gather_forward, gather_vjp, strided_forward, strided_vjp
from .reduce import cross_entropy_forward, cross_entropy_vjp, reduce_forward, reduce_vjp


@jit
def _view(v, arena, param_arena, node_kind, node_off, node_size):
    o = node_off[v]
    if node_kind[v] == 2:
        return param_arena[o : o + node_size[v]]
    return arena[o : o + node_size[v]]


@jit
def _all_finite(y):
    for i in range(y.size):
        if not np.isfinite(y[i]):
            return False
    return True


@jit
def replay_forward(tape, values, ivalues, params, start, stop, check):
    """Compute rows [start, stop) into ``values``.

    Returns -1, or with ``check`` the first row whose output holds a NaN or Inf (and stops there).
    """
    ops, outs, in_ptr, in_idx, ip_ptr, iparams, fp_ptr, fparams, node_off, node_size, kind = tape
    for r in range(start, stop):
        code = ops[r]
        fam = code // 100
        o = outs[r]
        y = _view(o, values, params, kind, node_off, node_size)
        i0 = in_ptr[r]
        a = in_idx[i0]
        A = _view(a, values, params, kind, node_off, node_size)
        ip = iparams[ip_ptr[r] : ip_ptr[r + 1]]
        if fam == UNARY:
            f0 = fp_ptr[r]
            unary_forward(code, A, y, fparams[f0], fparams[f0 + 1])
        elif fam == BINARY:
            b = in_idx[i0 + 1]
            B = _view(b, values, params, kind, node_off, node_size)
            broadcast_walk(code, A, B, y, ip, True, A, False, B, False, y)
        elif fam == WHERE:
            b = in_idx[i0 + 1]
            c = in_idx[i0 + 2]
            B = _view(b, values, params, kind, node_off, node_size)
            C = _view(c, values, params, kind, node_off, node_size)
            where_forward(A, B, C, y, ip)
        elif fam == REDUCE:
            reduce_forward(code, A, y, ip[0], ip[1], ip[2])
        elif fam == MATMUL:
            b = in_idx[i0 + 1]
            B = _view(b, values, params, kind, node_off, node_size)
            matmul_forward(A, B, y, ip)
        elif fam == SHAPE:
            if code == Op.STRIDED:
                strided_forward(A, y, ip)
            elif code == Op.GATHER:
                b = in_idx[i0 + 1]
                index = ivalues[node_off[b] : node_off[b] + node_size[b]]
                gather_forward(A, index, y, ip[0], ip[1], ip[2])
            elif code == Op.CONCAT:
                outer, total = ip[0], ip[1]
                pos = 0
                for t in range(in_ptr[r + 1] - i0):
                    v = in_idx[i0 + t]
                    width = ip[2 + t]
                    concat_piece(
                        _view(v, values, params, kind, node_off, node_size),
                        y, outer, width, total, pos, True,
                    )
                    pos += width
            # RESHAPE: the output aliases the input's slot; nothing to do
        elif fam == LOSS:
            b = in_idx[i0 + 1]
            labels = ivalues[node_off[b] : node_off[b] + node_size[b]]
            cross_entropy_forward(A, labels, y, ip[0], ip[1])
        if check and not _all_finite(y):
            return r
    return -1


@jit
def replay_backward(tape, values, ivalues, params, grads, pgrads, need, scratch, start, stop,
                    check):
    """Accumulate vector-Jacobian products for rows [stop-1 .. start] into ``grads``.

    ``grads`` must hold the seed gradient at the output node and zeros (or gradients to
    accumulate onto) elsewhere. ``need[v]`` says whether node v wants a gradient (0: no,
    1: accumulate, 2: its only consumer may overwrite it); rows whose output needs none are
    skipped and no VJP is computed for inputs that need none. ``scratch`` is a work buffer at
    least as large as the largest node.
    Returns -1, or with ``check`` the first row (walking backward) that wrote a NaN/Inf gradient.
    """
    ops, outs, in_ptr, in_idx, ip_ptr, iparams, fp_ptr, fparams, node_off, node_size, kind = tape
    for r in range(stop - 1, start - 1, -1):
        o = outs[r]
        if not need[o]:
            continue
        code = ops[r]
        fam = code // 100
        y = _view(o, values, params, kind, node_off, node_size)
        gy = _view(o, grads, pgrads, kind, node_off, node_size)
        i0 = in_ptr[r]
        a = in_idx[i0]
        A = _view(a, values, params, kind, node_off, node_size)
        gA = _view(a, grads, pgrads, kind, node_off, node_size)
        na = need[a] != 0
        ip = iparams[ip_ptr[r] : ip_ptr[r + 1]]
        if fam == UNARY:
            if na:
                f0 = fp_ptr[r]
                unary_vjp(code, A, y, gy, gA, fparams[f0], fparams[f0 + 1])
        elif fam == BINARY:
            b = in_idx[i0 + 1]
            B = _view(b, values, params, kind, node_off, node_size)
            gB = _view(b, grads, pgrads, kind, node_off, node_size)
            broadcast_walk(code, A, B, y, ip, False, gA, na, gB, need[b] != 0, gy)
        elif fam == WHERE:
            b = in_idx[i0 + 1]
            c = in_idx[i0 + 2]
            gB = _view(b, grads, pgrads, kind, node_off, node_size)
            gC = _view(c, grads, pgrads, kind, node_off, node_size)
            where_vjp(A, gy, gB, need[b] != 0, gC, need[c] != 0, ip)
        elif fam == REDUCE:
            if na:
                reduce_vjp(code, A, y, gy, gA, ip[0], ip[1], ip[2])
        elif fam == MATMUL:
            b = in_idx[i0 + 1]
            B = _view(b, values, params, kind, node_off, node_size)
            gB = _view(b, grads, pgrads, kind, node_off, node_size)
            matmul_vjp(A, B, gy, gA, need[a], gB, need[b], ip, scratch)
        elif fam == SHAPE:
            if code == Op.STRIDED:
                if na:
                    strided_vjp(gy, gA, ip)
            elif code == Op.GATHER:
                if na:
                    b = in_idx[i0 + 1]
                    index = ivalues[node_off[b] : node_off[b] + node_size[b]]
                    gather_vjp(index, gy, gA, ip[0], ip[1], ip[2])
            elif code == Op.CONCAT:
                outer, total = ip[0], ip[1]
                pos = 0
                for t in range(in_ptr[r + 1] - i0):
                    v = in_idx[i0 + t]
                    width = ip[2 + t]
                    if need[v]:
                        concat_piece(
                            _view(v, grads, pgrads, kind, node_off, node_size),
                            gy, outer, width, total, pos, False,
                        )
                    pos += width
        elif fam == LOSS:
            if na:
                b = in_idx[i0 + 1]
                labels = ivalues[node_off[b] : node_off[b] + node_size[b]]
                cross_entropy_vjp(A, labels, gy, gA, ip[0], ip[1])
        if check:
            for t in range(in_ptr[r + 1] - i0):
                v = in_idx[i0 + t]
                if need[v] and not _all_finite(_view(v, grads, pgrads, kind, node_off, node_size)):
                    return r
    return -1
