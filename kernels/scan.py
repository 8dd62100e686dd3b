"""The scan loop: a body of tape rows recorded once, run T times forward and backward natively.

SCAN row integer attributes (node ids and row indices; see fastgrad/transforms/scan.py):

    ip[0:HEADER]  T, begin_row, body_start, body_end, n_carry, n_stack, has_x, xs, x_slot, x_step,
              store, k, ckpt, schedule, reg_size, n_own
    then      n_carry x (init, carry_in, carry_out, final)   carry c flows carry_out -> carry_in
              n_stack x (body node, stacked output)          stacked output[t] = body node at t
              n_own   body-owned nodes (gradients cleared each step)

The body's own nodes (carry and x slots, every value it computes; reg_size values in all, not
the parameters it reads) are its state. Three ways to have step t's state in place for its VJPs,
all running the same arithmetic in the same order, so gradients are bit-identical:

- k == 0, store everything: the forward sweep saves the state after every step into node
  ``store`` (T x reg_size) and the backward sweep restores step t's state.
- k > 0, segments: every k-th step's carries go to node ``ckpt``; the backward sweep recomputes
  each segment of k steps into ``store`` (k x reg_size) before walking it back.
- k < 0, binomial (Griewank & Walther's revolve): ``ckpt`` holds S = -k carries. Which steps
  they hold follows the binomial rule ``binomial_advance``: the forward sweep stores the first
  checkpoints, and the backward sweep restores the most recent one, advances (storing more while
  slots are free) up to the step to reverse, runs that step once more and reverses it. Integer
  node ``schedule`` holds [forward state valid, checkpoints held, forward steps run by the last
  backward sweep, most slots used, then the step each slot holds x S]. ``store`` is empty: the
  body nodes themselves hold the step being reversed, and the forward sweep leaves step T-1
  there. A second backward sweep without a forward one in between redoes the forward sweep.

Of the state, only the values the body's VJPs read are saved and restored (``_reads``: not a
product's output, an add's operands or x_t; the store still has room for reg_size per step);
while a step is reversed, the other own nodes hold another step's values, which nothing reads.

In every mode the x slot (and any RESHAPE of it) is pointed at row t of ``xs`` for step t
rather than loaded with a copy, and its gradient adds into xs's gradient in place, unless the
slot's gradient is overwritten (mode 2) or xs needs none: then x_t is copied in and its gradient
added back, as the slot's own. node_off is as it was when a sweep returns.

With ``check`` (fg.detect_anomaly) the forward sweep checks each body row's output and the
backward sweep each body row's input gradients at every step, and stops at the first NaN/Inf:
scan_forward / scan_backward return (body row, step t), or (-1, -1). The body's nodes then hold
step t's values (x_t copied into the x slot) for the report; the sweep is not finished, so the
caller must run the scan's forward sweep again before using its results (runtime/anomaly.py).
With ``check`` off the loops run as they would without it (one untaken branch per row).
"""

import numpy as np

from ..ops import MATMUL, SHAPE, Op
from ..ops import control as _control
from ..ops.nodes import FLOAT_NODE
from ._jit import jit, jit_entry, jit_inline
from .linalg import C_FULL, linear_act_forward, linear_act_vjp
from .call import (SCAN_BINOMIAL, SCAN_CELL, SCAN_STEPS, SLOTS, call_forward, call_vjp,
                   has_kernel, row_kernel)
from .rows import STEP_CODE, all_finite, inputs_grads_finite
from .views import grad_view, view

__all__ = ["BEGIN_ROW", "BODY_END", "BODY_START", "CARRY", "CARRY_IN", "CARRY_OUT", "CKPT",
           "CKPT_EVERY", "FINAL", "HAS_X", "HEADER", "INIT", "N_CARRY", "N_OWN", "N_STACK",
           "N_STEPS", "REG_SIZE", "SCHEDULE", "STACKED", "STACKED_BODY", "STACKED_OUT", "STORE",
           "XS", "X_SLOT", "X_STEP", "binomial_advance", "scan_backward", "scan_binomial_backward",
           "scan_binomial_forward", "scan_cell_backward", "scan_cell_forward", "scan_forward",
           "scan_steps_backward", "scan_steps_forward"]

U = np.uintp

# Where the SCAN row's attributes sit (fastgrad/ops/control.py SCAN_LAYOUT; Numba reads these
# module ints as constants): the header's fixed fields, then per carry its four nodes, per
# stacked output two, then the body's own nodes.
_SCAN = _control.SCAN_LAYOUT
(N_STEPS, BEGIN_ROW, BODY_START, BODY_END, N_CARRY, N_STACK, HAS_X, XS, X_SLOT, X_STEP, STORE,
 CKPT_EVERY, CKPT, SCHEDULE, REG_SIZE, N_OWN) = (_SCAN.index(f) for f in (
    "T", "begin_row", "body_start", "body_end", "n_carry", "n_stack", "has_x", "xs", "x_slot",
    "x_step", "store", "k", "ckpt", "schedule", "reg_size", "n_own"))
