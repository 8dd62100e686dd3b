"""Truncated backpropagation through time: training a recurrent model on one long stream in
windows of compiled scans, TBPTT(k1, k2) of Williams & Peng (1990). A training loop, built on
``fg.scan`` and ``fg.compile``.
"""

from __future__ import annotations

import numpy as np

from .compile import compile as _compile
from ..core.errors import fail
from ..ops import fmt
from .optim import Optimizer
from ..frontend.tensor import Tensor, concatenate, tensor

__all__ = ["truncated_bptt"]


def truncated_bptt(model, init, xs, targets, k1, k2, loss, optimizer, clip_grad_norm=None,
                   clip_grad_value=None):
    """Train a recurrent model on one long stream with truncated backpropagation through time,
    TBPTT(k1, k2) of Williams & Peng (1990): every k1 steps, backpropagate the loss of those k1
    steps through the last k2 >= k1 steps and take one optimizer step. The carry flows forward
    across updates; gradients stop at the start of each k2-step window.

    model:     (xs (n, ...), carry) -> (outputs (n, ...), carry), time first: an fg.nn.RNN, LSTM
               or GRU (batch_first=False), or ``lambda xs, h: fg.scan(step, h, xs, stack=True)``.
    init:      the carry entering step 0: an array or tensor, or a tuple of them (LSTM: (h0, c0)).
    xs:        (T, ...) the input stream.
    targets:   (T, ...) one target per step, aligned with xs.
    k1, k2:    integers, 1 <= k1 <= k2: update every k1 steps, backpropagate through k2 steps.
    loss:      (outputs (n, ...), targets (n, ...)) -> one-element tensor, for the n <= k1 steps
               an update is about.
    optimizer: an fg.optim optimizer over the model's parameters (clip_grad_norm and
               clip_grad_value clip each update's gradients, as in fg.compile).

    Returns ``(losses, carry)``: losses, shape (ceil(T / k1),), one per update, and the carry
    after step T-1 (tensors without gradient, the structure of ``init``) to continue the stream.

    Update u = 1 .. ceil(T / k1) ends at step e = min(u k1, T): it runs steps max(0, e - k2) ..
    e-1 from the carry kept for that step, with the current parameters, takes ``loss`` over
    steps e_prev .. e-1 (the last update gets the T mod k1 steps left, if any) and applies one
    update; the carry at the start of the next window is kept. Each update is one call of an
    ``fg.compile``d step, traced once per window shape (at most k2 / k1 + 3 shapes). With
    k1 = k2 = T it is one step of full BPTT.

    >>> import fastgrad as fg, numpy as np
    >>> rnn = fg.nn.RNN(input_size=2, hidden_size=8, seed=0)
    >>> head = fg.nn.Linear(8, 1, seed=1)
    >>> opt = fg.optim.Adam(rnn.parameters() + head.parameters(), lr=1e-2)
    >>> xs = np.random.default_rng(0).normal(size=(100, 4, 2))     # (T, batch, input)
    >>> ys = np.cumsum(xs[..., :1], axis=0) * 0.1                   # (T, batch, 1)
    >>> losses, h = fg.truncated_bptt(rnn, np.zeros((4, 8)), xs, ys, k1=10, k2=20,
    ...                               loss=lambda hs, t: fg.mse_loss(head(hs), t), optimizer=opt)
    >>> losses.shape, h.shape                                       # 10 updates, h_100
    ((10,), (4, 8))
    """
    op = "truncated_bptt"
    for name, k in (("k1", k1), ("k2", k2)):
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise fail(op, f"{name} must be an integer >= 1, got {k!r}",
                       "update every k1 >= 1 steps and backpropagate through k2 >= k1 steps")
    k1, k2 = int(k1), int(k2)
    if k2 < k1:
        raise fail(op, f"k2={k2} < k1={k1}: the k1 steps an update's loss covers must lie "
                   f"within the k2 steps it backpropagates through",
                   f"pass k2 >= k1 (k2={k1}: windows that do not overlap)")
    if not isinstance(optimizer, Optimizer):
        raise fail(op, f"needs an fg.optim optimizer, got {type(optimizer).__name__}",
                   "pass e.g. fg.optim.Adam(model.parameters(), lr=1e-3)")
    if getattr(model, "batch_first", False) or getattr(model, "stack_outputs", True) is False:
        raise fail(op, "the model must take (T, B, ...) inputs and return per-step outputs",
                   "build it with batch_first=False and stack_outputs=True; pass xs time first")
    xs, ys = (a.numpy() if isinstance(a, Tensor) else np.asarray(a) for a in (xs, targets))
    if xs.ndim == 0 or xs.shape[0] < 1:
        raise fail(op, f"xs of shape {fmt(xs.shape)} has no time axis with steps",
                   "pass xs of shape (T, ...) with T >= 1")
    T = xs.shape[0]
    if ys.ndim == 0 or ys.shape[0] != T:
        raise fail(op, f"{T} inputs but targets of shape {fmt(ys.shape)}",
                   "pass one target per step: targets of shape (T, ...)")
    single = not isinstance(init, (tuple, list))
    carry = [np.array(c.numpy() if isinstance(c, Tensor) else c, dtype=optimizer.dtype)
             for c in ([init] if single else init)]
    traced = []  # per trace: the carry tensors where the window splits (the next one starts)

    def window(has_a, has_b):
        """A compiled update over a window split in two scans at the next window's start."""

        def fn(*args):
            h = args[0] if single else tuple(args[: len(carry)])
            parts, outs = list(args[len(carry) : -1]), []
            mid = h
            for i, part in enumerate(parts):
                res = model(part, h)
                if not (isinstance(res, tuple) and len(res) == 2 and isinstance(res[0], Tensor)
                        and res[0].ndim >= 1 and res[0].shape[0] == part.shape[0]
                        and isinstance(res[1], (tuple, list)) != single):
                    raise fail(op, "the model must return (outputs (n, ...), carry) for n "
                               "input steps, the carry with init's structure", "wrap a step "
                               "function as lambda xs, h: fg.scan(step, h, xs, stack=True)")
                outs.append(res[0])
                h = res[1]
                if i == 0 and has_a:
                    mid = h
            y = args[-1]
            out = outs[-1] if outs[-1].shape[0] >= y.shape[0] else concatenate(outs)
            # the carry is read back from the program's values after each call: a copy of it
            # is a row of its own, which the fusion pass never drops (the carry itself could
            # be the inside of a fused chain, e.g. h @ W read only by a following + b)
            traced.append([m + 0.0 for m in ([mid] if single else mid)])
            return loss(out[out.shape[0] - y.shape[0] :], y)

        return _compile(fn, optimizer=optimizer, clip_grad_norm=clip_grad_norm,
                        clip_grad_value=clip_grad_value)

    steps, kept, losses = {}, {}, []
    start, done = 0, 0  # the window's first step (its carry is ``carry``); steps with a loss
    while done < T:
        end = min(done + k1, T)
        nxt = max(0, min(end + k1, T) - k2) if end < T else end  # where the next window starts
        layout = (nxt > start, end > nxt)
        if layout not in steps:
            steps[layout] = window(*layout)
        step = steps[layout]
        args = carry + [a for a, keep in ((xs[start:nxt], layout[0]), (xs[nxt:end], layout[1]))
                        if keep] + [ys[done:end]]
        losses.append(step(*args))
        prog = step.program(*args)[0]
        if prog not in kept:
            kept[prog] = traced.pop()
        if layout[0]:  # the carry entering step nxt, computed by this update's forward sweep
            carry = [prog.tape.node_values(t.node).copy() for t in kept[prog]]  # the program's copy
        start, done = nxt, end
    final = [tensor(c) for c in carry]
    return np.array(losses), final[0] if single else tuple(final)
