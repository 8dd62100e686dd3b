"""Training entry kernels: one compiled step (forward + backward + clip + update) and one whole
epoch of minibatches, each a single native call over a recorded tape.

Parameters live in one flat buffer ``flat`` (gradients in ``flat_grad``) that the tape reads
directly: parameter nodes have kind 2 and offsets into ``flat``, so a step copies no
parameters. ``zero_spans`` rows (0 value arena / 1 flat gradients, offset, size) list the
gradient slots to clear before a backward sweep: only nodes that need a gradient and that no
VJP overwrites whole (big input slots and most weight gradients are never touched).

With plain SGD (no momentum, weight decay, clipping or anomaly check) the update of a layer's
weight and bias is folded into their VJP: ``fold_need`` gives them the gradient target
INTO_VALUE (kernels/views.py), the weight itself with value_alpha = -lr, so that their VJP
writes p += -lr g; the update loop then runs over the other parameters alone, ``keep_spans``
rows (offset, size) of ``flat``. Their ``flat_grad`` entries are not written then. This
module is the only place that turns a learning rate into a gradient target.
"""

from ._jit import jit, jit_entry, jit_inline
from .optim import clip_gradients, folds_sgd, optimizer_update, sgd_plain
from .replay import replay_backward, replay_forward

__all__ = ["H_FLOAT_OFF", "H_FOLD", "H_FPARAMS_END", "H_GRADS_END", "H_INT_HI", "H_INT_LO",
           "H_INT_OFF", "H_KIND", "H_LOSS_OFF", "H_NODES", "H_SEGMENTS", "H_SIZE",
           "c_contiguous_aligned", "fit_epoch", "train_step"]


# Constants in the calls below are fine: calls between kernels are typed by their arguments'
# plain types (_jit._one_specialisation_per_type), so the eager replay's compiled code serves
# this step too (a literal 0 once compiled every kernel a second time, about 50 s cold).


@jit_inline
def _step(tape, values, ivalues, grads, need, fold_need, scratch, zero_spans, keep_spans,
          loss_off, flat, flat_grad, kind, s1, s2, s3, hyper, t, max_norm, max_value, check):
    nrows = tape[0].size
    bad = replay_forward(tape, values, ivalues, flat, 0, nrows, check)
    if bad >= 0:
        return values[loss_off], 0.0, bad, 0
    loss = values[loss_off]
    for i in range(zero_spans.shape[0]):
        a = zero_spans[i, 1]
        b = a + zero_spans[i, 2]
        if zero_spans[i, 0] == 0:
            grads[a:b] = 0.0
        else:
            flat_grad[a:b] = 0.0
    grads[loss_off] = 1.0
    # fold_need gives the parameters whose plain-SGD update their VJP applies the target
    # INTO_VALUE (kernels/views.py); empty when the program has none or keeps every gradient
    fold = fold_need.size > 0 and folds_sgd(kind, hyper, max_norm, max_value, check)
    lr = hyper[0]
    bad = replay_backward(tape, values, ivalues, flat, grads, flat_grad,
                          fold_need if fold else need, scratch, 0, nrows, check, -lr)
    if bad >= 0:
        return loss, 0.0, bad, 1
    norm = 0.0
    if max_norm > 0.0 or max_value > 0.0:
        norm = clip_gradients(flat_grad, max_norm, max_value)
    if fold:  # the rest of the parameters (keep_spans rows: offset, size)
        for i in range(keep_spans.shape[0]):
            a = keep_spans[i, 0]
            b = a + keep_spans[i, 1]
            sgd_plain(flat[a:b], flat_grad[a:b], lr)
    elif kind >= 0:
        optimizer_update(kind, flat, flat_grad, s1, s2, s3, hyper, t)
    return loss, norm, -1, 0


