"""One tape row at a time: the forward and the VJP of every op, dispatched on its family.

The replay loops (replay.py) and the scan loop (scan.py) call these; see replay.py for the
tape tuple and fastgrad/tape.py for the format.
"""

import numpy as np

from ..ops import BINARY, LOSS, MATMUL, REDUCE, SHAPE, UNARY, WHERE, Op
from ._jit import jit
from .elementwise import broadcast_walk, unary_forward, unary_vjp, where_walk
from .linalg import (linear_act_forward, linear_act_vjp, linear_forward, linear_vjp,
                     matmul_forward, matmul_vjp)
from .movement import concat_piece, gather_forward, gather_vjp, strided_copy
from .reduce import cross_entropy_forward, cross_entropy_vjp, reduce_forward, reduce_vjp


# An anomaly report (replay_forward / replay_backward with ``check``) is the bad row r, or for a
# row of a scan body at step t, r + (t + 1) * STEP_CODE (fastgrad/anomaly.py decodes it). Tape
# rows are int64 but far fewer than 2**32 (each has an entry in several arenas).
STEP_CODE = 1 << 32


@jit
def all_finite(y):
    for i in range(y.size):
        if not np.isfinite(y[i]):
            return False
    return True


@jit
def inputs_grads_finite(tape, grads, pgrads, need, r):
    """Whether every input of row r that needs a gradient holds a finite one."""
    in_ptr, in_idx, node_off, node_size, kind = tape[2], tape[3], tape[8], tape[9], tape[10]
    for t in range(in_ptr[r + 1] - in_ptr[r]):
        v = in_idx[in_ptr[r] + t]
        if need[v] and not all_finite(grad_view(v, grads, pgrads, kind, node_off, node_size)):
            return False
    return True


@jit
def view(v, values, param_arena, node_kind, node_off, node_size, external):
    """Node v's values: its slice of ``values``, of ``param_arena`` for parameter nodes (kind
    2), or the caller's input array ``external`` (kind 3, fg.compile reads it in place)."""
    o = node_off[v]
    kind = node_kind[v]
    if kind == 2:
        return param_arena[o : o + node_size[v]]
    if kind == 3:
        return external[: node_size[v]]
    return values[o : o + node_size[v]]


@jit
def grad_view(v, grads, param_grads, node_kind, node_off, node_size):
    """Node v's gradient: in ``param_grads`` for parameter nodes (kind 2), else its slice of
    ``grads`` (an external input, kind 3, keeps its value-arena offset there; it needs none)."""
    o = node_off[v]
    if node_kind[v] == 2:
        return param_grads[o : o + node_size[v]]
    return grads[o : o + node_size[v]]


@jit
def forward_row(tape, values, ivalues, params, r):
    """Compute row r (any op but the scan control rows) into its output slot."""
    ops, outs, in_ptr, in_idx, ip_ptr, iparams, fp_ptr, fparams, node_off, node_size, kind, ext = tape
    code = ops[r]
    fam = code // 100
    o = outs[r]
    y = view(o, values, params, kind, node_off, node_size, ext)
    i0 = in_ptr[r]
    a = in_idx[i0]
    A = view(a, values, params, kind, node_off, node_size, ext)
    ip = iparams[ip_ptr[r] : ip_ptr[r + 1]]
    if fam == UNARY:
        f0 = fp_ptr[r]
        unary_forward(code, A, y, fparams[f0], fparams[f0 + 1])
    elif fam == BINARY:
        b = in_idx[i0 + 1]
        B = view(b, values, params, kind, node_off, node_size, ext)
        broadcast_walk(code, A, B, y, ip, True, A, False, B, False, y)
    elif fam == WHERE:
        b = in_idx[i0 + 1]
        c = in_idx[i0 + 2]
        B = view(b, values, params, kind, node_off, node_size, ext)
        C = view(c, values, params, kind, node_off, node_size, ext)
        where_walk(A, B, C, y, ip, True, B, False, C, False)
    elif fam == REDUCE:
        reduce_forward(code, A, y, ip[0], ip[1], ip[2])
    elif fam == MATMUL:
        b = in_idx[i0 + 1]
        B = view(b, values, params, kind, node_off, node_size, ext)
        if code == Op.LINEAR:
            C = view(in_idx[i0 + 2], values, params, kind, node_off, node_size, ext)
            linear_forward(A, B, C, y, ip)
        elif code == Op.LINEAR_ACT:
            C = view(in_idx[i0 + 2], values, params, kind, node_off, node_size, ext)
            linear_act_forward(A, B, C, y, ip)
        else:
            matmul_forward(A, B, y, ip)
    elif fam == SHAPE:
        if code == Op.STRIDED:
            strided_copy(A, y, ip, True)
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
                    view(v, values, params, kind, node_off, node_size, ext),
                    y, outer, width, total, pos, True,
                )
                pos += width
        # RESHAPE: the output aliases the input's slot; nothing to do
    elif fam == LOSS:
        b = in_idx[i0 + 1]
        labels = ivalues[node_off[b] : node_off[b] + node_size[b]]
        cross_entropy_forward(A, labels, y, ip[0], ip[1])


