"""The scan loop: a body of tape rows recorded once, run T times forward and backward natively.

SCAN row integer attributes (node ids and row indices; see fastgrad/scan.py):

    ip[0:16]  T, begin_row, body_start, body_end, n_carry, n_stack, has_x, xs, x_slot, x_step,
              store, k, ckpt, first_value_offset (informational), reg_size, n_own
    then      n_carry x (init, carry_in, carry_out, final)   carry c flows carry_out -> carry_in
              n_stack x (body node, stacked output)          stacked output[t] = body node at t
              n_own   body-owned nodes (gradients cleared each step)

The body's own nodes (carry and x slots, every value it computes; reg_size values in all, not
the parameters it reads) are its state. Without checkpointing (k == 0) the forward sweep saves
that state after every step into node ``store`` (T x reg_size) and the backward sweep restores
step t's state before running the body's VJPs. With checkpointing every k-th step's carries go to node ``ckpt`` and the backward
sweep recomputes each segment of k steps into ``store`` (k x reg_size) before walking it back:
the same arithmetic in the same order, so gradients are bit-identical.
"""

from ._jit import jit
from .rows import backward_row, forward_row, view

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
def _state(values, ip, node_off, node_size, pos, save):
    """Save the body's own nodes to values[pos:] (save) or restore them from there."""
    own0 = HEADER + 4 * ip[4] + 2 * ip[5]
    for i in range(ip[15]):
        v = ip[own0 + i]
        n = node_size[v]
        o = node_off[v]
        if save:
            _copy(values[pos : pos + n], values[o : o + n])
        else:
            _copy(values[o : o + n], values[pos : pos + n])
        pos += n


@jit
def _body_forward(tape, values, ivalues, params, ip, t):
    """Load x_t into the x slot and run the body rows once."""
    node_off = tape[8]
    if ip[6]:
        xs, xslot, step = ip[7], ip[8], ip[9]
        src = node_off[xs] + t * step
        _copy(values[node_off[xslot] : node_off[xslot] + step], values[src : src + step])
    for r in range(ip[2], ip[3]):
        forward_row(tape, values, ivalues, params, r)


@jit
def _carry_step(values, ip, node_off, node_size, stack_t, T):
    """After step t: stacked outputs take the body values, carry_in takes carry_out."""
    nc, ns = ip[4], ip[5]
    base = HEADER + 4 * nc
    for s in range(ns):
        v, out = ip[base + 2 * s], ip[base + 2 * s + 1]
        n = node_size[v]
        _copy(values[node_off[out] + stack_t * n : node_off[out] + (stack_t + 1) * n],
              values[node_off[v] : node_off[v] + n])
    for c in range(nc):
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
def scan_forward(tape, values, ivalues, params, r):
    ip_ptr, iparams, node_off, node_size = tape[4], tape[5], tape[8], tape[9]
    ip = iparams[ip_ptr[r] : ip_ptr[r + 1]]
    T, nc, k = ip[0], ip[4], ip[11]
    store, ckpt, size = node_off[ip[10]], node_off[ip[12]], ip[14]
    csize = 0
    for c in range(nc):
        init, cin = ip[HEADER + 4 * c], ip[HEADER + 4 * c + 1]
        csize += node_size[cin]
        _copy(values[node_off[cin] : node_off[cin] + node_size[cin]],
              view(init, values, params, tape[10], node_off, node_size))
    for t in range(T):
        if k > 0 and t % k == 0:
            _carries(values, ip, node_off, node_size, ckpt + (t // k) * csize, True)
        _body_forward(tape, values, ivalues, params, ip, t)
        if k == 0:
            _state(values, ip, node_off, node_size, store + t * size, True)
        _carry_step(values, ip, node_off, node_size, t, T)
    for c in range(nc):
        cin, final = ip[HEADER + 4 * c + 1], ip[HEADER + 4 * c + 3]
        _copy(values[node_off[final] : node_off[final] + node_size[final]],
              values[node_off[cin] : node_off[cin] + node_size[cin]])


@jit
def _body_backward(tape, values, ivalues, params, grads, pgrads, need, scratch, ip, t):
    """One step of the reverse sweep with the body's values for step t already in place."""
    outs, node_off, node_size = tape[1], tape[8], tape[9]
    nc, ns = ip[4], ip[5]
    own0 = HEADER + 4 * nc + 2 * ns
    for i in range(ip[15]):
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
    if ip[6] and need[ip[7]]:
        xs, xslot, step = ip[7], ip[8], ip[9]
        dst = node_off[xs] + t * step
        _add(grads[dst : dst + step], grads[node_off[xslot] : node_off[xslot] + step])


@jit
def scan_backward(tape, values, ivalues, params, grads, pgrads, need, scratch, r):
    ip_ptr, iparams, node_off, node_size = tape[4], tape[5], tape[8], tape[9]
    ip = iparams[ip_ptr[r] : ip_ptr[r + 1]]
    T, nc, k = ip[0], ip[4], ip[11]
    store, ckpt, size = node_off[ip[10]], node_off[ip[12]], ip[14]
    # the final node's forward value is consumed; keep carry values right for recomputation
    if k == 0:
        for t in range(T - 1, -1, -1):
            _state(values, ip, node_off, node_size, store + t * size, False)
            _body_backward(tape, values, ivalues, params, grads, pgrads, need, scratch, ip, t)
    else:
        csize = 0
        for c in range(nc):
            csize += node_size[ip[HEADER + 4 * c + 1]]
        nseg = (T + k - 1) // k
        for s in range(nseg - 1, -1, -1):
            t0 = s * k
            t1 = min(T, t0 + k)
            _carries(values, ip, node_off, node_size, ckpt + s * csize, False)
            for t in range(t0, t1):  # recompute the segment, saving each step's region
                _body_forward(tape, values, ivalues, params, ip, t)
                j = t - t0
                _state(values, ip, node_off, node_size, store + j * size, True)
                for c in range(nc):
                    cin, cout = ip[HEADER + 4 * c + 1], ip[HEADER + 4 * c + 2]
                    _copy(values[node_off[cin] : node_off[cin] + node_size[cin]],
                          values[node_off[cout] : node_off[cout] + node_size[cout]])
            for t in range(t1 - 1, t0 - 1, -1):
                j = t - t0
                _state(values, ip, node_off, node_size, store + j * size, False)
                _body_backward(tape, values, ivalues, params, grads, pgrads, need, scratch, ip, t)
    for c in range(nc):
        init, final = ip[HEADER + 4 * c], ip[HEADER + 4 * c + 3]
        if need[init]:
            _add(view(init, grads, pgrads, tape[10], node_off, node_size),
                 grads[node_off[final] : node_off[final] + node_size[final]])
