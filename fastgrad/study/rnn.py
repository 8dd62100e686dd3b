"""``rnn_gradient_norms``: log ||dL/dh_t|| of every step of a long unroll, compared with
log(spectral radius) and the top Lyapunov exponent (Pascanu, Mikolov & Bengio 2013)."""

from __future__ import annotations

import io
import math
import pathlib
import time
import warnings

import numpy as np

from ..frontend import functional as F
from ..core.errors import fail
from ..frontend.tensor import tensor
from ..training.carry_norms import carry_gradient_log_norms
from .results import (
    StudyResult, as_list, pyplot_figure, save_figure, seeds_of, thin_points, write_file,
)
from .spectral import largest_singular_value, log_growth_rate, lyapunov_exponents, recurrent_matrix

__all__ = ["RNNGradientNorms", "rnn_gradient_norms"]


class RNNGradientNorms(StudyResult):
    """Per run (radius, seed): growth rate of log||dL/dh_t|| per step back through time,
    log(radius), the top Lyapunov exponent, ||W_hh||_2, and the time index t at which the
    gradient first vanished (< 1/threshold) or exploded (> threshold or non-finite), looking
    back from the loss. ``log_norms[(radius, seed)]`` holds log ||dL/dh_t|| (natural log) for
    every t, exact at any magnitude; ``norms[(radius, seed)]`` the same as plain float64 norms,
    0 or inf where float64 cannot hold them (counted in the row's ``unrepresentable``)."""

    name = "rnn_gradient_norms"

    def __init__(self, rows, norms, params=None, seconds=None, loss_vectors=None,
                 log_norms=None):
        super().__init__(rows, params, seconds)
        self.norms = dict(norms)
        self.loss_vectors = dict(loss_vectors or {})  # c of L = c . h_{T-1}, per run
        self.log_norms = dict(log_norms) if log_norms is not None else _logs_of(self.norms)

    @classmethod
    def combine(cls, results):
        """One result from several (e.g. the cells of a sweep), runs in the given order."""
        results = list(results)
        rows = [r for res in results for r in res.rows]
        norms = {k: v for res in results for k, v in res.norms.items()}
        params = dict(results[0].params) if results else {}
        for key in ("spectral_radius", "seeds"):
            vals = []
            for res in results:
                vals += [v for v in res.params.get(key, []) if v not in vals]
            params[key] = vals
        secs = [res.seconds for res in results if res.seconds is not None]
        cs = {k: v for res in results for k, v in res.loss_vectors.items()}
        logs = {k: v for res in results
                for k, v in (getattr(res, "log_norms", None) or _logs_of(res.norms)).items()}
        return cls(rows, norms, params, sum(secs) if secs else None, cs, logs)

    def save(self, folder, stem=None, plot=True):
        """The table and plot (StudyResult.save), then ``<stem>_norms.npz`` and
        ``<stem>_log_norms.npz``: one (T,) array per run, named ``radius=<r>_seed=<s>``."""
        paths = super().save(folder, stem, plot)
        stem = stem or self.name
        for suffix, runs in (("norms", self.norms), ("log_norms", self.log_norms)):
            buf = io.BytesIO()
            np.savez_compressed(buf, **{f"radius={r:g}_seed={s}": v for (r, s), v in runs.items()})
            path = pathlib.Path(folder) / f"{stem}_{suffix}.npz"
            write_file(path, buf.getvalue())
            paths.append(path)
        return paths

    def plot(self, path):
        """log10 ||dL/dh_t|| against steps back from the loss, one colour per radius (any
        magnitude: the values are logs); dashed: radius^steps, the linearised prediction;
        dotted: e^(lyapunov * steps) from each radius's first seed, where it was measured."""
        fig, (ax,) = pyplot_figure(width=7.5, height=4.8)
        runs = {k: v / math.log(10) for k, v in self.log_norms.items()}
        radii = sorted({r for r, _ in runs})
        colors = _colors(len(radii))
        for (r, s), v in sorted(runs.items()):
            c = colors[radii.index(r)]
            back = np.arange(v.size)
            g = v[::-1]  # index = steps back
            idx = thin_points(v.size)
            idx = idx[np.isfinite(g[idx])]
            first = s == min(s2 for r2, s2 in runs if r2 == r)
            ax.plot(back[idx] + 1, g[idx], color=c, lw=1.2 if first else 0.5,
                    alpha=1.0 if first else 0.5, label=f"radius {r:g}" if first else None)
        T = max(v.size for v in runs.values()) if runs else 1
        finite = [v[np.isfinite(v)] for v in runs.values()]
        lo = min((f.min() for f in finite if f.size), default=-10.0)
        hi = max((f.max() for f in finite if f.size), default=1.0)
        pad = max(1.0, 0.05 * (hi - lo))
        ks = np.linspace(1, T, 400)
        lyapunov = {}
        for row in self.rows:  # each radius's first seed
            if row.get("lyapunov") is not None:
                lyapunov.setdefault(row["radius"], row["lyapunov"])
        for r in radii:
            for rate, style in ((math.log(r), "--"), (lyapunov.get(r), ":")):
                if rate is None:
                    continue
                logs = (ks - 1) * rate / math.log(10)
                keep = (logs > lo - pad) & (logs < hi + pad)
                ax.plot(ks[keep], logs[keep], color=colors[radii.index(r)], ls=style, lw=0.8)
        ax.set_ylim(lo - pad, hi + pad)  # exponential growth or decay: straight lines
        ax.set_xlabel("steps back from the loss (T - t)")
        ax.set_ylabel("log10 ||dL/dh_t||")
        p = self.params
        ax.set_title(f"{p.get('nonlinearity')} RNN, hidden {p.get('hidden')}, T={p.get('T')} "
                     f"({p.get('weights')} W_hh; dashed: radius^steps, dotted: Lyapunov)",
                     fontsize=9)
        ax.legend(fontsize=8)
        return save_figure(fig, path)


