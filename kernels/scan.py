"""The scan loop: a body of tape rows recorded once, run T times forward and backward natively.

SCAN row integer attributes (node ids and row indices; see fastgrad/scan.py):

    ip[0:16]  T, begin_row, body_start, body_end, n_carry, n_stack, has_x, xs, x_slot, x_step,
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
"""

import numpy as np

from ..opcodes import MATMUL, SHAPE, Op
from ._jit import jit, jit_inline
from .rows import backward_row, forward_row, grad_view, view

HEADER = 16


@jit
def _copy(dst, src):
    for i in range(src.size):
        dst[i] = src[i]


@jit
def _add(dst, src):
    for i in range(src.size):
        dst[i] += src[i]


@jit
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
    own0 = HEADER + 4 * ip[4] + 2 * ip[5]
    n = ip[15]
    orig = np.empty(n, np.int64)
    rel = np.full(n, -1, np.int64)
    for i in range(n):
        orig[i] = node_off[ip[own0 + i]]
    xso = node_off[ip[8]] if ip[6] else -1  # x_t is loaded per step, never saved
    for r in range(ip[2], ip[3]):
        n_in = in_ptr[r + 1] - in_ptr[r]
        for j in range(n_in + 1):
            v = outs[r] if j == n_in else in_idx[in_ptr[r] + j]
            if kind[v] == 0 and node_off[v] != xso and _reads(tape[0][r], j, n_in):
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
    xo = xso if ip[6] and kind[ip[7]] == 0 else -1
    return orig, rel, pos, xo


@jit
def _state(values, ip, node_size, orig, rel, pos, save):
    """Save the values the VJPs read to values[pos:] (save) or restore them from there."""
    own0 = HEADER + 4 * ip[4] + 2 * ip[5]
    for i in range(ip[15]):
        if rel[i] >= 0:
            n = node_size[ip[own0 + i]]
            o, p = orig[i], pos + rel[i]
            if save:
                _copy(values[p : p + n], values[o : o + n])
            else:
                _copy(values[o : o + n], values[p : p + n])


@jit
def _load_x(values, ip, node_off, orig, xo, t, alias):
    """x_t into the x slot for step t: with alias (and xs in the value arena) the slot and its
    RESHAPEs point at row t of xs, else at their own slot, and x_t is copied in."""
    if ip[6]:
        xs, xslot, step = ip[7], ip[8], ip[9]
        src = node_off[xs] + t * step
        at = src if alias and xo >= 0 else xo
        own0 = HEADER + 4 * ip[4] + 2 * ip[5]
        for i in range(ip[15] if xo >= 0 else 0):
            if orig[i] == xo:
                node_off[ip[own0 + i]] = at
        if at != src:
            _copy(values[node_off[xslot] : node_off[xslot] + step], values[src : src + step])


@jit
def _unload_x(ip, node_off, orig, xo):
    """Point the x slot and its RESHAPEs back at their own slot."""
    own0 = HEADER + 4 * ip[4] + 2 * ip[5]
    for i in range(ip[15] if xo >= 0 else 0):
        if orig[i] == xo:
            node_off[ip[own0 + i]] = xo


@jit_inline
def _body_forward(tape, values, ivalues, params, ip, t, orig, xo, alias):
    """Load x_t (see _load_x) and run the body rows once."""
    _load_x(values, ip, tape[8], orig, xo, t, alias)
    for r in range(ip[2], ip[3]):
        forward_row(tape, values, ivalues, params, r)


@jit
def _carry_step(values, ip, node_off, node_size, t, stack, move):
    """After step t: stacked outputs take the body values (stack), carry_in takes carry_out
    (move)."""
    nc, ns = ip[4], ip[5]
    base = HEADER + 4 * nc
    for s in range(ns if stack else 0):
        v, out = ip[base + 2 * s], ip[base + 2 * s + 1]
        n = node_size[v]
        _copy(values[node_off[out] + t * n : node_off[out] + (t + 1) * n],
              values[node_off[v] : node_off[v] + n])
    for c in range(nc if move else 0):
        cin, cout = ip[HEADER + 4 * c + 1], ip[HEADER + 4 * c + 2]
        _copy(values[node_off[cin] : node_off[cin] + node_size[cin]],
              values[node_off[cout] : node_off[cout] + node_size[cout]])


@jit
def _carries(values, ip, node_off, node_size, pos, save):
    """Save the carry_in slots to values[pos:] (save) or restore them from there."""
    for c in range(ip[4]):
        cin = ip[HEADER + 4 * c + 1]
        n = node_size[cin]
        if save:
            _copy(values[pos : pos + n], values[node_off[cin] : node_off[cin] + n])
        else:
            _copy(values[node_off[cin] : node_off[cin] + n], values[pos : pos + n])
        pos += n