HEADER = len(_SCAN.ints)
_CARRIES, _STACKED = (next(t for t in _SCAN.tails if t.name == name)
                      for name in ("carries", "stacked"))
CARRY, STACKED = _CARRIES.width, _STACKED.width  # integers per carry, per stacked output
INIT, CARRY_IN, CARRY_OUT, FINAL = (_CARRIES.items.index(f)
                                    for f in ("init", "carry_in", "carry_out", "final"))
STACKED_BODY, STACKED_OUT = (_STACKED.items.index(f) for f in ("body_node", "output"))


# Why offsets, not slices: every slice of an arena is a new array whose memory-info is
# reference-counted (an atomic increment and decrement in the NRT runtime), which at a few dozen
# slices per step was a third of a batch-1 RNN step's time (perf, 64 units, float32).


@jit
def _copy(dst, src):
    for i in range(src.size):
        dst[i] = src[i]


@jit
def _add(dst, src):
    for i in range(src.size):
        dst[i] += src[i]


@jit
def _copy_within(a, dst, src, n):
    """a[dst : dst + n] = a[src : src + n] (the ranges do not overlap)."""
    for i in range(n):
        a[U(dst + i)] = a[U(src + i)]


@jit
def _add_within(a, dst, src, n):
    """a[dst : dst + n] += a[src : src + n] (the ranges do not overlap)."""
    for i in range(n):
        a[U(dst + i)] += a[U(src + i)]


@jit
def _zero(a, off, n):
    for i in range(n):
        a[U(off + i)] = 0.0


@jit_entry
def binomial_advance(n, slots):
    """Steps to advance from a checkpointed state before storing the next checkpoint, when the
    n >= 2 steps from it are still to be reversed and ``slots`` checkpoints (counting the one
    holding it) are free. Griewank & Walther (2000), Algorithm 799 (revolve): with r the least
    repetition count whose binomial range beta(slots, r) = C(slots + r, r) covers n, every step
    is recomputed at most r times and the total is minimal.
    """
    if slots <= 1:
        return n - 1  # one slot: restart from it for every step
    if slots >= n - 1:
        return 1  # a slot for every state
    r = 0
    b = 1  # beta(slots, r)
    while b < n:
        r += 1
        b = b * (slots + r) // r
    c = slots  # r >= 2 here; each ratio below is an exact binomial identity
    b1 = b * r // (c + r)  # beta(c, r-1)
    b2 = b1 * c // (c + r - 1)  # beta(c-1, r-1)
    b3 = b2 * (c - 1) // (c + r - 2)  # beta(c-2, r-1)
    b4 = b2 * (r - 1) // c  # beta(c, r-2)
    b5 = b3 * (c - 2) // r  # beta(c-3, r), 0 for c == 2
    if n <= b1 + b3:
        return b4
    if n >= b - b5:
        return b1
    return n - b2 - b3


@jit
def _reads(code, i, n_in):
    """Whether the VJP of a row with op ``code`` reads the values of its operand i (i == n_in:
    its output). Conservative: only ops known to read less are listed."""
    fam = code // 100
    if code == Op.TANH or code == Op.SIGMOID:
        return i == n_in  # the output only
    if code == Op.ADD or code == Op.SUB or fam == SHAPE and code != Op.GATHER:
        return False
    if code == Op.LINEAR_ACT:
        return i != 2  # x, W and the output (the activation's slope), not the addend
    if fam == MATMUL:
        return i < n_in  # the operands, not the product
    return True


@jit
def _layout(tape, ip):
    """The body's own nodes' offsets (orig); the place in a step's saved state (rel, -1: not
    saved) of those whose values a VJP of the body reads, and the state's size; the x slot's
    offset (xo, -1 when xs is not in the value arena: x_t is then always copied). A RESHAPE
    shares its input's slot, so equal offsets are one node here."""
    outs, in_ptr, in_idx, node_off, node_size, kind = (tape[1], tape[2], tape[3], tape[8],
                                                       tape[9], tape[10])
    own0 = HEADER + CARRY * ip[N_CARRY] + STACKED * ip[N_STACK]
    n = ip[N_OWN]
    orig = np.empty(n, np.int64)
    rel = np.full(n, -1, np.int64)
    for i in range(n):
        orig[i] = node_off[ip[own0 + i]]
    xso = node_off[ip[X_SLOT]] if ip[HAS_X] else -1  # x_t is loaded per step, never saved
    for r in range(ip[BODY_START], ip[BODY_END]):
        n_in = in_ptr[r + 1] - in_ptr[r]
        for j in range(n_in + 1):
            v = outs[r] if j == n_in else in_idx[in_ptr[r] + j]
            if kind[v] == FLOAT_NODE and node_off[v] != xso and _reads(tape[0][r], j, n_in):
                for i in range(n):
                    if orig[i] == node_off[v]:
                        rel[i] = 0  # marked
    pos = 0
    for i in range(n):
        if rel[i] == 0:
            rel[i] = pos
            for j in range(i):
                if orig[j] == orig[i]:
                    rel[i] = rel[j]
                    break
            if rel[i] == pos:
                pos += node_size[ip[own0 + i]]
    return orig, rel, pos, _x_offset(tape, ip)