# The layout of ``train_step``'s packed arguments: header entries of ``ints`` (training/program.py
# packs them). ints[H_SEGMENTS + k] is where the k-th int64 segment starts (k = 0..10: the
# tape's ops, outs, in_ptr, in_idx, ip_ptr, iparams, fp_ptr, node_off, node_size, then the
# zero_spans rows and the keep_spans rows), ints[H_SEGMENTS + 11] where the last one ends.
H_SEGMENTS = 0
H_FPARAMS_END = 12  # floats = fparams | grads | scratch: where each of the first two ends
H_GRADS_END = 13
H_NODES = 14  # bytes = node_kind | grad modes | modes with INTO_VALUE, each this long
H_LOSS_OFF = 15
H_KIND = 16
H_FLOAT_OFF = 17
H_INT_OFF = 18
H_INT_LO = 19
H_INT_HI = 20
H_FOLD = 21  # 1: the step may fold plain-SGD updates into the VJPs (bytes' third section)
H_SIZE = 22


@jit
def _copy(dst, src):
    """dst[:] = src for equal sizes. Why a loop: a slice assignment checks the shapes and
    compiles Numba's error message formatting into every kernel that holds one (about 2 s)."""
    for i in range(src.size):
        dst[i] = src[i]


@jit
def c_contiguous_aligned(x):
    """Whether ``x`` (a C-typed array that may hold any strides: a native entry called
    directly does not check them) really is C-contiguous and aligned. Strides and the data
    pointer are read from the array's own struct, as the caller set them."""
    if x.size == 0:  # NumPy calls any empty array contiguous, whatever its strides
        return True
    if x.ctypes.data % x.itemsize:
        return False
    step = x.itemsize
    for d in range(x.ndim - 1, -1, -1):
        if x.shape[d] != 1 and x.strides[d] != step:
            return False
        step *= x.shape[d]
    return True