def _colors(n):
    try:
        from matplotlib import colormaps

        cmap = colormaps["viridis"]
    except ImportError:
        return [None] * n
    return [cmap(i / max(n - 1, 1) * 0.9) for i in range(n)]


class _Drive:
    """The study's input drive d_t ~ N(0, std^2) of shape (1, hidden), drawn per block of
    ``block`` steps from its own stream (seeded by the run's seed and the block's number), so
    ``drive(a, b)`` gives the same d_a..d_{b-1} however the steps are asked for and nothing of
    size T is ever held (memory is one block)."""

    def __init__(self, seed, std, hidden, block=1024):
        self.seed, self.std, self.hidden, self.block = seed, std, hidden, block
        self._last = (None, None)

    def _block(self, j):
        if self._last[0] != j:
            rng = np.random.default_rng([self.seed, 2, j])
            self._last = (j, self.std * rng.standard_normal((self.block, 1, self.hidden)))
        return self._last[1]

    def __call__(self, a, b):
        out = np.empty((b - a, 1, self.hidden))
        t = a
        while t < b:
            j, lo = divmod(t, self.block)
            n = min(self.block - lo, b - t)
            out[t - a : t - a + n] = self._block(j)[lo : lo + n]
            t += n
        return out


def _logs_of(norms):
    """log ||dL/dh_t|| from plain norms (results saved before log_norms existed)."""
    with np.errstate(all="ignore"):
        return {k: np.log(np.asarray(v, np.float64)) for k, v in norms.items()}


def _rnn_step(W, nonlinearity):
    """The map h_t = act(h_{t-1} W^T + d_t) as a step of fg.scan (and of forward mode)."""

    if nonlinearity not in F.ACTIVATIONS:
        raise fail("rnn_gradient_norms", f"unknown nonlinearity {nonlinearity!r}",
                   f"use one of {sorted(F.ACTIVATIONS)}")
    act = F.ACTIVATIONS[nonlinearity]
    Wt = tensor(W)

    def step(h, d):
        return act(F.linear(h, Wt) + d)

    return step