@jit
def _x_offset(tape, ip):
    """The x slot's offset (xo), or -1 when there are no xs or they are not in the value
    arena (x_t is then always copied)."""
    return tape[8][ip[X_SLOT]] if ip[HAS_X] and tape[10][ip[XS]] == FLOAT_NODE else -1


@jit
def _state(values, ip, node_size, orig, rel, pos, save):
    """Save the values the VJPs read to values[pos:] (save) or restore them from there."""
    own0 = HEADER + CARRY * ip[N_CARRY] + STACKED * ip[N_STACK]
    for i in range(ip[N_OWN]):
        if rel[i] >= 0:
            n = node_size[ip[own0 + i]]
            o, p = orig[i], pos + rel[i]
            if save:
                _copy_within(values, p, o, n)
            else:
                _copy_within(values, o, p, n)


@jit
def _load_x(values, ip, node_off, orig, xo, t, alias):
    """x_t into the x slot for step t: with alias (and xs in the value arena) the slot and its
    RESHAPEs point at row t of xs, else at their own slot, and x_t is copied in."""
    if ip[HAS_X]:
        xs, xslot, step = ip[XS], ip[X_SLOT], ip[X_STEP]
        src = node_off[xs] + t * step
        at = src if alias and xo >= 0 else xo
        own0 = HEADER + CARRY * ip[N_CARRY] + STACKED * ip[N_STACK]
        for i in range(ip[N_OWN] if xo >= 0 else 0):
            if orig[i] == xo:
                node_off[ip[own0 + i]] = at
        if at != src:
            _copy_within(values, node_off[xslot], src, step)


@jit
def _unload_x(ip, node_off, orig, xo):
    """Point the x slot and its RESHAPEs back at their own slot."""
    own0 = HEADER + CARRY * ip[N_CARRY] + STACKED * ip[N_STACK]
    for i in range(ip[N_OWN] if xo >= 0 else 0):
        if orig[i] == xo:
            node_off[ip[own0 + i]] = xo


@jit
def _body_forward(ctx, tape, values, ivalues, params, ip, t, orig, xo, alias, check):
    """Load x_t (see _load_x) and run the body rows once. Returns -1, or with ``check`` the
    first row whose output holds a NaN/Inf (the rows after it are not run)."""
    _load_x(values, ip, tape[8], orig, xo, t, alias)
    for r in range(ip[BODY_START], ip[BODY_END]):
        if has_kernel(tape[0][r]):
            call_forward(row_kernel(tape[12], tape[0][r]), ctx, r, False)
        if check and not all_finite(view(tape[1][r], values, params, tape[10], tape[8], tape[9],
                                         tape[11])):
            return r
    return -1


@jit
def _carry_step(values, ip, node_off, node_size, t, stack, move):
    """After step t: stacked outputs take the body values (stack), carry_in takes carry_out
    (move)."""
    nc, ns = ip[N_CARRY], ip[N_STACK]
    base = HEADER + CARRY * nc
    for s in range(ns if stack else 0):
        v, out = ip[base + STACKED * s + STACKED_BODY], ip[base + STACKED * s + STACKED_OUT]
        n = node_size[v]
        _copy_within(values, node_off[out] + t * n, node_off[v], n)
    for c in range(nc if move else 0):
        cin, cout = ip[HEADER + CARRY * c + CARRY_IN], ip[HEADER + CARRY * c + CARRY_OUT]
        _copy_within(values, node_off[cin], node_off[cout], node_size[cin])


@jit
def _carries(values, ip, node_off, node_size, pos, save):
    """Save the carry_in slots to values[pos:] (save) or restore them from there."""
    for c in range(ip[N_CARRY]):
        cin = ip[HEADER + CARRY * c + CARRY_IN]
        n = node_size[cin]
        if save:
            _copy_within(values, pos, node_off[cin], n)
        else:
            _copy_within(values, node_off[cin], pos, n)
        pos += n


@jit
def _carry_size(ip, node_size):
    csize = 0
    for c in range(ip[N_CARRY]):
        csize += node_size[ip[HEADER + CARRY * c + CARRY_IN]]
    return csize


@jit
def _load_init(tape, values, params, ip):
    node_off, node_size = tape[8], tape[9]
    for c in range(ip[N_CARRY]):
        init, cin = ip[HEADER + CARRY * c + INIT], ip[HEADER + CARRY * c + CARRY_IN]
        _copy(values[node_off[cin] : node_off[cin] + node_size[cin]],
              view(init, values, params, tape[10], node_off, node_size, tape[11]))


@jit
def _advance(ctx, tape, values, ivalues, params, ip, t0, t1, orig, xo, alias):
    """Recompute steps t0 .. t1-1 from the carries in place (nothing stacked or saved)."""
    for t in range(t0, t1):
        _body_forward(ctx, tape, values, ivalues, params, ip, t, orig, xo, alias, False)
        _carry_step(values, ip, tape[8], tape[9], t, False, True)


