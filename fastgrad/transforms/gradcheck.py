"""Central finite differences in float64: the public gradient checker."""

from __future__ import annotations

import math

import numpy as np

from ..core.errors import FastgradError, fail
from ..ops import real
from ..frontend.tensor import Tensor, real_array, tensor

__all__ = ["GradcheckError", "gradcheck", "numerical_grad"]


class GradcheckError(FastgradError, AssertionError):
    """Analytic and numerical gradients disagree past the tolerance."""


def numerical_grad(fn, arrays, i, eps=1e-6):
    """d fn(*arrays).sum()... of a scalar fn w.r.t. arrays[i] by central differences."""
    x = arrays[i]
    g = np.zeros_like(x, dtype=np.float64)
    flat = x.reshape(-1)
    gflat = g.reshape(-1)
    for j in range(flat.size):
        old = flat[j]
        flat[j] = old + eps
        up = float(np.sum(_value(fn, arrays)))
        flat[j] = old - eps
        down = float(np.sum(_value(fn, arrays)))
        flat[j] = old
        gflat[j] = (up - down) / (2 * eps)
    return g


def _value(fn, arrays):
    out = fn(*[tensor(a) for a in arrays])
    return out.numpy() if isinstance(out, Tensor) else np.asarray(out)


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4, seed_grad=None):
    """Compare reverse-mode gradients of ``fn`` with central differences, in float64.

    ``fn`` maps tensors to a tensor; a non-scalar output is reduced with the weights
    ``seed_grad`` (random, fixed, by default) so every output element is checked.
    Returns the worst error relative to ``atol + rtol*|numerical|`` (<= 1 passes); raises
    ``GradcheckError`` naming the input and position past tolerance.

    >>> import fastgrad as fg
    >>> fg.gradcheck(lambda x, y, z: (x + y) * z, [2.0, -3.0, 4.0]) <= 1.0
    True
    """
    if not callable(fn):
        raise fail("gradcheck", f"fn must be a function of tensors, got {type(fn).__name__}",
                   "pass e.g. lambda x: (x * x).sum()")
    if not isinstance(inputs, (list, tuple)) or not inputs:
        raise fail("gradcheck", f"inputs must be a non-empty list of arrays, got {inputs!r}",
                   "pass one array (or number) per argument of fn, in a list")
    for name, value in (("eps", eps), ("atol", atol), ("rtol", rtol)):
        value = real("gradcheck", name, value)
        if not (math.isfinite(value) and (value > 0 if name == "eps" else value >= 0)):
            raise fail("gradcheck", f"{name} must be a finite number "
                       f"{'> 0' if name == 'eps' else '>= 0'}, got {value}",
                       "keep the default, or pass e.g. eps=1e-6")
    arrays = [real_array("gradcheck", f"input {i}", a).astype(np.float64)
              for i, a in enumerate(inputs)]
    ts = [tensor(a, requires_grad=True) for a in arrays]
    out = fn(*ts)
    if not isinstance(out, Tensor):
        raise fail("gradcheck", f"fn returned {type(out).__name__}, not a tensor",
                   "return a tensor computed from the inputs")
    if seed_grad is None:
        seed_grad = np.random.default_rng(0).uniform(0.5, 1.5, out.shape)
    seed_grad = real_array("gradcheck", "seed_grad", seed_grad).astype(np.float64)
    out.backward(seed_grad)

    def weighted(*xs):
        return fn(*xs) * tensor(seed_grad)

    worst = 0.0
    for i, t in enumerate(ts):
        num = numerical_grad(weighted, arrays, i, eps)
        ana = t.grad if t.grad is not None else np.zeros_like(num)
        err = np.abs(ana - num) / (atol + rtol * np.abs(num))
        if err.size and err.max() > 1.0:
            j = np.unravel_index(int(np.argmax(err)), err.shape)
            raise GradcheckError(
                f"gradcheck: input {i} (shape {arrays[i].shape}) at {j}: analytic "
                f"{ana[j]:.8g} vs numerical {num[j]:.8g}. Fix: check the op's gradient (its "
                "VJP), or pass a larger atol/rtol where the function is ill-conditioned")
        worst = max(worst, float(err.max()) if err.size else 0.0)
    return worst