def rnn_gradient_norms(hidden=64, T=1000, spectral_radius=(0.8, 0.9, 1.0, 1.1, 1.2), seeds=1,
                       nonlinearity="tanh", checkpoint=None, weights="gaussian", input_std=0.1,
                       threshold=1e6, lyapunov_steps=2000, seed=None):
    """||dL/dh_t|| for every t of a T-step unroll, per spectral radius of W_hh and seed.

    The RNN is h_t = act(h_{t-1} W^T + d_t) with h_0 = 0, W (hidden, hidden) drawn by
    ``recurrent_matrix(hidden, radius, weights, seed)`` and an input drive d_t ~ N(0,
    input_std^2), drawn per block of 1024 steps from the seed (nothing of size T is held but
    the results: 16 bytes per step); the loss is L = c . h_{T-1} for a random unit vector c.
    The backward sweep runs in segments with a renormalised seed
    (``fg.carry_gradient_log_norms``), so
    log ||dL/dh_t|| is exact to rounding for every t at any magnitude (``checkpoint``: None,
    "sqrt" or k, as ``fg.scan``, per segment: the results do not depend on it).

    spectral_radius: a number or a list.  seeds: a count (range(seeds)) or a list of seeds;
    ``seed=`` runs that one seed (handy in a sweep grid).  nonlinearity: "tanh", "linear",
    "relu", "sigmoid", ...  lyapunov_steps: steps of the trajectory for the top Lyapunov
    exponent (0: skip).

    Returns an :class:`RNNGradientNorms`: one row per run (radius, seed) with
    growth_rate (fit of log||dL/dh_t|| per step back, over every t), log_radius, lyapunov,
    norm_W (||W||_2), vanished_at_t / exploded_at_t (largest t whose norm is < 1/threshold,
    > threshold or not finite: the first crossing seen by the backward sweep), unrepresentable
    (how many norms float64 cannot hold: 0 or inf in ``norms``) and nonfinite (how many
    log-norms are NaN: the forward sweep overflowed; a warning says so), with
    ``log_norms[(radius, seed)]`` and ``norms[(radius, seed)]`` (T,).

    >>> r = rnn_gradient_norms(hidden=4, T=400, spectral_radius=0.5, nonlinearity="linear",
    ...                        weights="symmetric", lyapunov_steps=200)
    >>> row = r.rows[0]
    >>> round(row["growth_rate"], 2), round(row["log_radius"], 2), round(row["lyapunov"], 2)
    (-0.69, -0.69, -0.69)
    >>> r.norms[(0.5, 0)].shape
    (400,)
    """

    t0 = time.perf_counter()
    radii = [float(r) for r in as_list(spectral_radius)]
    seed_list = seeds_of(seeds, seed)
    rows, norms, loss_vectors, log_norms = [], {}, {}, {}
    for radius in radii:
        for s in seed_list:
            rng = np.random.default_rng([s, 1])
            W = recurrent_matrix(hidden, radius, weights, seed=s)
            step = _rnn_step(W, nonlinearity)
            drive = _Drive(s, input_std, hidden)
            c = rng.standard_normal((1, hidden))
            c /= np.linalg.norm(c)
            logs = carry_gradient_log_norms(step, np.zeros((1, hidden)), drive, c,
                                            checkpoint=checkpoint, length=T,
                                            segment=4 * drive.block)
            with np.errstate(all="ignore"):
                g = np.exp(logs)  # 0 or inf where float64 cannot hold the norm
            log_norms[(radius, s)], norms[(radius, s)] = logs, g
            loss_vectors[(radius, s)] = c[0]
            lyap = None
            if lyapunov_steps:
                n_l = min(int(lyapunov_steps), T)
                with np.errstate(all="ignore"):
                    lyap = float(lyapunov_exponents(step, np.zeros((1, hidden)), drive(0, n_l),
                                                    k=1, seed=s,
                                                    transient=min(100, n_l // 5))[0])
            nan = np.isnan(logs)
            if nan.any():
                warnings.warn(f"rnn_gradient_norms: {int(nan.sum())} of {T} log-norms at radius "
                              f"{radius:g}, seed {s} are NaN: the forward sweep left float64's "
                              "range (use a bounded nonlinearity or a smaller radius)",
                              RuntimeWarning, stacklevel=2)
            rows.append({
                "radius": radius, "seed": s, "growth_rate": log_growth_rate(logs),
                "log_radius": math.log(radius), "lyapunov": lyap,
                "norm_W": largest_singular_value(W),
                "vanished_at_t": _last(logs < -math.log(threshold)),
                "exploded_at_t": _last(nan | (logs > math.log(threshold))),
                "unrepresentable": int(np.sum(np.isfinite(logs) & ((g == 0) | ~np.isfinite(g)))),
                "nonfinite": int(nan.sum()),
            })
    params = {"hidden": hidden, "T": T, "spectral_radius": radii, "seeds": seed_list,
              "nonlinearity": nonlinearity, "weights": weights, "checkpoint": checkpoint,
              "input_std": input_std, "threshold": threshold, "lyapunov_steps": lyapunov_steps}
    return RNNGradientNorms(rows, norms, params, time.perf_counter() - t0, loss_vectors,
                            log_norms)


def _last(mask):
    idx = np.flatnonzero(mask)
    return int(idx[-1]) if idx.size else None