@jit
def _binomial_forward(ctx, tape, values, ivalues, params, ip, stack, orig, xo, check):
    """All T steps from the carries in place, storing the binomial schedule's first checkpoints;
    step T-1's state is left in the body nodes (its carry_in is not overwritten). Returns
    (row, t) of the first NaN/Inf with ``check`` (see the module docstring), else (-1, -1)."""
    node_off, node_size = tape[8], tape[9]
    T, slots = ip[N_STEPS], -ip[CKPT_EVERY]
    ckpt, csize = node_off[ip[CKPT]], _carry_size(ip, node_size)
    sched = ivalues[node_off[ip[SCHEDULE]] : node_off[ip[SCHEDULE]] + node_size[ip[SCHEDULE]]]
    alias = xo >= 0
    held = 0
    store_at = 0
    for t in range(T):
        if t == store_at and t < T - 1:
            _carries(values, ip, node_off, node_size, ckpt + held * csize, True)
            sched[4 + held] = t
            held += 1
            store_at = t + binomial_advance(T - t, slots - held + 1)
        bad = _body_forward(ctx, tape, values, ivalues, params, ip, t, orig, xo, alias, check)
        if bad >= 0:
            sched[0] = 0  # the forward sweep did not finish: its checkpoints are not valid
            return bad, t
        _carry_step(values, ip, node_off, node_size, t, stack, t < T - 1)
    sched[0] = 1
    sched[1] = held
    sched[3] = max(sched[3], held)
    return -1, -1



# A body that is one recurrent cell, h_t = act(h_{t-1} @ W.T + x_t) (one LINEAR_ACT row: an
# Elman RNN after its input projection is hoisted out of the loop), runs without the general
# per-step glue: h_t is written straight to row t of the store and read back from there, so
# nothing is saved, restored or moved, and nothing is dispatched per row. The arithmetic is the
# same calls on the same values (linear_act_forward / linear_act_vjp), so results are
# bit-identical to the general path. Why: at 64 units and batch 1 the glue took about half of a
# step (perf: reference counting of per-step slices, copies, row dispatch).


@jit
def _cell_row(tape, ip, xo):
    """The body's row if the body is a single cell (see above) run in a store or segment mode,
    else -1: one LINEAR_ACT row from carry_in to carry_out whose addend is the x slot itself,
    a weight that is not a body node, and nothing stacked but the carry."""
    ops, outs, in_ptr, in_idx, ip_ptr, iparams = tape[0], tape[1], tape[2], tape[3], tape[4], \
        tape[5]
    node_off, kind = tape[8], tape[10]
    if (ip[BODY_END] - ip[BODY_START] != 1 or ip[N_CARRY] != 1 or ip[CKPT_EVERY] < 0 or xo < 0
            or not ip[HAS_X]):
        return -1
    r = ip[BODY_START]
    i0 = in_ptr[r]
    if ops[r] != Op.LINEAR_ACT or in_ptr[r + 1] - i0 != 3 or iparams[ip_ptr[r] + C_FULL] == 0:
        return -1
    cout = ip[HEADER + CARRY_OUT]
    if in_idx[i0] != ip[HEADER + CARRY_IN] or outs[r] != cout or in_idx[i0 + 2] != ip[X_SLOT]:
        return -1
    if ip[N_STACK] > 1 or (ip[N_STACK] == 1 and ip[HEADER + CARRY + STACKED_BODY] != cout):
        return -1
    w = in_idx[i0 + 1]
    if kind[w] == FLOAT_NODE:  # a body node, or a RESHAPE sharing one's slot
        own0 = HEADER + CARRY * ip[N_CARRY] + STACKED * ip[N_STACK]
        for i in range(ip[N_OWN]):
            if node_off[ip[own0 + i]] == node_off[w]:
                return -1
    return r


@jit
def _cell_report(values, grads, ip, node_off, n, prev, cur, x, gx):
    """For an anomaly report at one step of a single-cell body: that step's h_{t-1}, h_t, x_t
    and x_t's gradient (at ``gx``) into the carry_in, carry_out and x slots, where the body row's
    nodes live (the cell loop keeps them in the store and xs instead)."""
    cin, cout, xslot, step = node_off[ip[HEADER + CARRY_IN]], node_off[ip[HEADER + CARRY_OUT]], \
        node_off[ip[X_SLOT]], ip[X_STEP]
    if prev != cin:
        _copy_within(values, cin, prev, n)
    _copy_within(values, cout, cur, n)
    if x != xslot:
        _copy_within(values, xslot, x, step)
    if gx != xslot:
        _copy_within(grads, xslot, gx, step)