@jit
def _carry_size(ip, node_size):
    csize = 0
    for c in range(ip[4]):
        csize += node_size[ip[HEADER + 4 * c + 1]]
    return csize


@jit
def _load_init(tape, values, params, ip):
    node_off, node_size = tape[8], tape[9]
    for c in range(ip[4]):
        init, cin = ip[HEADER + 4 * c], ip[HEADER + 4 * c + 1]
        _copy(values[node_off[cin] : node_off[cin] + node_size[cin]],
              view(init, values, params, tape[10], node_off, node_size, tape[11]))


@jit_inline
def _advance(tape, values, ivalues, params, ip, t0, t1, orig, xo, alias):
    """Recompute steps t0 .. t1-1 from the carries in place (nothing stacked or saved)."""
    for t in range(t0, t1):
        _body_forward(tape, values, ivalues, params, ip, t, orig, xo, alias)
        _carry_step(values, ip, tape[8], tape[9], t, False, True)


@jit_inline
def _binomial_forward(tape, values, ivalues, params, ip, stack, orig, xo):
    """All T steps from the carries in place, storing the binomial schedule's first checkpoints;
    step T-1's state is left in the body nodes (its carry_in is not overwritten)."""
    node_off, node_size = tape[8], tape[9]
    T, slots = ip[0], -ip[11]
    ckpt, csize = node_off[ip[12]], _carry_size(ip, node_size)
    sched = ivalues[node_off[ip[13]] : node_off[ip[13]] + node_size[ip[13]]]
    alias = xo >= 0
    held = 0
    store_at = 0
    for t in range(T):
        if t == store_at and t < T - 1:
            _carries(values, ip, node_off, node_size, ckpt + held * csize, True)
            sched[4 + held] = t
            held += 1
            store_at = t + binomial_advance(T - t, slots - held + 1)
        _body_forward(tape, values, ivalues, params, ip, t, orig, xo, alias)
        _carry_step(values, ip, node_off, node_size, t, stack, t < T - 1)
    sched[0] = 1
    sched[1] = held
    sched[3] = max(sched[3], held)


