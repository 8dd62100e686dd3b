"""The two replay loops: one native call walks the whole tape forward or backward.

The tape arrives as a tuple of flat arrays (see fastgrad/runtime/tape.py for the format):
    (ops, outs, in_ptr, in_idx, ip_ptr, iparams, fp_ptr, fparams, node_off, node_size, node_kind,
     external)
Row r computes node outs[r] by op ops[r] from nodes in_idx[in_ptr[r]:in_ptr[r+1]], with integer
attributes iparams[ip_ptr[r]:ip_ptr[r+1]] and float attributes fparams[fp_ptr[r]:fp_ptr[r+1]].
Node v lives at values[node_off[v] : node_off[v] + node_size[v]]; integer nodes (kind 1) live in
ivalues, parameter nodes of a compiled program (kind 2) live in the optimizer's flat parameter
buffer ``params`` (their gradients in ``pgrads``), and a compiled program's input node of kind 3
is the caller's array ``external`` itself: no copy is made per step.
The last entry, ``table``, is the dispatch table of the tape's dtype (kernels/call.py): each row
is run by its op's row kernel, called through its address, so these loops link no op's code.
A scan's body rows (between its SCAN_BEGIN and SCAN rows) are skipped here and run T times by
the SCAN row's kernel (scan.py), which checks them at every step when ``check`` is set.
"""

import functools

import numpy as np
from numba import types

from ..ops import Op
from ._jit import jit_entry
from .call import SLOTS, call_forward, call_vjp, context, has_kernel, row_kernel, tape_type
from .scan import BEGIN_ROW
from .rows import all_finite, inputs_grads_finite
from .views import view

__all__ = ["replay_backward", "replay_entries", "replay_forward"]


@jit_entry
def replay_forward(tape, values, ivalues, params, start, stop, check):
    """Compute rows [start, stop) into ``values``.

    Returns -1, or with ``check`` the first row whose output holds a NaN or Inf (and stops there);
    for a row of a scan body at step t, row + (t + 1) * STEP_CODE (rows.py).
    """
    ops, outs, ip_ptr, iparams = tape[0], tape[1], tape[4], tape[5]
    node_off, node_size, kind, table = tape[8], tape[9], tape[10], tape[12]
    # the forward kernels read no gradients: any arrays of the right types stand in for them
    ctx = context(tape, values, ivalues, params, values, values, kind, values, 0.0)
    r = start
    while r < stop:
        code = ops[r]
        if code == Op.SCAN_BEGIN:
            target = iparams[ip_ptr[r]]
            r = target if target >= 0 else r + 1  # -1: body still being recorded, run it inline
            continue
        if has_kernel(code):
            bad = call_forward(row_kernel(table, code), ctx, r, check)
            if bad >= 0:  # a scan body's row, at a step (scan.py)
                return bad
        if check and not all_finite(view(outs[r], values, params, kind, node_off, node_size,
                                         tape[11])):
            return r
        r += 1
    return -1


@jit_entry
def replay_backward(tape, values, ivalues, params, grads, pgrads, need, scratch, start, stop,
                    check, value_alpha):
    """Accumulate vector-Jacobian products for rows [stop-1 .. start] into ``grads``.

    ``grads`` must hold the seed gradient at the output node and zeros (or gradients to
    accumulate onto) elsewhere. ``need[v]`` is node v's gradient target (0: none, 1: accumulate,
    2: its only consumer may overwrite it, INTO_VALUE: its own value += ``value_alpha`` times
    its gradient; kernels/views.py); rows whose output needs none are skipped and no VJP is
    computed for inputs that need none. ``scratch`` is a work buffer at
    least as large as the largest node.
    Returns -1, or with ``check`` the first row (walking backward) that wrote a NaN/Inf gradient,
    encoded as replay_forward's report.
    """
    ops, outs, ip_ptr, iparams, table = tape[0], tape[1], tape[4], tape[5], tape[12]
    ctx = context(tape, values, ivalues, params, grads, pgrads, need, scratch, value_alpha)
    r = stop - 1
    while r >= start:
        code = ops[r]
        if need[outs[r]] and code != Op.SCAN_BEGIN:
            if has_kernel(code):
                bad = call_vjp(row_kernel(table, SLOTS + code), ctx, r, check)
                if bad >= 0:  # a scan body's row, at a step (scan.py)
                    return bad
            if check and not inputs_grads_finite(tape, grads, pgrads, need, r):
                return r
        if code == Op.SCAN:
            r = iparams[ip_ptr[r] + BEGIN_ROW]  # continue below the body and its SCAN_BEGIN
        r -= 1
    return -1


@functools.lru_cache(maxsize=None)
def replay_entries(dtype):
    """(dispatcher, argument types) of the two replay loops as an eager tape of float
    ``dtype`` calls them (fastgrad/runtime/tape.py): what a first ``backward()`` runs, compiled
    alongside its ops' kernels (dispatch.py ``Table.ensure``)."""
    F = types.float64 if np.dtype(dtype) == np.float64 else types.float32
    A, I = types.Array(F, 1, "C"), types.Array(types.int64, 1, "C")
    n, tape = types.int64, tape_type(F)
    return ((replay_forward, (tape, A, I, A, n, n, types.boolean)),
            (replay_backward, (tape, A, I, A, A, A, types.Array(types.int8, 1, "C"), A, n, n,
                               types.boolean, types.float64)))
