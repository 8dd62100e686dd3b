"""Spectral tools of the RNN studies: spectral radius and largest singular value, recurrent
matrices scaled to a radius, growth rates, and forward mode through a recorded step
(Lyapunov exponents, Benettin et al. 1980; norms of Jacobian products)."""

from __future__ import annotations

import math

import numpy as np

from ..core.errors import fail
from ..frontend.tensor import Tensor
from ..transforms.jvp import Linearized

__all__ = ["WEIGHTS", "growth_rate", "jacobian_product_norms", "largest_singular_value",
           "log_growth_rate", "lyapunov_exponents", "recurrent_matrix", "set_spectral_radius",
           "spectral_radius"]


def spectral_radius(W) -> float:
    """Largest |eigenvalue| of a square matrix (the linearised map's asymptotic growth per step).

    >>> spectral_radius(np.array([[0.0, 2.0], [-0.5, 0.0]]))
    1.0
    """
    return float(np.abs(np.linalg.eigvals(_array(W))).max())


def largest_singular_value(W) -> float:
    """||W||_2: the most one step can stretch a vector (>= the spectral radius).

    >>> largest_singular_value(np.array([[0.0, 2.0], [-0.5, 0.0]]))
    2.0
    """
    return float(np.linalg.norm(_array(W), 2))


def set_spectral_radius(W, radius):
    """Scale W so its spectral radius is ``radius``. A tensor (e.g. ``rnn.weight_hh_l0``) is
    scaled in place and returned; an array is returned scaled (a copy).

    >>> W = set_spectral_radius(np.array([[0.0, 2.0], [-0.5, 0.0]]), 0.9)
    >>> round(spectral_radius(W), 12)
    0.9
    """

    a = _array(W)
    scaled = a * (float(radius) / spectral_radius(a))
    if isinstance(W, Tensor):
        if W._tape is not None:
            raise fail("set_spectral_radius", "W is a recorded tensor",
                       "pass a parameter (leaf tensor) or an array")
        W.numpy()[...] = scaled
        return W
    return scaled


def _array(W):
    a = np.asarray(W.numpy() if hasattr(W, "numpy") else W, np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise fail("spectrum", f"needs a square matrix, got shape {a.shape}", "pass W_hh (H, H)")
    return a


WEIGHTS = ("gaussian", "symmetric", "orthogonal")


def recurrent_matrix(hidden, radius, kind="gaussian", seed=0):
    """A random W_hh (hidden, hidden) with spectral radius ``radius``.

    kind: "gaussian" (i.i.d. normal, non-normal: transients), "symmetric" (normal matrix: its
    powers grow exactly as radius^t along the top eigenvector) or "orthogonal" (every
    |eigenvalue| equals radius).

    >>> W = recurrent_matrix(8, 1.1, "symmetric", seed=0)
    >>> W.shape, round(spectral_radius(W), 12), bool(np.allclose(W, W.T))
    ((8, 8), 1.1, True)
    """
    rng = np.random.default_rng(seed)
    if kind == "gaussian":
        W = rng.standard_normal((hidden, hidden)) / math.sqrt(hidden)
    elif kind == "symmetric":
        A = rng.standard_normal((hidden, hidden))
        W = (A + A.T) / math.sqrt(2 * hidden)
    elif kind == "orthogonal":
        q, r = np.linalg.qr(rng.standard_normal((hidden, hidden)))
        W = q * np.sign(np.diag(r))
    else:
        raise fail("recurrent_matrix", f"unknown kind {kind!r}", f"use one of {WEIGHTS}")
    return set_spectral_radius(W, radius)


# ============================================================================ forward mode
def _step_linearization(step, h0, x0):
    if x0 is None:
        return Linearized(lambda h: step(h, None), (h0,))
    return Linearized(step, (h0, x0))


def lyapunov_exponents(step, h0, xs=None, k=1, length=None, qr_every=1, transient=0, seed=0):
    """Top-k Lyapunov exponents of the map h_t = step(h_{t-1}, x_t), by Benettin's method.

    k tangent directions are carried through the recorded step by forward mode (one
    ``fg.jvp`` replay per step, all k at once) and re-orthonormalised by QR every ``qr_every``
    steps; the exponents are the mean log growth of the QR diagonal per step (natural log),
    sorted from largest.

    step:   (h, x_t) -> h, fastgrad ops; h of any shape S (size n), x_t = xs[t] or None.
    h0:     array of shape S.  xs: (T, ...) array or None (then give ``length``).
    k:      number of exponents (<= n).  transient: steps run before averaging starts.

    Returns an array (k,).

    The average starts after ``transient`` steps, once the directions have aligned with the
    most expanding ones: the error then falls as 1/(T - transient) or faster.

    >>> d = np.array([0.5, 2.0, -1.5])               # a diagonal linear map
    >>> lyapunov_exponents(lambda h, x: h * d, np.ones(3), k=3, length=300, transient=100)
    array([ 0.69314718,  0.40546511, -0.69314718])
    >>> np.log([2.0, 1.5, 0.5])
    array([ 0.69314718,  0.40546511, -0.69314718])
    """
    h = np.array(h0, np.float64)
    n = h.size
    T = len(xs) if xs is not None else length
    if T is None or T <= transient:
        raise fail("lyapunov_exponents", f"needs more than transient={transient} steps, got "
                   f"{T}", "pass xs of shape (T, ...) or length=T")
    if not 1 <= k <= n:
        raise fail("lyapunov_exponents", f"k={k} for a state of size {n}", f"use 1 <= k <= {n}")
    lin = _step_linearization(step, h, None if xs is None else np.asarray(xs[0], np.float64))
    Q = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, k)))[0].T  # (k, n)
    logs, counted, last = np.zeros(k), 0, -1  # last: the step of the previous QR
    for t in range(T):
        prim = (h,) if xs is None else (h, np.asarray(xs[t], np.float64))
        tans = (Q.reshape((k,) + h.shape),) + ((None,) if xs is not None else ())
        h, dQ = lin(prim, tans)
        Q = dQ.reshape(k, n)
        if (t + 1) % qr_every == 0 or t == T - 1 or t == transient - 1:
            if k == 1:  # QR of one column: its norm
                r = np.linalg.norm(Q)
                Q = Q / r
                grow = np.log([r])
            else:
                q, r = np.linalg.qr(Q.T)
                Q = q.T
                grow = np.log(np.abs(np.diag(r)))
            if t >= transient:  # a block of steps last+1..t, all after the transient
                logs += grow
                counted += t - last
            last = t
    return np.sort(logs / max(counted, 1))[::-1]