@jit_inline
def scan_forward(tape, values, ivalues, params, r):
    ip_ptr, iparams, node_off, node_size = tape[4], tape[5], tape[8], tape[9]
    ip = iparams[ip_ptr[r] : ip_ptr[r + 1]]
    T, nc, k = ip[0], ip[4], ip[11]
    store, ckpt = node_off[ip[10]], node_off[ip[12]]
    orig, rel, size, xo = _layout(tape, ip)
    alias = xo >= 0
    _load_init(tape, values, params, ip)
    if k < 0:
        _binomial_forward(tape, values, ivalues, params, ip, True, orig, xo)
    else:
        csize = _carry_size(ip, node_size)
        for t in range(T):
            if k > 0 and t % k == 0:
                _carries(values, ip, node_off, node_size, ckpt + (t // k) * csize, True)
            _body_forward(tape, values, ivalues, params, ip, t, orig, xo, alias)
            if k == 0:
                _state(values, ip, node_size, orig, rel, store + t * size, True)
            _carry_step(values, ip, node_off, node_size, t, True, t < T - 1)
    for c in range(nc):  # the last step's carry_out is the final carry
        cout, final = ip[HEADER + 4 * c + 2], ip[HEADER + 4 * c + 3]
        _copy(values[node_off[final] : node_off[final] + node_size[final]],
              values[node_off[cout] : node_off[cout] + node_size[cout]])
    _unload_x(ip, node_off, orig, xo)


@jit_inline
def _body_backward(tape, values, ivalues, params, grads, pgrads, need, scratch, ip, t, orig, xo,
                   xb):
    """One step of the reverse sweep with the body's values for step t already in place (with
    xb, the x slot on row t of xs: its gradient is xs's own, not cleared)."""
    outs, node_off, node_size = tape[1], tape[8], tape[9]
    nc, ns = ip[4], ip[5]
    own0 = HEADER + 4 * nc + 2 * ns
    for i in range(ip[15]):
        if not (xb and orig[i] == xo):
            v = ip[own0 + i]
            grads[node_off[v] : node_off[v] + node_size[v]] = 0.0
    for c in range(nc):  # the gradient flowing into carry_out is kept in the final node's slot
        cout, final = ip[HEADER + 4 * c + 2], ip[HEADER + 4 * c + 3]
        _add(grads[node_off[cout] : node_off[cout] + node_size[cout]],
             grads[node_off[final] : node_off[final] + node_size[final]])
    base = HEADER + 4 * nc
    for s in range(ns):
        v, out = ip[base + 2 * s], ip[base + 2 * s + 1]
        n = node_size[v]
        if need[out]:
            _add(grads[node_off[v] : node_off[v] + n],
                 grads[node_off[out] + t * n : node_off[out] + (t + 1) * n])
    for r in range(ip[3] - 1, ip[2] - 1, -1):
        if need[outs[r]]:
            backward_row(tape, values, ivalues, params, grads, pgrads, need, scratch, r)
    for c in range(nc):
        cin, final = ip[HEADER + 4 * c + 1], ip[HEADER + 4 * c + 3]
        _copy(grads[node_off[final] : node_off[final] + node_size[final]],
              grads[node_off[cin] : node_off[cin] + node_size[cin]])
    if ip[6] and not xb and need[ip[7]]:
        xs, xslot, step = ip[7], ip[8], ip[9]
        dst = node_off[xs] + t * step
        _add(grads[dst : dst + step], grads[node_off[xslot] : node_off[xslot] + step])


@jit_inline
def _binomial_backward(tape, values, ivalues, params, grads, pgrads, need, scratch, ip, orig, xo,
                       xb):
    """Reverse steps T-1 .. 0 following the binomial schedule (see the module docstring)."""
    node_off, node_size = tape[8], tape[9]
    T, slots = ip[0], -ip[11]
    ckpt, csize = node_off[ip[12]], _carry_size(ip, node_size)
    sched = ivalues[node_off[ip[13]] : node_off[ip[13]] + node_size[ip[13]]]
    advanced = 0
    if sched[0] == 0:  # an earlier backward sweep reused the slots: redo the forward sweep
        _load_init(tape, values, params, ip)
        _binomial_forward(tape, values, ivalues, params, ip, False, orig, xo)
        advanced = T
    sched[0] = 0  # the slots and body nodes are about to stop holding what the forward left
    held = sched[1]
    _load_x(values, ip, node_off, orig, xo, T - 1, xb)
    _body_backward(tape, values, ivalues, params, grads, pgrads, need, scratch, ip, T - 1, orig,
                   xo, xb)
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
                _advance(tape, values, ivalues, params, ip, n, stop, orig, xo, xb)
                advanced += stop - n
                n = stop
        _body_forward(tape, values, ivalues, params, ip, t, orig, xo, xb)  # step t once more
        advanced += 1
        _body_backward(tape, values, ivalues, params, grads, pgrads, need, scratch, ip, t, orig,
                       xo, xb)
    sched[1] = held
    sched[2] = advanced


@jit_inline
def scan_backward(tape, values, ivalues, params, grads, pgrads, need, scratch, r):
    ip_ptr, iparams, node_off, node_size = tape[4], tape[5], tape[8], tape[9]
    ip = iparams[ip_ptr[r] : ip_ptr[r + 1]]
    T, nc, k = ip[0], ip[4], ip[11]
    store, ckpt = node_off[ip[10]], node_off[ip[12]]
    orig, rel, size, xo = _layout(tape, ip)
    # x_t on row t of xs: the slot's VJPs then add into xs's gradient, unless they overwrite it
    xb = xo >= 0 and (need[ip[8]] == 0 or (need[ip[8]] == 1 and need[ip[7]] != 0))
    # the final node's forward value is consumed; keep carry values right for recomputation
    if k == 0:
        for t in range(T - 1, -1, -1):
            _state(values, ip, node_size, orig, rel, store + t * size, False)
            _load_x(values, ip, node_off, orig, xo, t, xb)
            _body_backward(tape, values, ivalues, params, grads, pgrads, need, scratch, ip, t,
                           orig, xo, xb)
    elif k < 0:
        _binomial_backward(tape, values, ivalues, params, grads, pgrads, need, scratch, ip, orig,
                           xo, xb)
    else:
        csize = _carry_size(ip, node_size)
        nseg = (T + k - 1) // k
        for s in range(nseg - 1, -1, -1):
            t0 = s * k
            t1 = min(T, t0 + k)
            _carries(values, ip, node_off, node_size, ckpt + s * csize, False)
            for t in range(t0, t1):  # recompute the segment, saving each step's region
                _body_forward(tape, values, ivalues, params, ip, t, orig, xo, xb)
                _state(values, ip, node_size, orig, rel, store + (t - t0) * size, True)
                _carry_step(values, ip, node_off, node_size, t, False, True)
            for t in range(t1 - 1, t0 - 1, -1):
                _state(values, ip, node_size, orig, rel, store + (t - t0) * size, False)
                _load_x(values, ip, node_off, orig, xo, t, xb)
                _body_backward(tape, values, ivalues, params, grads, pgrads, need, scratch, ip, t,
                               orig, xo, xb)
    _unload_x(ip, node_off, orig, xo)
    for c in range(nc):
        init, final = ip[HEADER + 4 * c], ip[HEADER + 4 * c + 3]
        if need[init]:
            _add(grad_view(init, grads, pgrads, tape[10], node_off, node_size),
                 grads[node_off[final] : node_off[final] + node_size[final]])