@jit_entry
def train_step(ints, bytes_, floats, values, ivalues, x, buffers, hyper, t, max_norm,
               max_value, check, finput, iinput, table):
    """One compiled step from packed arguments: load one float and one integer input, then
    forward + backward + clip + update.

    Why packed: the native entry converts each array argument from its Python object (about
    0.16 µs each once a large step has evicted the interpreter's data from cache); the tape,
    the work buffers and the optimizer's buffers as separate arrays were 24 of them. Here
    ``ints`` holds the header above and every int64 array of the program, ``bytes_`` the node
    kinds, the gradient modes and the same with INTO_VALUE marks, ``floats`` the float
    parameters of the tape and the gradient and scratch arenas, ``buffers`` the rows flat,
    flat_grad and three optimizer states (two rows without an optimizer). The views rebuilt
    here have the types the eager replay uses, so the replay kernels compile once for both.

    ``x`` is the external input (node kind 3), 1-D or 2-D, read in place: the caller's own
    array on the per-step path, whose layout is checked here rather than in Python (after a
    large step each NumPy call in Python costs µs: flags and reshape cost 4-6 µs at
    784-128-10 batch 64); direction 3 (nothing has run) asks for a C-contiguous copy.
    ``table``: the dispatch table of the tape's dtype (kernels/call.py).
    ``finput`` (1-D, the tape's dtype) is copied to values at ints[H_FLOAT_OFF]; ``iinput``
    (1-D int64, labels or indices) is copied to ivalues at ints[H_INT_OFF] and the copy is
    checked against [ints[H_INT_LO], ints[H_INT_HI]). Either may be empty: loading them here saves a
    native call per input. Either may also be the caller's own 1-D array, so its layout is
    checked here too (direction 3).
    Returns (loss, gradient norm, row or -1, direction): direction 0 / 1 for an anomaly in
    the forward / backward sweep at that row, 2 for an index out of range at that position
    of ``iinput`` (nothing has run then), 3 for a non-contiguous or unaligned ``x``,
    ``finput`` or ``iinput`` (nothing has run).
    """
    if not (c_contiguous_aligned(x) and c_contiguous_aligned(finput)
            and c_contiguous_aligned(iinput)):
        return 0.0, 0.0, 0, 3
    external = x.reshape(x.size)
    i_lo, i_hi = ints[H_INT_LO], ints[H_INT_HI]
    i_off, f_off = ints[H_INT_OFF], ints[H_FLOAT_OFF]
    # Copy, then check the copy: ``iinput`` may be the caller's array, which another thread
    # (a loader refilling it) may change meanwhile; the values checked are the values used.
    labels = ivalues[i_off : i_off + iinput.size]
    _copy(labels, iinput)
    for i in range(labels.size):
        if labels[i] < i_lo or labels[i] >= i_hi:
            labels[:] = i_lo  # no out-of-range index stays in the slot
            return 0.0, 0.0, i, 2
    _copy(values[f_off : f_off + finput.size], finput)
    seg = ints[H_SEGMENTS : H_SEGMENTS + 12]
    nn = ints[H_NODES]
    fp_end, g_end = ints[H_FPARAMS_END], ints[H_GRADS_END]
    tape = (ints[seg[0] : seg[1]], ints[seg[1] : seg[2]], ints[seg[2] : seg[3]],
            ints[seg[3] : seg[4]], ints[seg[4] : seg[5]], ints[seg[5] : seg[6]],
            ints[seg[6] : seg[7]], floats[:fp_end], ints[seg[7] : seg[8]],
            ints[seg[8] : seg[9]], bytes_[:nn], external, table)
    zero_spans = ints[seg[9] : seg[10]].reshape(((seg[10] - seg[9]) // 3, 3))
    keep_spans = ints[seg[10] : seg[11]].reshape(((seg[11] - seg[10]) // 2, 2))
    fold_need = bytes_[2 * nn : 3 * nn] if ints[H_FOLD] else bytes_[:0]
    flat, flat_grad = buffers[0], buffers[1]
    if buffers.shape[0] >= 5:
        s1, s2, s3 = buffers[2], buffers[3], buffers[4]
    else:
        s1, s2, s3 = flat_grad, flat_grad, flat_grad
    return _step(tape, values, ivalues, floats[fp_end:g_end], bytes_[nn : 2 * nn], fold_need,
                 floats[g_end:], zero_spans, keep_spans, ints[H_LOSS_OFF], flat, flat_grad,
                 ints[H_KIND], s1, s2, s3, hyper, t, max_norm, max_value, check)


@jit_entry
def fit_epoch(tape, values, ivalues, grads, need, fold_need, scratch, zero_spans, keep_spans,
              loss_off, flat, flat_grad,
              kind, s1, s2, s3, hyper, t0, max_norm, max_value,
              X, x_off, x_external, Yf, Yi, y_off, perm, batch, nbatches, logits_off, ncls,
              check, stop):
    """Run ``nbatches`` minibatches of rows perm[b*batch : (b+1)*batch] of X (N, row) and
    Yf (N, row) or Yi (N,). The batch of X goes to the x slot at ``x_off``, or with
    ``x_external`` (x read in place, node kind 3) to the tape's external buffer ``tape[11]``.
    ``check`` (fg.detect_anomaly; an argument, not a constant: see above) checks every row of
    every batch and stops at the first NaN/Inf, before that batch's update. ``fold_need``
    (empty: no folding) and ``keep_spans`` as in train_step. ``stop`` (int64, (1,)): when
    another thread sets ``stop[0]`` (fit's Ctrl-C handler), the epoch ends before its next batch.
    Returns (sum of batch losses, correct predictions, batches completed, row or -1,
    direction): the last two as train_step's, for the batch after the completed ones."""
    row = X.shape[1]
    yrow = Yf.shape[1]
    total = 0.0
    correct = 0
    xdst = tape[11] if x_external else values[x_off : x_off + batch * row]
    for b in range(nbatches):
        if stop[0] != 0:
            return total, correct, b, -1, 0
        for r in range(batch):
            src = perm[b * batch + r]
            _copy(xdst[r * row : (r + 1) * row], X[src])
            if Yi.size > 0:
                ivalues[y_off + r] = Yi[src]
            else:
                _copy(values[y_off + r * yrow : y_off + (r + 1) * yrow], Yf[src])
        loss, norm, bad, direction = _step(
            tape, values, ivalues, grads, need, fold_need, scratch, zero_spans, keep_spans,
            loss_off, flat, flat_grad, kind, s1, s2, s3, hyper, t0 + b,
            max_norm, max_value, check)
        if bad >= 0:
            return total, correct, b, bad, direction
        total += loss
        if ncls > 0:
            for r in range(batch):
                base = logits_off + r * ncls
                best = 0
                for c in range(1, ncls):
                    if values[base + c] > values[base + best]:
                        best = c
                if best == ivalues[y_off + r]:
                    correct += 1
    return total, correct, nbatches, -1, 0