def jacobian_product_norms(step, h0, xs, window):
    """||prod_{s=t}^{t+window-1} dh_{s+1}/dh_s||_2 for consecutive windows along a trajectory.

    The whole Jacobian of the window (n x n) is carried by forward mode from the identity
    (n tangent directions), so ``window * (T // window)`` steps are replayed once.

    step: (h, x_t) -> h;  h0: (n,) or any shape of size n;  xs: (T, ...).
    Returns an array (T // window,) of spectral norms.

    >>> W = np.array([[0.0, 2.0], [-0.5, 0.0]])        # W^2 = -I: norms 2, 1, 2, 1 ...
    >>> jacobian_product_norms(lambda h, x: h @ W, np.ones(2), np.zeros((6, 1)), 1)
    array([2., 2., 2., 2., 2., 2.])
    >>> jacobian_product_norms(lambda h, x: h @ W, np.ones(2), np.zeros((6, 1)), 2)
    array([1., 1., 1.])
    """
    h = np.array(h0, np.float64)
    n = h.size
    lin = _step_linearization(step, h, np.asarray(xs[0], np.float64))
    eye = np.eye(n).reshape((n,) + h.shape)
    norms = []
    for w in range(len(xs) // window):
        J = eye
        for s in range(w * window, (w + 1) * window):
            h, J = lin((h, np.asarray(xs[s], np.float64)), (J, None))
        norms.append(np.linalg.norm(J.reshape(n, n), 2))
    return np.array(norms)


def growth_rate(norms, floor=1e-290, ceil=1e290):
    """Least-squares slope of log(norm) against steps back from the loss, per step.

    norms[t] = ||dL/dh_t|| for t = 0..T-1 with the loss at t = T-1; only finite norms inside
    [floor, ceil] are fitted (an underflowed or overflowed tail says nothing about the rate).

    >>> round(growth_rate(0.5 ** np.arange(10)[::-1]), 9)      # halves with every step back
    -0.693147181
    """
    norms = np.asarray(norms, np.float64)
    ok = np.isfinite(norms) & (norms > floor) & (norms < ceil)
    with np.errstate(all="ignore"):
        return log_growth_rate(np.where(ok, np.log(np.where(ok, norms, 1.0)), np.nan))


def log_growth_rate(log_norms):
    """Least-squares slope of ``log_norms[t] = log ||dL/dh_t||`` (t = 0..T-1, the loss at
    t = T-1) against steps back from the loss, per step, over every finite entry: the rate
    ``growth_rate`` measures, at any magnitude.

    >>> round(log_growth_rate(np.arange(10.0) * 2.0), 9)   # e^-2 with every step back
    -2.0
    """
    logs = np.asarray(log_norms, np.float64)
    ok = np.isfinite(logs)
    if ok.sum() < 2:
        return float("nan")
    # the least-squares slope in closed form: np.polyfit would build a (T, 2) design matrix
    # and copies of it, several times the log-norms' own memory
    back = (logs.size - 1 - np.flatnonzero(ok)).astype(np.float64)  # steps back from the loss
    y = logs[ok]
    back -= back.mean()
    return float(np.dot(back, y - y.mean()) / np.dot(back, back))