@jit
def backward_row(tape, values, ivalues, params, grads, pgrads, need, scratch, r, lr):
    """Add row r's vector-Jacobian products into its inputs' gradients (need[out] must be set).
    ``lr``: the plain-SGD learning rate of the parameters marked FOLD_SGD in ``need``
    (kernels/linalg.py), whose update the VJP applies."""
    ops, outs, in_ptr, in_idx, ip_ptr, iparams, fp_ptr, fparams, node_off, node_size, kind, ext = tape
    o = outs[r]
    code = ops[r]
    fam = code // 100
    y = view(o, values, params, kind, node_off, node_size, ext)
    gy = grad_view(o, grads, pgrads, kind, node_off, node_size)
    i0 = in_ptr[r]
    a = in_idx[i0]
    A = view(a, values, params, kind, node_off, node_size, ext)
    gA = grad_view(a, grads, pgrads, kind, node_off, node_size)
    na = need[a] != 0
    ip = iparams[ip_ptr[r] : ip_ptr[r + 1]]
    if fam == UNARY:
        if na:
            f0 = fp_ptr[r]
            unary_vjp(code, A, y, gy, gA, fparams[f0], fparams[f0 + 1])
    elif fam == BINARY:
        b = in_idx[i0 + 1]
        B = view(b, values, params, kind, node_off, node_size, ext)
        gB = grad_view(b, grads, pgrads, kind, node_off, node_size)
        broadcast_walk(code, A, B, y, ip, False, gA, na, gB, need[b] != 0, gy)
    elif fam == WHERE:
        b = in_idx[i0 + 1]
        c = in_idx[i0 + 2]
        gB = grad_view(b, grads, pgrads, kind, node_off, node_size)
        gC = grad_view(c, grads, pgrads, kind, node_off, node_size)
        where_walk(A, gB, gC, gy, ip, False, gB, need[b] != 0, gC, need[c] != 0)
    elif fam == REDUCE:
        if na:
            reduce_vjp(code, A, y, gy, gA, ip[0], ip[1], ip[2])
    elif fam == MATMUL:
        b = in_idx[i0 + 1]
        B = view(b, values, params, kind, node_off, node_size, ext)
        gB = grad_view(b, grads, pgrads, kind, node_off, node_size)
        if code == Op.LINEAR or code == Op.LINEAR_ACT:
            c = in_idx[i0 + 2]
            C = view(c, values, params, kind, node_off, node_size, ext)
            gC = grad_view(c, grads, pgrads, kind, node_off, node_size)
            if code == Op.LINEAR:
                linear_vjp(A, B, C, gy, gA, need[a], gB, need[b], gC, need[c], ip, scratch, lr)
            else:
                linear_act_vjp(A, B, C, y, gy, gA, need[a], gB, need[b], gC, need[c], ip,
                               scratch, lr)
        else:
            matmul_vjp(A, B, gy, gA, need[a], gB, need[b], ip, scratch, lr)
    elif fam == SHAPE:
        if code == Op.STRIDED:
            if na:
                strided_copy(gA, gy, ip, False)
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
                        grad_view(v, grads, pgrads, kind, node_off, node_size),
                        gy, outer, width, total, pos, False,
                    )
                pos += width
    elif fam == LOSS:
        if na:
            b = in_idx[i0 + 1]
            labels = ivalues[node_off[b] : node_off[b] + node_size[b]]
            cross_entropy_vjp(A, labels, gy, gA, ip[0], ip[1])
