"""The gradient of a loss with respect to every carry of a loop, as log-norms, at any magnitude.

Over thousands of steps ||dL/dh_t|| leaves floating point's range: 0 below about 1e-308
(float64; 1e-38 in float32), inf above 1e308, and the sum of squares in a plain norm overflows
at 1e154. The backward sweep is linear in its seed, so it can run in segments: the last segment
from the loss's seed, each earlier one from the carry gradient the later one produced, scaled to
norm 1, while a float64 running log-scale keeps the factor. ``log ||dL/dh_t||`` is then exact to
rounding for every t, whatever the magnitude (1e-100000 and 1e+100000 alike).

>>> import numpy as np, fastgrad as fg
>>> W = fg.tensor(np.eye(2) * 0.5)
>>> logs = fg.carry_gradient_log_norms(lambda h, x: h @ W.T + x, fg.zeros(2),
...                                    np.zeros((3000, 2)), seed=np.array([1.0, 0.0]))
>>> round(float(logs[-1]), 6), round(float(logs[0] / np.log(0.5)), 6)   # 0.5 ** 2999: 1e-903
(0.0, 2999.0)
"""

from __future__ import annotations

import math

import numpy as np

from .compile import compile as compile_step
from ..core.errors import fail
from ..ops import fmt
from ..transforms.scan import scan
from ..frontend.modes import no_grad
from ..frontend.tensor import Tensor, concatenate, tensor

__all__ = ["carry_gradient_log_norms", "log_norm"]


def log_norm(x, axis=-1) -> np.ndarray:
    """Natural log of the 2-norm along ``axis``, without overflow or underflow of the squares
    (a scaled sum of squares, in float64): -inf for a zero vector, NaN if any entry is not finite.

    >>> float(log_norm(np.array([3e200, 4e200])) - np.log(5e200))
    0.0
    """
    x = np.asarray(x, np.float64)
    with np.errstate(all="ignore"):
        big = np.max(np.abs(x), axis=axis, keepdims=True)
        scale = np.where(big > 0, big, 1.0)
        ssq = np.sum(np.square(x / scale), axis=axis)
        out = np.log(np.squeeze(big, axis)) + 0.5 * np.log(np.where(ssq > 0, ssq, 1.0))
    finite = np.all(np.isfinite(x), axis=axis)
    return np.where(finite, out, np.nan)