@jit
def _cell_forward(tape, values, params, ip, r, t0, t1, base, stack, check):
    """Steps t0 .. t1-1 of a single-cell body: h_t to row t - t0 of the store at ``base`` (rows of
    the carry's size), from h_{t0-1} in the carry_in slot; with ``stack`` also to the stacked
    output. Returns -1, or with ``check`` the first step whose h_t holds a NaN/Inf (its h_{t-1},
    h_t and x_t are then copied to the carry_in, carry_out and x slots for the report)."""
    node_off, node_size, kind = tape[8], tape[9], tape[10]
    i0 = tape[2][r]
    cin, w = tape[3][i0], tape[3][i0 + 1]
    n = node_size[cin]
    W = view(w, values, params, kind, node_off, node_size, tape[11])
    rip = tape[5][tape[4][r] : tape[4][r + 1]]
    ox, step = node_off[ip[XS]], ip[X_STEP]
    out = node_off[ip[HEADER + CARRY + STACKED_OUT]] if ip[N_STACK] == 1 else 0
    prev = node_off[cin]
    for t in range(t0, t1):
        cur = base + (t - t0) * n
        x = ox + t * step
        linear_act_forward(values[prev : prev + n], W, values[x : x + step],
                           values[cur : cur + n], rip)
        if check and not all_finite(values[cur : cur + n]):
            _cell_report(values, values, ip, node_off, n, prev, cur, x, node_off[ip[X_SLOT]])
            return t
        if stack and ip[N_STACK] == 1:
            _copy_within(values, out + t * n, cur, n)
        prev = cur
    return -1


@jit
def _cell_backward(tape, values, params, grads, pgrads, need, scratch, ip, r, t0, t1, base, xb,
                   check):
    """Reverse steps t1-1 .. t0 of a single-cell body whose h_t are in the store rows written by
    _cell_forward: the general path's _body_backward for this body, call for call. Returns -1,
    or with ``check`` the first step (walking back) whose VJP wrote a NaN/Inf gradient (its
    values then in the body row's slots, as _cell_forward's report)."""
    node_off, node_size, kind = tape[8], tape[9], tape[10]
    i0 = tape[2][r]
    cin, w, c = tape[3][i0], tape[3][i0 + 1], tape[3][i0 + 2]
    cout, final = ip[HEADER + CARRY_OUT], ip[HEADER + FINAL]
    n = node_size[cin]
    W = view(w, values, params, kind, node_off, node_size, tape[11])
    gW = grad_view(w, grads, pgrads, kind, node_off, node_size)
    rip = tape[5][tape[4][r] : tape[4][r + 1]]
    ocin, ocout, ofinal, oc = node_off[cin], node_off[cout], node_off[final], node_off[c]
    na, nw, nc = need[cin], need[w], need[c]
    ox, step = node_off[ip[XS]], ip[X_STEP]
    addx = not xb and need[ip[XS]] != 0
    stacked = ip[N_STACK] == 1 and need[ip[HEADER + CARRY + STACKED_OUT]] != 0
    out = node_off[ip[HEADER + CARRY + STACKED_OUT]] if ip[N_STACK] == 1 else 0
    for t in range(t1 - 1, t0 - 1, -1):
        cur = base + (t - t0) * n
        prev = ocin if t == t0 else cur - n
        _copy_within(grads, ocout, ofinal, n)  # the carried gradient (+ the stacked one)
        if stacked:
            _add_within(grads, ocout, out + t * n, n)
        if na != 2:
            _zero(grads, ocin, n)
        gx = ox + t * step if xb else oc
        if not xb and nc != 2:
            _zero(grads, oc, step)
        # c's values are read only for an INTO_VALUE target (kernels/views.py), and nothing a
        # loop body reads is ever one (Tape.grad_modes: mode 1 at most): the slot stands in for c
        linear_act_vjp(values[prev : prev + n], W, grads[gx : gx + step], values[cur : cur + n],
                       grads[ocout : ocout + n], grads[ocin : ocin + n], na, gW, nw,
                       grads[gx : gx + step], nc, rip, scratch, 0.0)
        if check and not ((na == 0 or all_finite(grads[ocin : ocin + n]))
                          and (nw == 0 or all_finite(gW))
                          and (nc == 0 or all_finite(grads[gx : gx + step]))):
            _cell_report(values, grads, ip, node_off, n, prev, cur, ox + t * step, gx)
            return t
        _copy_within(grads, ofinal, ocin, n)
        if addx:
            _add_within(grads, ox + t * step, oc, step)
    return -1


@jit
def _strategy(tape, ip, xo, cell_ok):
    """The dispatch table's slot of the way this scan runs (call.py): SCAN_CELL for a
    single-cell body (``cell_ok``: its backward also needs the carry's gradient), SCAN_BINOMIAL
    for binomial checkpoints, else SCAN_STEPS (every step stored, or segments)."""
    if cell_ok and _cell_row(tape, ip, xo) >= 0:
        return SCAN_CELL
    return SCAN_BINOMIAL if ip[CKPT_EVERY] < 0 else SCAN_STEPS


@jit
def _report(bad, t):
    """An anomaly at body row ``bad`` and step t as one int64 (rows.py STEP_CODE), or -1."""
    return bad + (t + 1) * STEP_CODE if bad >= 0 else -1


@jit_inline
def scan_forward(ctx, tape, values, ivalues, params, r, check):
    """Run the SCAN row r's T steps, by the kernel of its strategy (each compiled when a tape
    first has such a scan: dispatch.py). Returns -1, or with ``check`` the body row and step of
    the first NaN/Inf as one report (_report; see the module docstring)."""
    ip = tape[5][tape[4][r] : tape[4][r + 1]]
    slot = _strategy(tape, ip, _x_offset(tape, ip), True)
    return call_forward(row_kernel(tape[12], slot), ctx, r, check)


