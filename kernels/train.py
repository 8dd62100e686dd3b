"""Training entry kernels: one compiled step (forward + backward + clip + update) and one whole
epoch of minibatches, each a single native call over a recorded tape.

Parameters live in one flat buffer ``flat`` (gradients in ``flat_grad``) that the tape reads
directly: parameter nodes have kind 2 and offsets into ``flat``, so a step copies no
parameters. ``zero_spans`` rows (0 value arena / 1 flat gradients, offset, size) list the
gradient slots to clear before a backward sweep: only nodes that need a gradient and that no
VJP overwrites whole (big input slots and most weight gradients are never touched).
"""


import numpy as np

from ._jit import jit, jit_inline
from .optim import clip_gradients, optimizer_update
from .replay import replay_backward, replay_forward


# Why no constants in the calls below: Numba types a constant argument (0, False) as a literal
# and compiles a separate copy of the callee for it, which for the replay loops means compiling
# every kernel a second time (about 50 s cold, measured). np.int64(0) and the caller's ``check``
# are plain int64 and bool, so the eager replay's compiled code is reused.


@jit_inline
def _step(tape, values, ivalues, grads, need, scratch, zero_spans, loss_off,
          flat, flat_grad, kind, s1, s2, s3, hyper, t, max_norm, max_value, check):
    nrows = tape[0].size
    first = np.int64(0)
    bad = replay_forward(tape, values, ivalues, flat, first, nrows, check)
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
    bad = replay_backward(tape, values, ivalues, flat, grads, flat_grad, need, scratch, first,
                          nrows, check)
    if bad >= 0:
        return loss, 0.0, bad, 1
    norm = 0.0
    if max_norm > 0.0 or max_value > 0.0:
        norm = clip_gradients(flat_grad, max_norm, max_value)
    if kind >= 0:
        optimizer_update(kind, flat, flat_grad, s1, s2, s3, hyper, t)
    return loss, norm, -1, 0


@jit
def train_step(tape, values, ivalues, grads, need, scratch, zero_spans, loss_off,
               flat, flat_grad, kind, s1, s2, s3, hyper, t, max_norm, max_value, check):
    """Returns (loss, gradient norm, anomaly row or -1, 0 forward / 1 backward)."""
    return _step(tape, values, ivalues, grads, need, scratch, zero_spans, loss_off,
                 flat, flat_grad, kind, s1, s2, s3, hyper, t, max_norm, max_value, check)


@jit
def fit_epoch(tape, values, ivalues, grads, need, scratch, zero_spans, loss_off,
              flat, flat_grad,
              kind, s1, s2, s3, hyper, t0, max_norm, max_value,
              X, x_off, x_external, Yf, Yi, y_off, perm, batch, nbatches, logits_off, ncls,
              check):
    """Run ``nbatches`` minibatches of rows perm[b*batch : (b+1)*batch] of X (N, row) and
    Yf (N, row) or Yi (N,). The batch of X goes to the x slot at ``x_off``, or with
    ``x_external`` (x read in place, node kind 3) to the tape's external buffer ``tape[11]``.
    ``check`` must be False (an argument, not a constant: see above).
    Returns (sum of batch losses, correct predictions)."""
    row = X.shape[1]
    yrow = Yf.shape[1]
    total = 0.0
    correct = 0
    xdst = tape[11] if x_external else values[x_off : x_off + batch * row]
    for b in range(nbatches):
        for r in range(batch):
            src = perm[b * batch + r]
            xdst[r * row : (r + 1) * row] = X[src]
            if Yi.size > 0:
                ivalues[y_off + r] = Yi[src]
            else:
                values[y_off + r * yrow : y_off + (r + 1) * yrow] = Yf[src]
        loss, norm, bad, direction = _step(
            tape, values, ivalues, grads, need, scratch, zero_spans, loss_off,
            flat, flat_grad, kind, s1, s2, s3, hyper, t0 + b,
            max_norm, max_value, check)
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
    return total, correct