def carry_gradient_log_norms(step, init, xs, seed, segment=4096, checkpoint=None,
                             length=None, compiled=None) -> np.ndarray:
    """``log ||dL/dh_t||`` for t = 0..T-1, where ``h_t`` is the carry after step t of
    ``fg.scan(step, init, xs)`` and ``L = <seed, h_{T-1}>`` (so entry T-1 is ``log ||seed||``).

    step:    ``(carry, x_t) -> carry`` as for ``fg.scan``, one tensor carry.
    init:    the first carry (an array or tensor); its dtype is the loop's.
    xs:      the (T, ...) inputs (an array or tensor; values only: no gradient flows to it), or a
             function ``xs(start, stop)`` giving the inputs of steps start..stop-1 (then pass
             ``length=T``): nothing of size T is kept but the result (e.g. a drive drawn per
             block of steps from a seed, the same whichever blocks are asked for).
    seed:    dL/dh_{T-1}, an array of the carry's shape.
    segment: steps per backward segment: the seed of each segment has norm 1, so within it the
             gradient may grow or shrink by up to about 1e300 (float64; 1e37 in float32) before
             the segment is split in two and run again, down to single steps.
    checkpoint: each segment's ``fg.scan`` checkpointing (None: "sqrt", which keeps a
             segment's memory small); the result does not depend on it.
    compiled: run each segment as a compiled step (traced once per segment length: faster
             per step, but a first call compiles the training-step kernel) or record it
             eagerly; None: compiled from 64 segments on.

    Returns a float64 array (T,): -inf where the gradient is exactly zero, NaN where a step's
    values or gradients are not finite (e.g. a forward sweep that overflowed). Costs two
    forward sweeps and one backward sweep; memory is one segment plus a carry per segment.
    ``fg.study.rnn_gradient_norms`` reports these.
    """
    h0 = init.numpy() if isinstance(init, Tensor) else np.asarray(init)
    if not callable(step):
        raise fail("carry_gradient_log_norms", f"step must be a function (carry, x_t) -> carry, "
                   f"got {type(step).__name__}", "pass the step you give fg.scan")
    if h0.dtype not in (np.float32, np.float64):
        raise fail("carry_gradient_log_norms", f"init must hold float32 or float64, got {h0.dtype}",
                   "cast init to a float dtype")
    dtype = h0.dtype
    if callable(xs):
        if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 1:
            raise fail("carry_gradient_log_norms", f"with xs a function, length must be the "
                       f"number of steps T >= 1, got {length!r}", "pass length=T")
        T = int(length)

        def inputs(a, b):
            got = np.asarray(xs(a, b), dtype)
            if got.ndim < 1 or got.shape[0] != b - a:
                raise fail("carry_gradient_log_norms", f"xs({a}, {b}) gave shape "
                           f"{fmt(got.shape)}, not {b - a} steps", "return inputs[start:stop]")
            return got
    else:
        x = (xs.numpy() if isinstance(xs, Tensor) else np.asarray(xs)).astype(dtype, copy=False)
        if x.ndim < 1 or x.shape[0] < 1:
            raise fail("carry_gradient_log_norms", f"xs must have a time axis of T >= 1 steps, "
                       f"got shape {fmt(x.shape)}", "pass xs of shape (T, ...)")
        T = x.shape[0]

        def inputs(a, b):
            return x[a:b]
    g = np.asarray(seed, np.float64)
    if g.shape != h0.shape:
        raise fail("carry_gradient_log_norms", f"seed has shape {fmt(g.shape)}, the carry "
                   f"{fmt(h0.shape)}", "pass dL/dh_{T-1}, an array of the carry's shape")
    if isinstance(segment, bool) or not isinstance(segment, (int, np.integer)) or segment < 1:
        raise fail("carry_gradient_log_norms", f"segment must be an int >= 1, got {segment!r}",
                   "pass e.g. segment=4096")
    segment = int(segment)
    checkpoint = "sqrt" if checkpoint is None else checkpoint
    if compiled is not None and not isinstance(compiled, (bool, np.bool_)):
        raise fail("carry_gradient_log_norms", f"compiled must be True, False or None, got "
                   f"{compiled!r}", "pass compiled=True to compile each segment")
    x_shape = inputs(0, 1).shape[1:]
    nx, nh = int(np.prod(x_shape)), h0.size
    # Each segment runs the step with a zero probe e_t added to its incoming carry: the probe's
    # gradients are dL/dh_{t-1}. The forward sweeps run the same body (one scan strategy's
    # kernels serve both), without gradients. Eager, a segment is recorded anew each time;
    # compiled (long loops), each segment length is traced once and replayed, which pays for
    # compiling the training-step kernel.
    def probed(hc, xe):
        return step(hc + xe[nx:].reshape(h0.shape), xe[:nx].reshape(x_shape))

    def with_probe(a, b):
        xe = np.zeros((b - a, nx + nh), dtype)
        xe[:, :nx] = inputs(a, b).reshape(b - a, nx)
        return xe

    if compiled is None:
        compiled = T >= 64 * segment
    if compiled:
        end = tensor(np.zeros(h0.shape, dtype), requires_grad=True)
        ends = compile_step(lambda xe, h_in: (scan(probed, h_in, xe, checkpoint=checkpoint)
                                              * end).sum(), params=[end])
        sweeps = {}

    def carry_after(a, b, h_in):
        """h_{b-1}, from h_in entering step a (compiled: the gradient of <h_{b-1}, end>
        with respect to the zero parameter ``end``)."""
        with np.errstate(all="ignore"):
            if compiled:
                return ends(with_probe(a, b), h_in)[1][0].copy()
            with no_grad():
                return scan(probed, tensor(h_in), tensor(with_probe(a, b)),
                            checkpoint=checkpoint).numpy().copy()

    def backward(a, b, h_in, unit):
        """(dL/dh_{t-1} for t = a..b-1, as (b - a, nh) float64) for L = <unit, h_{b-1}>."""
        n = b - a
        with np.errstate(all="ignore"):
            if compiled:
                if n not in sweeps:
                    probe = tensor(np.zeros((n, nh), dtype), requires_grad=True)

                    def loss(xs, h_in, unit):
                        xe = concatenate([xs.reshape(n, nx), probe], axis=1)
                        return (scan(probed, h_in, xe, checkpoint=checkpoint) * unit).sum()
                    sweeps[n] = compile_step(loss, params=[probe])
                xs = inputs(a, b)
                return sweeps[n](xs, h_in, unit.astype(dtype))[1][0].astype(np.float64)
            probe = tensor(with_probe(a, b), requires_grad=True)
            scan(probed, tensor(h_in), probe, checkpoint=checkpoint).backward(unit.astype(dtype))
            return probe.grad[:, nx:].astype(np.float64)

    # the forward sweep, keeping the carry entering each segment only
    starts = list(range(0, T, segment))
    carries = [h0.copy()]
    for a in starts[:-1]:
        carries.append(carry_after(a, a + segment, carries[-1]))

    # log(largest) in float64 / float32, less a margin for the sum and the next step's growth
    limit = 0.9 * math.log(np.finfo(dtype).max)
    tiny = 0.9 * math.log(np.finfo(dtype).tiny)
    logs = np.empty(T)
    scale = float(log_norm(g.reshape(-1)))
    logs[T - 1] = scale
    unit = g / math.exp(scale) if np.isfinite(scale) else g
    stack = [(starts[i], min(starts[i] + segment, T), carries[i]) for i in range(len(starts))]
    while stack:
        a, b, h_in = stack.pop()
        if not np.isfinite(scale):  # a zero (or non-finite) gradient stays so further back
            logs[: b - 1] = scale if scale == -np.inf else np.nan
            break
        grads = backward(a, b, h_in, unit)
        per = log_norm(grads)
        live = per[np.isfinite(per)]
        # split and run again where the gradient left the safe band inside the segment: grew
        # near overflow (or past it: NaN), shrank near underflow, or reached zero from a
        # nonzero value (possibly by underflow); a single step is what it is
        left_band = live.size and (live.max() > limit or live.min() < tiny)
        if b - a > 1 and (left_band or np.isnan(per).any()
                          or (np.isneginf(per).any() and np.isfinite(per[-1]))):
            mid = (a + b) // 2
            stack += [(a, mid, h_in), (mid, b, carry_after(a, mid, h_in))]
            continue
        if a > 0:
            logs[a - 1 : b - 1] = per + scale
        else:
            logs[: b - 1] = per[1:] + scale
        first = per[0]
        if not np.isfinite(first):
            scale = first if first == -np.inf else np.nan
            continue
        unit = grads[0].reshape(h0.shape) / math.exp(first)
        scale += first
    return logs