@jit_inline
def scan_cell_forward(ctx, tape, values, ivalues, params, r, check):
    """scan_forward for a single-cell body."""
    node_off, node_size = tape[8], tape[9]
    ip = tape[5][tape[4][r] : tape[4][r + 1]]
    T, k = ip[N_STEPS], ip[CKPT_EVERY]
    store, ckpt = node_off[ip[STORE]], node_off[ip[CKPT]]
    _load_init(tape, values, params, ip)
    cell = _cell_row(tape, ip, _x_offset(tape, ip))
    cin, final = ip[HEADER + CARRY_IN], ip[HEADER + FINAL]
    n = node_size[cin]
    if k == 0:
        bad = _cell_forward(tape, values, params, ip, cell, 0, T, store, True, check)
        if bad >= 0:
            return _report(cell, bad)
        _copy_within(values, node_off[final], store + (T - 1) * n, n)
    else:
        for t0 in range(0, T, k):
            t1 = min(T, t0 + k)
            _copy_within(values, ckpt + (t0 // k) * n, node_off[cin], n)
            bad = _cell_forward(tape, values, params, ip, cell, t0, t1, store, True, check)
            if bad >= 0:
                return _report(cell, bad)
            _copy_within(values, node_off[cin], store + (t1 - 1 - t0) * n, n)
        _copy_within(values, node_off[final], node_off[cin], n)
    return -1


@jit
def _forward_done(tape, values, ip, orig, xo):
    """After the last step: its carry_out is the final carry; the x slot back in place."""
    node_off, node_size = tape[8], tape[9]
    for c in range(ip[N_CARRY]):
        cout, final = ip[HEADER + CARRY * c + CARRY_OUT], ip[HEADER + CARRY * c + FINAL]
        _copy_within(values, node_off[final], node_off[cout], node_size[final])
    _unload_x(ip, node_off, orig, xo)


@jit_inline
def scan_binomial_forward(ctx, tape, values, ivalues, params, r, check):
    """scan_forward with binomial checkpoints."""
    ip = tape[5][tape[4][r] : tape[4][r + 1]]
    orig, rel, size, xo = _layout(tape, ip)
    _load_init(tape, values, params, ip)
    bad, t = _binomial_forward(ctx, tape, values, ivalues, params, ip, True, orig, xo, check)
    if bad >= 0:
        _load_x(values, ip, tape[8], orig, xo, t, False)  # x_t in its own slot, for the report
        return _report(bad, t)
    _forward_done(tape, values, ip, orig, xo)
    return -1


@jit_inline
def scan_steps_forward(ctx, tape, values, ivalues, params, r, check):
    """scan_forward storing every step's state (k == 0) or every k-th step's carries."""
    node_off, node_size = tape[8], tape[9]
    ip = tape[5][tape[4][r] : tape[4][r + 1]]
    T, k = ip[N_STEPS], ip[CKPT_EVERY]
    store, ckpt = node_off[ip[STORE]], node_off[ip[CKPT]]
    orig, rel, size, xo = _layout(tape, ip)
    alias = xo >= 0
    _load_init(tape, values, params, ip)
    csize = _carry_size(ip, node_size)
    for t in range(T):
        if k > 0 and t % k == 0:
            _carries(values, ip, node_off, node_size, ckpt + (t // k) * csize, True)
        bad = _body_forward(ctx, tape, values, ivalues, params, ip, t, orig, xo, alias, check)
        if bad >= 0:
            _load_x(values, ip, node_off, orig, xo, t, False)  # as above
            return _report(bad, t)
        if k == 0:
            _state(values, ip, node_size, orig, rel, store + t * size, True)
        _carry_step(values, ip, node_off, node_size, t, True, t < T - 1)
    _forward_done(tape, values, ip, orig, xo)
    return -1


@jit
def _body_backward(ctx, tape, values, ivalues, params, grads, pgrads, need, scratch, ip, t, orig,
                   xo, xb, check):
    """One step of the reverse sweep with the body's values for step t already in place (with
    xb, the x slot on row t of xs: its gradient is xs's own, not cleared). Returns -1, or with
    ``check`` the first body row (walking back) that wrote a NaN/Inf gradient."""
    outs, node_off, node_size = tape[1], tape[8], tape[9]
    nc, ns = ip[N_CARRY], ip[N_STACK]
    own0 = HEADER + 4 * nc + 2 * ns
    for i in range(ip[N_OWN]):
        if not (xb and orig[i] == xo):
            v = ip[own0 + i]
            _zero(grads, node_off[v], node_size[v])
    for c in range(nc):  # the gradient flowing into carry_out is kept in the final node's slot
        cout, final = ip[HEADER + CARRY * c + CARRY_OUT], ip[HEADER + CARRY * c + FINAL]
        _add_within(grads, node_off[cout], node_off[final], node_size[cout])
    base = HEADER + CARRY * nc
    for s in range(ns):
        v, out = ip[base + STACKED * s + STACKED_BODY], ip[base + STACKED * s + STACKED_OUT]
        n = node_size[v]
        if need[out]:
            _add_within(grads, node_off[v], node_off[out] + t * n, n)
    for r in range(ip[BODY_END] - 1, ip[BODY_START] - 1, -1):
        if need[outs[r]]:
            if has_kernel(tape[0][r]):
                call_vjp(row_kernel(tape[12], SLOTS + tape[0][r]), ctx, r, False)
            if check and not inputs_grads_finite(tape, grads, pgrads, need, r):
                return r
    for c in range(nc):
        cin, final = ip[HEADER + CARRY * c + CARRY_IN], ip[HEADER + CARRY * c + FINAL]
        _copy_within(grads, node_off[final], node_off[cin], node_size[final])
    if ip[HAS_X] and not xb and need[ip[XS]]:
        xs, xslot, step = ip[XS], ip[X_SLOT], ip[X_STEP]
        dst = node_off[xs] + t * step
        _add_within(grads, dst, node_off[xslot], step)
    return -1


@jit
def _binomial_backward(ctx, tape, values, ivalues, params, grads, pgrads, need, scratch, ip, orig,
                       xo, xb, check):
    """Reverse steps T-1 .. 0 following the binomial schedule (see the module docstring).
    Returns (row, t) of the first NaN/Inf gradient with ``check``, else (-1, -1)."""
    node_off, node_size = tape[8], tape[9]
    T, slots = ip[N_STEPS], -ip[CKPT_EVERY]
    ckpt, csize = node_off[ip[CKPT]], _carry_size(ip, node_size)
    sched = ivalues[node_off[ip[SCHEDULE]] : node_off[ip[SCHEDULE]] + node_size[ip[SCHEDULE]]]
    advanced = 0
    if sched[0] == 0:  # an earlier backward sweep reused the slots: redo the forward sweep
        _load_init(tape, values, params, ip)
        _binomial_forward(ctx, tape, values, ivalues, params, ip, False, orig, xo, False)
        advanced = T
    sched[0] = 0  # the slots and body nodes are about to stop holding what the forward left
    held = sched[1]
    _load_x(values, ip, node_off, orig, xo, T - 1, xb)
    bad = _body_backward(ctx, tape, values, ivalues, params, grads, pgrads, need, scratch, ip,
                         T - 1, orig, xo, xb, check)
    if bad >= 0:
        return bad, T - 1
    for t in range(T - 2, -1, -1):  # reverse step t: restore the latest checkpoint <= t
        at = sched[4 + held - 1]
        _carries(values, ip, node_off, node_size, ckpt + (held - 1) * csize, False)
        if at == t:
            held -= 1  # its slot is free once step t is reversed
        else:
            n = at
            while n < t:
                if n > at:  # a slot is free: store the state reached
                    _carries(values, ip, node_off, node_size, ckpt + held * csize, True)
                    sched[4 + held] = n
                    held += 1
                    sched[3] = max(sched[3], held)
                stop = n + binomial_advance(t + 1 - n, slots - held + 1)
                _advance(ctx, tape, values, ivalues, params, ip, n, stop, orig, xo, xb)
                advanced += stop - n
                n = stop
        # step t again
        _body_forward(ctx, tape, values, ivalues, params, ip, t, orig, xo, xb, False)
        advanced += 1
        bad = _body_backward(ctx, tape, values, ivalues, params, grads, pgrads, need, scratch, ip,
                             t, orig, xo, xb, check)
        if bad >= 0:
            return bad, t
    sched[1] = held
    sched[2] = advanced
    return -1, -1


@jit_inline
def scan_backward(ctx, tape, values, ivalues, params, grads, pgrads, need, scratch, r, check):
    """Reverse the SCAN row r's T steps, by the kernel of its strategy (as scan_forward).
    Returns -1, or with ``check`` the body row and step of the first NaN/Inf gradient as one
    report (_report)."""
    ip = tape[5][tape[4][r] : tape[4][r + 1]]
    slot = _strategy(tape, ip, _x_offset(tape, ip), need[ip[HEADER + CARRY_OUT]] != 0)
    return call_vjp(row_kernel(tape[12], SLOTS + slot), ctx, r, check)


@jit
def _x_in_place(ip, xo, need):
    """Whether x_t is read on row t of xs: the slot's VJPs then add into xs's gradient, unless
    they overwrite it."""
    return xo >= 0 and (need[ip[X_SLOT]] == 0 or (need[ip[X_SLOT]] == 1 and need[ip[XS]] != 0))


@jit
def _backward_done(tape, grads, pgrads, need, ip, orig, xo):
    """After the first step is reversed: the x slot back in place, and the gradient that
    reached the first carry_in added to the initial carry's."""
    _unload_x(ip, tape[8], orig, xo)
    _add_init_grads(tape, grads, pgrads, need, ip)


@jit
def _add_init_grads(tape, grads, pgrads, need, ip):
    """The gradient that reached the first carry_in (kept in the final node's slot) added to
    the initial carry's."""
    node_off, node_size = tape[8], tape[9]
    for c in range(ip[N_CARRY]):
        init, final = ip[HEADER + CARRY * c + INIT], ip[HEADER + CARRY * c + FINAL]
        if need[init]:
            _add(grad_view(init, grads, pgrads, tape[10], node_off, node_size),
                 grads[node_off[final] : node_off[final] + node_size[final]])


@jit_inline
def scan_cell_backward(ctx, tape, values, ivalues, params, grads, pgrads, need, scratch, r, check):
    """scan_backward for a single-cell body."""
    node_off, node_size = tape[8], tape[9]
    ip = tape[5][tape[4][r] : tape[4][r + 1]]
    T, k = ip[N_STEPS], ip[CKPT_EVERY]
    store, ckpt = node_off[ip[STORE]], node_off[ip[CKPT]]
    xo = _x_offset(tape, ip)
    xb = _x_in_place(ip, xo, need)
    cell = _cell_row(tape, ip, xo)
    n = node_size[ip[HEADER + CARRY_IN]]
    if k == 0:
        bad = _cell_backward(tape, values, params, grads, pgrads, need, scratch, ip, cell, 0, T,
                             store, xb, check)
        if bad >= 0:
            return _report(cell, bad)
    else:
        for t0 in range(((T - 1) // k) * k, -1, -k):
            t1 = min(T, t0 + k)
            _copy_within(values, node_off[ip[HEADER + CARRY_IN]], ckpt + (t0 // k) * n, n)
            _cell_forward(tape, values, params, ip, cell, t0, t1, store, False, False)
            bad = _cell_backward(tape, values, params, grads, pgrads, need, scratch, ip, cell,
                                 t0, t1, store, xb, check)
            if bad >= 0:
                return _report(cell, bad)
    _add_init_grads(tape, grads, pgrads, need, ip)  # the cell loops leave the x slot in place
    return -1


@jit_inline
def scan_binomial_backward(ctx, tape, values, ivalues, params, grads, pgrads, need, scratch, r,
                           check):
    """scan_backward with binomial checkpoints."""
    ip = tape[5][tape[4][r] : tape[4][r + 1]]
    orig, rel, size, xo = _layout(tape, ip)
    xb = _x_in_place(ip, xo, need)
    bad, t = _binomial_backward(ctx, tape, values, ivalues, params, grads, pgrads, need, scratch,
                                ip, orig, xo, xb, check)
    if bad >= 0:
        _load_x(values, ip, tape[8], orig, xo, t, False)  # x_t in its slot, for the report
        return _report(bad, t)
    _backward_done(tape, grads, pgrads, need, ip, orig, xo)
    return -1


@jit_inline
def scan_steps_backward(ctx, tape, values, ivalues, params, grads, pgrads, need, scratch, r,
                        check):
    """scan_backward from every step's stored state (k == 0) or by segments of k steps,
    recomputed from their first carries."""
    node_off, node_size = tape[8], tape[9]
    ip = tape[5][tape[4][r] : tape[4][r + 1]]
    T, k = ip[N_STEPS], ip[CKPT_EVERY]
    store, ckpt = node_off[ip[STORE]], node_off[ip[CKPT]]
    orig, rel, size, xo = _layout(tape, ip)
    xb = _x_in_place(ip, xo, need)
    if k == 0:
        for t in range(T - 1, -1, -1):
            _state(values, ip, node_size, orig, rel, store + t * size, False)
            _load_x(values, ip, node_off, orig, xo, t, xb)
            bad = _body_backward(ctx, tape, values, ivalues, params, grads, pgrads, need, scratch,
                                 ip, t, orig, xo, xb, check)
            if bad >= 0:
                _load_x(values, ip, node_off, orig, xo, t, False)  # x_t in its slot, for the report
                return _report(bad, t)
    else:
        csize = _carry_size(ip, node_size)
        nseg = (T + k - 1) // k
        for s in range(nseg - 1, -1, -1):
            t0 = s * k
            t1 = min(T, t0 + k)
            _carries(values, ip, node_off, node_size, ckpt + s * csize, False)
            for t in range(t0, t1):  # recompute the segment, saving each step's region
                _body_forward(ctx, tape, values, ivalues, params, ip, t, orig, xo, xb, False)
                _state(values, ip, node_size, orig, rel, store + (t - t0) * size, True)
                _carry_step(values, ip, node_off, node_size, t, False, True)
            for t in range(t1 - 1, t0 - 1, -1):
                _state(values, ip, node_size, orig, rel, store + (t - t0) * size, False)
                _load_x(values, ip, node_off, orig, xo, t, xb)
                bad = _body_backward(ctx, tape, values, ivalues, params, grads, pgrads, need,
                                     scratch, ip, t, orig, xo, xb, check)
                if bad >= 0:
                    _load_x(values, ip, node_off, orig, xo, t, False)  # as above
                    return _report(bad, t)
    _backward_done(tape, grads, pgrads, need, ip, orig, xo)
    return -1
