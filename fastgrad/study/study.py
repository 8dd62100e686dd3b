"""Gradient studies: the lecture's unintuitive effects as one-line experiments, and sweeps of them.

Each study returns a result whose ``table()`` prints plainly (``to_csv`` / ``to_json`` save it)
and whose ``plot(path)`` draws it with matplotlib (the optional ``plot`` extra). ``sweep`` runs
any study over a grid through a ``concurrent.futures.Executor``: a local process pool, or a Dask
cluster. Methods and references: docs/studies.md.

- ``rnn_gradient_norms``: per-timestep ||dL/dh_t|| of a long unroll, read off the ONE backward
  sweep: a zero "probe" e_t is added to every carry (h_t = f(h_{t-1}, x_t) + e_t, fed as scan
  inputs), so dL/de_t = dL/dh_t for every t, under checkpointing too. Compared with
  log(spectral radius) and with the top Lyapunov exponent (Pascanu, Mikolov & Bengio 2013).
- ``lyapunov_exponents`` (Benettin et al. 1980) and ``jacobian_product_norms``: forward mode
  (``fg.jvp``) through the recorded step, k tangent directions at once, re-orthonormalised by QR.
- ``gradient_clipping``, ``saturation``, ``dead_relus``, ``data_scale``: training-time effects.

Every study is seeded and deterministic: the same call gives the same table on any executor.
Wall times are kept out of the tables (``result.seconds``).
"""

from __future__ import annotations

import concurrent.futures as cf
import csv
import hashlib
import io
import json
import logging
import math
import os
import pathlib
import sys
import time
import warnings
import zipfile

import numpy as np

from ..frontend import functional as F
from ..core.errors import FastgradError, fail
from ..io.files import atomic_write
from ..transforms.jvp import Linearized
from ..core.memory import guard_memory

__all__ = ["CELL_FORMAT", "CELL_VERSION", "CellFileError", "ClippingResult", "DataScaleResult",
           "DeadReLUResult", "RNNGradientNorms", "SCENARIOS", "SaturationResult", "StudyResult",
           "SweepResult", "Table", "WEIGHTS", "add_parser", "adding_problem", "data_scale",
           "dead_relu_fraction", "dead_relus", "decode_cell_value", "encode_cell_value",
           "format_table", "gradient_clipping", "grid_cells", "growth_rate",
           "jacobian_product_norms", "largest_singular_value", "layer_gradient_stats",
           "local_gradient", "log_growth_rate", "lyapunov_exponents", "parse_range",
           "read_cell_file", "recurrent_matrix", "rnn_gradient_norms", "saturation",
           "set_spectral_radius", "spectral_radius", "sweep", "write_cell_file"]

log = logging.getLogger("fastgrad")


# ============================================================================ results
class Table(str):
    """Plain text of a table; prints as itself in a REPL (no quotes, no escapes)."""

    def __repr__(self):
        return str(self)


def _fmt(v):
    if v is None:
        return "-"
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if not math.isfinite(v):
            return str(v)
        if v == 0:
            return "0"
        a = abs(v)
        return f"{v:.4g}" if 1e-3 <= a < 1e5 else f"{v:.3e}"
    return str(v)


def format_table(rows, columns=None, title=None) -> Table:
    """Rows (dicts) as an aligned plain-text table.

    >>> print(format_table([{"a": 1, "b": 0.5}, {"a": 10, "b": None}]))
    a   b
    --  ---
    1   0.5
    10  -
    """
    columns = columns or _columns(rows)
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[j]) for row in cells]) for j, c in enumerate(columns)]
    lines = [title] if title else []
    lines.append("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip())
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    return Table("\n".join(lines))


def _columns(rows):
    cols = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    return cols


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, range)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return _jsonable(v.tolist())
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        v = float(v)
        return v if math.isfinite(v) else str(v)  # JSON has no inf/nan
    if isinstance(v, (np.bool_,)):
        return bool(v)
    return v


def _atomic_write(path, data: bytes):
    """Write ``data`` to ``path`` atomically (``fastgrad.io.files.atomic_write``: a crash leaves the
    old file or the new one, and a killed writer's temporary file is removed by the next)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(str(path), lambda f: f.write(data))


class StudyResult:
    """Rows of one study (``rows``: list of dicts) with its parameters, printing and saving.

    Subclasses add the data behind their plot (curves per run) and ``plot(path)``.
    """

    name = "study"

    def __init__(self, rows, params=None, seconds=None):
        self.rows = list(rows)
        self.params = dict(params or {})
        self.seconds = seconds

    @property
    def columns(self):
        return _columns(self.rows)

    def table(self) -> Table:
        """The rows as plain text (also what ``print(result)`` shows)."""
        return format_table(self.rows, title=f"{self.name}: {self.title()}")

    def title(self):
        return ", ".join(f"{k}={_fmt(v) if not isinstance(v, (list, tuple)) else v}"
                         for k, v in self.params.items())

    def __str__(self):
        return str(self.table())

    def __repr__(self):
        return f"<{type(self).__name__}: {len(self.rows)} rows>"

    def to_csv(self, path):
        """Write the rows as CSV (one header line, one line per row)."""
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=self.columns, lineterminator="\n")
        w.writeheader()
        for r in self.rows:
            w.writerow({k: ("" if v is None else v) for k, v in r.items()})
        _atomic_write(path, buf.getvalue().encode())
        return pathlib.Path(path)

    def to_json(self, path):
        """Write ``{"study", "params", "rows"}`` as JSON (non-finite floats as strings, objects
        JSON has no type for as their repr)."""
        doc = {"study": self.name, "params": _jsonable(self.params),
               "rows": _jsonable(self.rows)}
        _atomic_write(path, json.dumps(doc, indent=1, default=repr).encode())
        return pathlib.Path(path)

    def plot(self, path):
        raise NotImplementedError(f"{self.name} has no plot")

    def save(self, folder, stem=None, plot=True):
        """Write <stem>.csv, <stem>.json and (when matplotlib is installed) <stem>.png."""
        folder = pathlib.Path(folder)
        stem = stem or self.name
        paths = [self.to_csv(folder / f"{stem}.csv"), self.to_json(folder / f"{stem}.json")]
        if plot:
            try:
                paths.append(self.plot(folder / f"{stem}.png"))
            except FastgradError as e:
                log.warning("%s", e)
        return paths


def _pyplot_figure(ncols=1, width=6.0, height=4.2):
    """A matplotlib Figure drawn off-screen (no pyplot state), or a clear error without it."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise fail("plot", "needs matplotlib, which is not installed",
                   'pip install "fastgrad[plot]" (or pip install matplotlib)') from e
    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def _save_fig(fig, path):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _thin(n, most=2000):
    """Indices of at most ``most`` points spread over range(n), log-spaced near 0."""
    if n <= most:
        return np.arange(n)
    idx = np.unique(np.concatenate([np.geomspace(1, n, most // 2).astype(int) - 1,
                                    np.linspace(0, n - 1, most // 2).astype(int)]))
    return idx


# ============================================================================ spectra
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
    from ..frontend.tensor import Tensor

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


# ============================================================================ RNN gradient norms
def _as_list(v):
    if isinstance(v, (int, float, np.integer, np.floating)):
        return [v]
    return list(v)


def _seeds(seeds, seed):
    if seed is not None:
        return [int(seed)]
    if isinstance(seeds, (int, np.integer)):
        return list(range(int(seeds)))
    return [int(s) for s in seeds]


def _first(mask):
    idx = np.flatnonzero(mask)
    return int(idx[0]) if idx.size else None


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
            _atomic_write(path, buf.getvalue())
            paths.append(path)
        return paths

    def plot(self, path):
        """log10 ||dL/dh_t|| against steps back from the loss, one colour per radius (any
        magnitude: the values are logs); dashed: radius^steps, the linearised prediction;
        dotted: e^(lyapunov * steps) from each radius's first seed, where it was measured."""
        fig, (ax,) = _pyplot_figure(width=7.5, height=4.8)
        runs = {k: v / math.log(10) for k, v in self.log_norms.items()}
        radii = sorted({r for r, _ in runs})
        colors = _colors(len(radii))
        for (r, s), v in sorted(runs.items()):
            c = colors[radii.index(r)]
            back = np.arange(v.size)
            g = v[::-1]  # index = steps back
            idx = _thin(v.size)
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
        return _save_fig(fig, path)


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
    from ..frontend.tensor import tensor

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
    from ..training.carry_norms import carry_gradient_log_norms

    t0 = time.perf_counter()
    radii = [float(r) for r in _as_list(spectral_radius)]
    seed_list = _seeds(seeds, seed)
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


# ============================================================================ gradient clipping
def adding_problem(n, T, seed=0):
    """The adding problem (Hochreiter & Schmidhuber 1997): inputs (T, n, 2) of a value in
    [0, 1) and a marker, exactly two markers per sequence (one in each half); the target
    (n, 1) is the sum of the two marked values. Predicting 1 scores an MSE of about 1/6.

    >>> x, y = adding_problem(4, 10, seed=0)
    >>> x.shape, y.shape, x[:, :, 1].sum(axis=0).tolist()
    ((10, 4, 2), (4, 1), [2.0, 2.0, 2.0, 2.0])
    """
    rng = np.random.default_rng(seed)
    x = np.zeros((T, n, 2))
    x[:, :, 0] = rng.uniform(0, 1, (T, n))
    half = max(T // 2, 1)
    a = rng.integers(0, half, n)
    b = rng.integers(half, T, n) if T > 1 else a
    cols = np.arange(n)
    x[a, cols, 1] = 1.0
    x[b, cols, 1] = 1.0
    y = (x[a, cols, 0] + x[b, cols, 0]).reshape(n, 1)
    return x, y


class ClippingResult(StudyResult):
    """One row per run (clipped or not): losses and gradient norms over training;
    ``curves[label]`` = {"loss": (steps,), "grad_norm": (steps,)} (norms before clipping)."""

    name = "gradient_clipping"

    def __init__(self, rows, curves, params=None, seconds=None):
        super().__init__(rows, params, seconds)
        self.curves = curves

    def plot(self, path):
        """Loss curves side by side (one panel per run), and the gradient norms before clipping."""
        n = len(self.curves)
        fig, axes = _pyplot_figure(ncols=n + 1, width=4.2, height=3.8)
        for ax, (label, c) in zip(axes, self.curves.items()):
            ax.plot(np.arange(1, c["loss"].size + 1), c["loss"], lw=0.8)
            ax.axhline(1 / 6, color="gray", ls=":", lw=0.8, label="predict 1 (MSE 1/6)")
            bad = _first(~np.isfinite(c["loss"]))
            if bad is not None:
                ax.axvline(bad + 1, color="red", lw=0.8, label=f"non-finite from step {bad + 1}")
            ax.set_yscale("log")
            ax.set_title(label)
            ax.set_xlabel("step")
            ax.set_ylabel("training loss (MSE)")
            ax.legend(fontsize=7)
        ax = axes[-1]
        for label, c in self.curves.items():
            ax.plot(np.arange(1, c["grad_norm"].size + 1), c["grad_norm"], lw=0.7, label=label)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("||grad|| before clipping")
        ax.legend(fontsize=7)
        return _save_fig(fig, path)


def gradient_clipping(T=50, hidden=32, steps=300, batch=32, lr=0.05, max_norm=1.0, radius=1.5,
                      task="adding", seed=0):
    """Train the same RNN on the adding problem with and without
    ``fg.nn.utils.clip_grad_norm_(params, max_norm)``: same initialisation, same batches.

    An Elman tanh RNN (input 2, ``hidden`` units, W_hh rescaled to spectral radius ``radius``:
    > 1 invites exploding gradients) and a linear read-out of h_T, trained by plain SGD at ``lr``
    on fresh batches of ``batch`` sequences of length T. max_norm may be a list (one run each).

    Returns a :class:`ClippingResult`: per run, final_loss (mean of the last 10% of steps),
    best_loss, max_grad_norm, clipped_steps (steps whose norm exceeded max_norm) and
    first_nonfinite_step; ``curves`` for the plot.

    >>> r = gradient_clipping(T=5, hidden=4, steps=3, batch=2)
    >>> [row["run"] for row in r.rows]
    ['no clipping', 'clip_grad_norm_(1)']
    """
    from ..training import nn, optim
    from ..frontend.tensor import tensor

    if task != "adding":
        raise fail("gradient_clipping", f"unknown task {task!r}", "use task='adding'")
    t0 = time.perf_counter()
    data = [adding_problem(batch, T, seed=[seed, i]) for i in range(steps)]
    runs = [None] + [float(m) for m in _as_list(max_norm)]
    rows, curves = [], {}
    for clip in runs:
        rnn = nn.RNN(2, hidden, seed=seed)
        set_spectral_radius(rnn.weight_hh_l0, radius)
        head = nn.Linear(hidden, 1, seed=seed + 1)
        params = rnn.parameters() + head.parameters()
        opt = optim.SGD(params, lr=lr)
        losses, gnorms = np.full(steps, np.nan), np.full(steps, np.nan)
        for i, (x, y) in enumerate(data):
            opt.zero_grad()
            with np.errstate(all="ignore"):
                _, h_T = rnn(x)
                loss = F.mse_loss(head(h_T), tensor(y))
                loss.backward()
            if clip is None:
                norm = math.sqrt(sum(float(np.sum(np.square(p.grad))) for p in params
                                     if p.grad is not None))
            else:
                norm = nn.utils.clip_grad_norm_(params, clip)
            with np.errstate(all="ignore"):
                opt.step()
            losses[i], gnorms[i] = loss.item(), norm
        label = "no clipping" if clip is None else f"clip_grad_norm_({clip:g})"
        curves[label] = {"loss": losses, "grad_norm": gnorms}
        tail = losses[-max(steps // 10, 1):]
        rows.append({
            "run": label, "max_norm": clip,
            "final_loss": float(np.mean(tail)) if np.isfinite(tail).all() else float("nan"),
            "best_loss": float(np.nanmin(losses)) if np.isfinite(losses).any() else float("nan"),
            "max_grad_norm": float(np.nanmax(gnorms)) if np.isfinite(gnorms).any() else float(
                "inf"),
            "clipped_steps": int(np.sum(gnorms > clip)) if clip is not None else 0,
            "first_nonfinite_step": _first(~np.isfinite(losses) | ~np.isfinite(gnorms)),
        })
    params = {"task": task, "T": T, "hidden": hidden, "steps": steps, "batch": batch, "lr": lr,
              "radius": radius, "max_norm": runs[1:], "seed": seed}
    return ClippingResult(rows, curves, params, time.perf_counter() - t0)


# ============================================================================ saturation
_MAX_LOCAL = {"sigmoid": 0.25, "tanh": 1.0, "relu": 1.0, "leaky_relu": 1.0, "softplus": 1.0,
              "identity": 1.0, "linear": 1.0}


def local_gradient(activation, y, z=None):
    """d act / d z from the activation's output y (and its input z where y does not tell).

    >>> local_gradient("sigmoid", np.array([0.5, 0.9])).round(3)
    array([0.25, 0.09])
    """
    y = np.asarray(y, np.float64)
    if activation == "sigmoid":
        return y * (1 - y)
    if activation == "tanh":
        return 1 - y * y
    if activation == "relu":
        return (y > 0).astype(np.float64)
    if activation in ("identity", "linear"):
        return np.ones_like(y)
    if z is None:
        raise fail("local_gradient", f"{activation} needs its input z", "pass z")
    from ..ops.unary import stable_sigmoid

    z = np.asarray(z, np.float64)
    if activation == "softplus":
        return stable_sigmoid(z)
    if activation == "leaky_relu":
        return np.where(z > 0, 1.0, 0.01)
    raise fail("local_gradient", f"unknown activation {activation!r}",
               f"use one of {sorted(_MAX_LOCAL)}")


def _probed_forward(model, X, probes=True):
    """An MLP's forward with a zero probe added to every hidden layer's output, so that after
    backward ``probe.grad`` = dL/dh_l. Returns (output, [(z_l, h_l, probe_l)])."""
    from ..frontend.tensor import as_tensor, zeros

    act = F.ACTIVATIONS[model.activation]
    x = as_tensor(X)
    layers = list(model.layers)
    hidden = []
    for i, layer in enumerate(layers):
        z = layer(x)
        if i == len(layers) - 1:
            return z, hidden
        h = act(z)
        e = None
        if probes:
            e = zeros(*h.shape, dtype=h.dtype, requires_grad=True)
            h = h + e
        hidden.append((z, h, e))
        x = h
    return x, hidden


def layer_gradient_stats(model, X, y, saturated_below=0.1):
    """Per hidden layer of an ``fg.nn.MLP``: mean local gradient of its activation, fraction of
    saturated units (local gradient < ``saturated_below`` x its maximum: 0.25 for sigmoid, 1
    for tanh), ||dL/dh_l|| reaching the layer's output and ||dL/dW_l||, for the cross-entropy
    loss on (X (N, in), y (N,) integer labels) or the MSE on float targets y (N, out).

    Returns a list of rows, layer 1 first (layer = index of the hidden layer).

    >>> import fastgrad as fg
    >>> m = fg.nn.MLP([3, 4, 2], activation="sigmoid", init="normal", std=0.0)
    >>> row = layer_gradient_stats(m, np.zeros((5, 3)), np.array([0, 1, 0, 1, 0]))[0]
    >>> row["mean_local_grad"], row["fraction_saturated"]
    (0.25, 0.0)
    """
    from ..frontend.tensor import as_tensor

    for p in model.parameters():
        p.grad = None
    out, hidden = _probed_forward(model, X)
    y = np.asarray(y)
    loss = F.cross_entropy(out, y) if y.dtype.kind in "iu" else F.mse_loss(out, as_tensor(y))
    loss.backward()
    top = _MAX_LOCAL.get(model.activation, 1.0)
    rows = []
    for i, ((z, h, e), layer) in enumerate(zip(hidden, list(model.layers))):
        lg = local_gradient(model.activation, h.numpy(), z.numpy())
        w = layer.weight.grad
        rows.append({
            "layer": i + 1, "mean_local_grad": float(lg.mean()),
            "fraction_saturated": float(np.mean(lg < saturated_below * top)),
            "grad_norm_h": float(np.linalg.norm(e.grad)),
            "grad_norm_W": float(np.linalg.norm(w)) if w is not None else 0.0,
        })
    return rows


class SaturationResult(StudyResult):
    """One row per (activation, hidden layer) of a deep MLP at initialisation."""

    name = "saturation"

    def plot(self, path):
        """Per layer: mean local gradient (0.25 line for sigmoid), and gradient norm reaching it."""
        fig, (a1, a2, a3) = _pyplot_figure(ncols=3, width=4.0, height=3.6)
        for act in dict.fromkeys(r["activation"] for r in self.rows):
            rs = [r for r in self.rows if r["activation"] == act]
            layers = [r["layer"] for r in rs]
            a1.plot(layers, [r["mean_local_grad"] for r in rs], "o-", label=act)
            a2.plot(layers, [r["fraction_saturated"] for r in rs], "o-", label=act)
            a3.plot(layers, [r["grad_norm_h"] for r in rs], "o-", label=act)
        a1.axhline(0.25, color="gray", ls=":", lw=0.8, label="0.25 (sigmoid's maximum)")
        a1.set_ylabel("mean local gradient act'(z)")
        a2.set_ylabel("fraction saturated")
        a3.set_ylabel("||dL/dh_l|| reaching layer l")
        a3.set_yscale("log")
        for a in (a1, a2, a3):
            a.set_xlabel("hidden layer (1 = nearest the input)")
            a.legend(fontsize=7)
        return _save_fig(fig, path)


def saturation(depth=10, width=64, activations=("sigmoid", "tanh"), init="default", n=256,
               weight_scale=1.0, seed=0):
    """Vanishing gradients with depth: deep MLPs (``depth`` hidden layers of ``width``) on ``n``
    digit images (fastgrad.data.digits.load_digits), one per activation, at initialisation.

    For each hidden layer: the mean local gradient (never above 0.25 for a sigmoid), the
    fraction of saturated units, and the gradient norm reaching the layer, which shrinks
    layer after layer towards the input (Bengio et al. 1994; Glorot & Bengio 2010).
    init: any ``fg.nn.MLP`` init ("default", "xavier_normal", "normal", ...); weight_scale
    multiplies every weight after it (e.g. 4: pre-activations grow and units saturate).

    >>> r = saturation(depth=3, width=8, n=16)
    >>> [(row["activation"], row["layer"]) for row in r.rows][:3]
    [('sigmoid', 1), ('sigmoid', 2), ('sigmoid', 3)]
    >>> max(row["mean_local_grad"] for row in r.rows if row["activation"] == "sigmoid") <= 0.25
    True
    """
    from ..training import nn
    from ..data.digits import load_digits

    t0 = time.perf_counter()
    X, y, _, _ = load_digits(seed=seed, dtype=np.float64)
    X, y = X[:n], y[:n]
    rows = []
    for act in _as_list(activations) if not isinstance(activations, str) else [activations]:
        model = nn.MLP([X.shape[1]] + [width] * depth + [10], activation=act, init=init,
                       seed=seed)
        for layer in model.layers:
            layer.weight.numpy()[...] *= weight_scale
        for r in layer_gradient_stats(model, X, y):
            rows.append({"activation": act, **r})
    params = {"depth": depth, "width": width, "init": init, "n": n,
              "weight_scale": weight_scale, "seed": seed}
    return SaturationResult(rows, params, time.perf_counter() - t0)


# ============================================================================ dead ReLUs
def _standardiser(X):
    """One mean and one standard deviation over all pixels of the training set. (Per-pixel
    statistics would turn a pixel that is almost always blank in training into a huge input
    on the test image where it is not.)"""
    return float(X.mean()), float(X.std())


def dead_relu_fraction(model, X):
    """Per hidden layer of a ReLU ``fg.nn.MLP``: the fraction of units that never fire
    (output 0 for every row of X (N, in)). Returns a list, layer 1 first.

    >>> import fastgrad as fg
    >>> m = fg.nn.MLP([2, 4, 1], activation="relu")
    >>> m.layers[0].weight.numpy()[...] = [[1, 1], [-1, -1], [1, 0], [-1, 0]]
    >>> m.layers[0].bias.numpy()[...] = 0
    >>> dead_relu_fraction(m, np.array([[1.0, 2.0], [3.0, 0.5]]))
    [0.5]
    """
    from ..frontend.tensor import no_grad

    if not all(np.isfinite(p.numpy()).all() for p in model.parameters()):
        return [float("nan")] * (len(model.layers) - 1)  # diverged: "dead" would be a lie
    with no_grad():
        _, hidden = _probed_forward(model, np.asarray(X, model.parameters()[0].dtype),
                                    probes=False)
        return [float(np.mean(np.all(h.numpy() <= 0, axis=0))) for _, h, _ in hidden]


SCENARIOS = {
    "baseline": "Kaiming init, zero biases, standardised pixels (zero mean, unit variance)",
    "bad_init": "biases initialised to -3 (most units start below zero)",
    "large_lr": "baseline with a too-large SGD learning rate (large_lr)",
    "unnormalised": "raw pixel values 0..255, not centred",
}


class DeadReLUResult(StudyResult):
    """One row per (scenario, epoch): dead fraction per hidden layer, loss, test accuracy
    (epoch 0 is at initialisation)."""

    name = "dead_relus"

    def plot(self, path):
        """Dead fraction of each layer against epochs, one panel per scenario."""
        scen = list(dict.fromkeys(r["scenario"] for r in self.rows))
        fig, axes = _pyplot_figure(ncols=len(scen), width=3.6, height=3.4)
        cols = [c for c in self.columns if c.startswith("dead_layer")]
        for ax, s in zip(axes, scen):
            rs = [r for r in self.rows if r["scenario"] == s]
            for c in cols:
                ax.plot([r["epoch"] for r in rs], [r[c] for r in rs], "o-", ms=3,
                        label=c.replace("dead_", ""))
            ax.set_ylim(-0.03, 1.03)
            ax.set_title(s, fontsize=9)
            ax.set_xlabel("epoch (0 = init)")
            ax.set_ylabel("fraction of dead units")
            ax.legend(fontsize=7)
        return _save_fig(fig, path)


def dead_relus(scenarios=tuple(SCENARIOS), hidden=(64, 64, 64), epochs=5, batch=32, seed=0,
               lr=0.05, large_lr=0.8, bad_bias=-3.0):
    """Dead ReLUs on the digits data set: the fraction of units per hidden layer that never fire
    on the training set, at initialisation and after every epoch of SGD (full batches of
    ``batch``), under each scenario of ``SCENARIOS`` (bad initialisation, a too-large learning
    rate, unnormalised data). A network whose parameters went non-finite reports NaN, not "dead".

    Returns a :class:`DeadReLUResult`: rows (scenario, epoch, dead_layer1.., loss, accuracy).

    >>> r = dead_relus(scenarios=["bad_init"], hidden=(8,), epochs=1)
    >>> [(row["scenario"], row["epoch"]) for row in r.rows]
    [('bad_init', 0), ('bad_init', 1)]
    """
    from ..training import nn, optim
    from ..training.compile import compile as fg_compile
    from ..training.compile import fit
    from ..data.digits import load_digits
    from ..frontend.tensor import no_grad

    t0 = time.perf_counter()
    Xtr, ytr, Xte, yte = load_digits(seed=seed, dtype=np.float64)
    mu, sd = _standardiser(Xtr)
    rows = []
    for name in _as_list(scenarios) if not isinstance(scenarios, str) else [scenarios]:
        if name not in SCENARIOS:
            raise fail("dead_relus", f"unknown scenario {name!r}", f"use {list(SCENARIOS)}")
        if name == "unnormalised":
            A, B = Xtr * 255.0, Xte * 255.0
        else:
            A, B = (Xtr - mu) / sd, (Xte - mu) / sd
        model = nn.MLP([64, *hidden, 10], activation="relu", init="kaiming_normal", seed=seed)
        for layer in model.layers:
            layer.bias.numpy()[...] = bad_bias if name == "bad_init" else 0.0
        opt = optim.SGD(model.parameters(), lr=large_lr if name == "large_lr" else lr)
        step = fg_compile(lambda xb, yb, m=model: F.cross_entropy(m(xb), yb), optimizer=opt)
        loss = None
        for epoch in range(epochs + 1):
            if epoch:
                with np.errstate(all="ignore"):
                    hist = fit(step, A, ytr, epochs=1, batch_size=batch, seed=seed * 1000 + epoch,
                               drop_last=True, progress=False)
                loss = hist.loss[-1]
            dead = dead_relu_fraction(model, A)
            with no_grad(), np.errstate(all="ignore"):
                acc = float(np.mean(model(B).numpy().argmax(axis=1) == yte))
            row = {"scenario": name, "epoch": epoch}
            row.update({f"dead_layer{i + 1}": d for i, d in enumerate(dead)})
            row.update({"train_loss": loss, "test_accuracy": acc})
            rows.append(row)
    params = {"hidden": list(hidden), "epochs": epochs, "batch": batch, "lr": lr,
              "large_lr": large_lr, "bad_bias": bad_bias, "seed": seed}
    return DeadReLUResult(rows, params, time.perf_counter() - t0)


# ============================================================================ data scale
class DataScaleResult(StudyResult):
    """One row per (input scale, normalised?): gradient norm at init and training outcome;
    ``curves[(scale, normalised)]`` = loss per epoch."""

    name = "data_scale"

    def __init__(self, rows, curves, params=None, seconds=None):
        super().__init__(rows, params, seconds)
        self.curves = curves

    def plot(self, path):
        """Gradient norm at init against input scale (log-log), and loss curves."""
        fig, (a1, a2) = _pyplot_figure(ncols=2, width=4.6, height=3.6)
        for norm in (False, True):
            rs = [r for r in self.rows if r["normalised"] == norm]
            a1.plot([r["scale"] for r in rs], [r["grad_norm_init"] for r in rs], "o-",
                    label="normalised" if norm else "raw")
        a1.set_xscale("log")
        a1.set_yscale("log")
        a1.set_xlabel("input scale")
        a1.set_ylabel("||dL/dW|| at W = 0")
        a1.legend(fontsize=7)
        for (scale, norm), c in self.curves.items():
            a2.plot(np.arange(1, len(c) + 1), c, "o-" if norm else "s--", ms=3,
                    label=f"x{scale:g} {'normalised' if norm else 'raw'}")
        a2.set_yscale("log")
        a2.set_xlabel("epoch")
        a2.set_ylabel("training loss")
        a2.legend(fontsize=6)
        return _save_fig(fig, path)


def data_scale(scales=(1, 10, 1000), lr=0.1, epochs=5, batch=32, seed=0):
    """The gradient of a linear model scales with its input: softmax regression (64 -> 10) on
    the digits, inputs multiplied by each of ``scales``, trained by SGD at one fixed ``lr``,
    raw and standardised (zero mean, unit variance over all pixels, which undoes the scale).

    Returns a :class:`DataScaleResult`: per (scale, normalised), grad_norm_init (||dL/dW|| at
    W = 0: exactly proportional to the scale when raw), final train loss, test accuracy and
    whether the loss went non-finite.

    >>> r = data_scale(scales=(1, 1000), epochs=1)
    >>> raw = [row["grad_norm_init"] for row in r.rows if not row["normalised"]]
    >>> round(raw[1] / raw[0], 6)
    1000.0
    """
    from ..training import nn, optim
    from ..training.compile import compile as fg_compile
    from ..training.compile import fit
    from ..data.digits import load_digits
    from ..frontend.tensor import no_grad

    t0 = time.perf_counter()
    Xtr, ytr, Xte, yte = load_digits(seed=seed, dtype=np.float64)
    rows, curves = [], {}
    for norm in (False, True):
        for scale in _as_list(scales):
            A, B = Xtr * scale, Xte * scale
            if norm:
                mu, sd = _standardiser(A)
                A, B = (A - mu) / sd, (B - mu) / sd
            model = nn.Linear(64, 10, init="normal", std=0.0)  # W = 0, b = 0
            loss = F.cross_entropy(model(A), ytr)
            loss.backward()
            g0 = float(np.linalg.norm(model.weight.grad))
            model.zero_grad()
            opt = optim.SGD(model.parameters(), lr=lr)
            step = fg_compile(lambda xb, yb, m=model: F.cross_entropy(m(xb), yb), optimizer=opt)
            with np.errstate(all="ignore"):
                hist = fit(step, A, ytr, epochs=epochs, batch_size=batch, seed=seed,
                           drop_last=True, progress=False)
                with no_grad():
                    acc = float(np.mean(model(B).numpy().argmax(axis=1) == yte))
            losses = np.array(hist.loss)
            curves[(float(scale), norm)] = losses
            rows.append({"scale": float(scale), "normalised": norm, "grad_norm_init": g0,
                         "final_loss": float(losses[-1]), "test_accuracy": acc,
                         "diverged": bool(not np.isfinite(losses).all())})
    params = {"scales": [float(s) for s in _as_list(scales)], "lr": lr, "epochs": epochs,
              "batch": batch, "seed": seed}
    return DataScaleResult(rows, curves, params, time.perf_counter() - t0)


# ============================================================================ sweeps
def grid_cells(grid):
    """The cells of a grid: a dict of lists (their Cartesian product, last key fastest) or a
    list of dicts (taken as given).

    >>> grid_cells({"radius": [0.9, 1.1], "seed": range(2)})
    [{'radius': 0.9, 'seed': 0}, {'radius': 0.9, 'seed': 1}, {'radius': 1.1, 'seed': 0}, {'radius': 1.1, 'seed': 1}]
    """
    if isinstance(grid, dict):
        cells = [{}]
        for key, values in grid.items():
            values = [values] if isinstance(values, (str, int, float)) else list(values)
            cells = [{**c, key: v} for c in cells for v in values]
        return cells
    cells = [dict(c) for c in grid]
    if not all(isinstance(c, dict) for c in cells):
        raise fail("sweep", "grid must be a dict of lists or a list of dicts",
                   "e.g. {'spectral_radius': [0.9, 1.1], 'seed': range(3)}")
    return cells


def _fn_name(fn):
    return f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', repr(fn))}"


def _cell_text(fn, kwargs):
    """The canonical text of one cell's call (function and arguments): its identity."""
    return json.dumps({"fn": _fn_name(fn), "kwargs": _jsonable(kwargs)}, sort_keys=True,
                      default=repr)


def _key_of(text):
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _cell_key(fn, kwargs):
    """The 16 hex digits naming a cell's file in a sweep's folder (cell-<key>.npz)."""
    return _key_of(_cell_text(fn, kwargs))


def _run_cell(fn, kwargs):
    """Runs in a worker: the cell's result and its wall time."""
    t0 = time.perf_counter()
    result = fn(**kwargs)
    return result, time.perf_counter() - t0


def _rows_of(result):
    if isinstance(result, StudyResult):
        return result.rows
    if isinstance(result, dict):
        return [result]
    if isinstance(result, (list, tuple)) and all(isinstance(r, dict) for r in result):
        return list(result)
    return [{"value": result}]


class SweepResult(StudyResult):
    """All cells of a sweep in grid order: ``rows`` (each cell's rows, prefixed by the cell's
    parameters), ``results`` (each cell's study result, None where it failed), ``failed``
    (cell index -> (cell, error text, attempts)) and ``seconds`` per cell."""

    name = "sweep"

    def __init__(self, cells, results, failed, seconds, params=None):
        self.cells, self.results, self.failed = cells, results, failed
        rows = []
        for cell, res in zip(cells, results):
            if res is None:
                continue
            for r in _rows_of(res):
                rows.append({**{k: v for k, v in cell.items() if k not in r}, **r})
        super().__init__(rows, params, seconds)

    def table(self) -> Table:
        text = str(super().table())
        if self.failed:
            text += f"\n\nFAILED cells ({len(self.failed)} of {len(self.cells)}):"
            for i, (cell, err, attempts) in sorted(self.failed.items()):
                text += f"\n  {cell} after {attempts} attempt(s): {err}"
        return Table(text)

    def title(self):
        return (f"{self.params.get('fn')}, {len(self.cells)} cells, {len(self.failed)} failed, "
                f"executor {self.params.get('executor')}")

    def combined(self):
        """The cells' study results merged into one (for its plot), where the study supports it."""
        results = [r for r in self.results if r is not None]
        if results and hasattr(type(results[0]), "combine"):
            return type(results[0]).combine(results)
        raise fail("sweep", "this study's results cannot be merged",
                   "use .rows / .table(), or each cell's .results[i].plot(...)")

    def plot(self, path):
        return self.combined().plot(path)


class _Serial(cf.Executor):
    """Runs each call at submit, in this process (executor="serial": debugging, tiny sweeps)."""

    def submit(self, fn, *args, **kwargs):
        f = cf.Future()
        try:
            f.set_result(fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001 - reported through the future
            f.set_exception(e)
        return f


def _executor(executor, max_workers):
    """(executor, what to close when done, a name for the table, a factory of a fresh executor
    or None). The factory is given only for the local process pool, which sweep owns (and shuts
    down): when a worker dies the pool is broken for good, and sweep replaces it."""
    if executor is None or executor == "processes":
        n = max_workers or os.cpu_count() or 1
        return _LocalPool(n), None, f"local process pool ({n} workers)", lambda: _LocalPool(n)
    if executor == "serial":
        return _Serial(), None, "serial (this process)", None
    if isinstance(executor, str):
        try:
            from dask.distributed import Client
        except ImportError as e:
            raise fail("sweep", f"a Dask scheduler address ({executor}) needs dask.distributed",
                       'pip install "fastgrad[sweep]"') from e
        client = Client(executor)
        return client.get_executor(pure=False), client.close, f"dask {executor}", None
    if hasattr(executor, "get_executor") and hasattr(executor, "scheduler_info"):  # dask Client
        return (executor.get_executor(pure=False), None, f"dask {executor.scheduler.address}",
                None)
    if hasattr(executor, "submit"):
        return executor, None, type(executor).__name__, None
    raise fail("sweep", f"unknown executor {executor!r}",
               "pass None (local processes), 'serial', a concurrent.futures.Executor, a "
               "dask.distributed.Client or a scheduler address 'tcp://host:port'")


class _LocalPool(cf.ProcessPoolExecutor):
    """sweep's own process pool; ``workers`` bounds the cells in flight, so that when a worker
    dies only the cells then running are suspects (a queued cell would fail with them)."""

    def __init__(self, workers):
        super().__init__(max_workers=workers)
        self.workers = workers


_DIED = ("the worker process died while running this cell (a crash in the cell: a segfault, "
         "os._exit, the out-of-memory killer)")


class _CellRunner:
    """Runs the cells ``todo`` of a sweep on an executor: retries, failures, dying workers.

    A failing cell is resubmitted up to ``retries`` times, then recorded in ``failed``; every
    finished cell is handed to ``on_done(i, result, seconds)`` at once (e.g. to write it).

    A worker process that dies takes down every cell it was running, and nothing tells which
    one crashed: sweep's own process pool breaks as a whole (BrokenProcessPool on every cell in
    flight; sweep replaces the pool), and Dask fails the cells that were on that worker
    (KilledWorker, once its ``allowed-failures`` are used up). So on either executor a cell
    whose worker died is first a suspect, not charged an attempt: suspects run again one at a
    time, with nothing else in flight, and a cell whose worker dies while it runs alone is the
    one that crashed, charged an attempt like any failing cell.
    """

    def __init__(self, fn, kwargs, cells, retries, ex, renew, on_done):
        self.fn, self.kwargs, self.cells, self.retries = fn, kwargs, cells, retries
        self.ex, self.renew, self.on_done = ex, renew, on_done
        self.attempts, self.failed = {}, {}  # cell index -> runs charged; -> (cell, error, n)
        self.pending = {}  # future -> cell index
        self.queue, self.alone = [], []  # cells to run; cells to run one at a time
        self.solo = None  # the future of the cell running alone, if any

    def run(self, todo):
        self.queue = list(todo)
        self.attempts = dict.fromkeys(todo, 0)
        while self.queue or self.alone or self.pending:
            broke = self._submit_more()
            if not self.pending and not broke:
                continue
            done = set()
            if not broke:
                done, _ = cf.wait(list(self.pending), return_when=cf.FIRST_COMPLETED)
            if broke or (self.renew is not None and any(_broken(f) for f in done)):
                self._pool_died()
                continue
            for fut in done:
                self._finished(fut, self.pending.pop(fut))
        return self.failed

    def _submit_more(self):
        """Submit what may run now; True when our own pool turned out to be broken."""
        if self.alone:
            if self.pending:
                return False
            i = self.alone.pop(0)
            broke = self._submit(i, self.alone)
            self.solo = next((f for f, j in self.pending.items() if j == i), None)
            return broke
        limit = getattr(self.ex, "workers", None)  # None: the executor schedules (e.g. Dask)
        while self.queue and (limit is None or len(self.pending) < limit):
            if self._submit(self.queue.pop(0), self.queue):
                return True
        return False

    def _submit(self, i, came_from):
        try:
            self.pending[self.ex.submit(_run_cell, self.fn, self.kwargs[i])] = i
        except Exception as e:  # noqa: BLE001 - e.g. a broken or shut-down executor of the caller
            if isinstance(e, cf.BrokenExecutor) and self.renew is not None:
                came_from.insert(0, i)  # our pool broke before this cell even started
                return True
            self.attempts[i] += 1
            self._failure(i, f"could not be submitted: {type(e).__name__}: {e}")
        return False

    def _finished(self, fut, i):
        e = fut.exception()
        if e is None:
            self.attempts[i] += 1
            self.on_done(i, *fut.result())
        elif _worker_died(e) and fut is not self.solo:
            self._suspect([i], e)
        else:
            self.attempts[i] += 1
            died = f"{_DIED} ({type(e).__name__}: {e})" if _worker_died(e) else ""
            self._failure(i, died or f"{type(e).__name__}: {e}", alone=bool(died))

    def _suspect(self, cells, e):
        log.warning("sweep: a worker process died while cells %s were running (%s: %s); they "
                    "run again one at a time to find the one that crashed",
                    [self.cells[i] for i in cells], type(e).__name__, e)
        self.alone += cells

    def _failure(self, i, err, alone=False):
        if self.attempts[i] <= self.retries:
            log.warning("sweep: cell %s failed (attempt %d, retrying): %s", self.cells[i],
                        self.attempts[i], err)
            (self.alone if alone else self.queue).append(i)
        else:
            log.error("sweep: cell %s failed after %d attempt(s): %s", self.cells[i],
                      self.attempts[i], err)
            self.failed[i] = (self.cells[i], err, self.attempts[i])

    def _pool_died(self):
        """A worker of our own pool died: keep what finished, replace the pool, sort out the
        cells it failed (charged if it ran alone, else suspects)."""
        cf.wait(list(self.pending))  # a broken pool fails every future it holds, promptly
        running, self.pending = self.pending, {}
        self.ex.shutdown(wait=True)
        self.ex = self.renew()
        suspects = [(f, i) for f, i in running.items() if _broken(f)]
        for fut, i in running.items():
            if not _broken(fut):
                self._finished(fut, i)  # finished before the crash, or failed on its own
        if len(running) == 1 and suspects:  # nothing else was in flight: it crashed
            self.solo = suspects[0][0]
        for fut, i in suspects:
            if fut is self.solo:
                self._finished(fut, i)
        others = [i for f, i in suspects if f is not self.solo]
        if others:
            self._suspect(others, _broken(suspects[0][0]))
        self.solo = None


def _broken(fut):
    """The BrokenExecutor error of a finished future whose executor broke, else None."""
    e = fut.exception()
    return e if isinstance(e, cf.BrokenExecutor) else None


def _worker_died(e):
    """Whether a cell's error says its worker process died rather than the cell failing."""
    if isinstance(e, cf.BrokenExecutor):
        return True
    distributed = sys.modules.get("distributed")  # loaded whenever Dask raised the error
    return distributed is not None and isinstance(e, distributed.KilledWorker)


# ============================================================================ sweep cell files
# A sweep's finished cells are kept in its output folder so that a rerun resumes. That folder is
# a predictable place anyone may write to, so a cell file is data only: a zip (as NumPy's .npz)
# holding a JSON header and one .npy member per array, read with allow_pickle=False. Nothing in
# the file can name code to run: a study result's class is looked up among the StudyResult
# subclasses already defined in this process, never imported.
CELL_FORMAT, CELL_VERSION = "fastgrad-sweep-cell", 1
_CELL_HEADER = "header.json"
_CELL_HEADER_MAX = 64 << 20  # bytes of JSON; a cell's rows are far smaller
_CELL_DEPTH_MAX = 64  # nesting of lists / dicts / results in one cell
_CELL_DTYPE_KINDS = "biufcU"  # bool, ints, floats, complex, unicode: never object or void
_NPY_HEADER_MAX = 4096  # bytes of a .npy member's own header (the writer's is under 128)


class CellFileError(FastgradError):
    """A sweep cell file that cannot be used: truncated, corrupted, foreign or edited."""


_CELL_FIX = "delete the file; a sweep computes the cell again and rewrites its file"


def _cell_fail(path, problem):
    return CellFileError(f"sweep: cell file {pathlib.Path(path).name}: {problem}. Fix: "
                         f"{_CELL_FIX}")


def _result_classes():
    """Every StudyResult subclass defined in this process, by "module.qualname"."""
    found, todo = {}, [StudyResult]
    while todo:
        cls = todo.pop()
        found[f"{cls.__module__}.{cls.__qualname__}"] = cls
        todo += cls.__subclasses__()
    return found


def encode_cell_value(value):
    """(JSON-able tree, list of arrays) for a cell's value; ``decode_cell_value`` inverts it.

    Holds exactly: None, bool, int, str, float (bit-exact, NaN and infinities included), NumPy
    arrays (bool, int, float, complex, unicode) and scalars, lists, tuples, dicts (any keys of
    these types) and StudyResult objects (their attributes). Anything else raises FastgradError.

    >>> tree, arrays = encode_cell_value({"loss": 0.5, "runs": (1, None)})
    >>> decode_cell_value(tree, arrays)
    {'loss': 0.5, 'runs': (1, None)}
    """
    arrays = []

    def put(a):
        arrays.append(a)
        return len(arrays) - 1

    def enc(v, depth):
        if depth > _CELL_DEPTH_MAX:
            raise fail("sweep", f"a cell's result is nested deeper than {_CELL_DEPTH_MAX} levels",
                       "return flatter results (rows of numbers, arrays)")
        if isinstance(v, (np.ndarray, np.generic)):  # first: np.float64 is also a float
            a = np.asarray(v)
            if a.dtype.kind not in _CELL_DTYPE_KINDS or a.dtype.hasobject:
                raise fail("sweep", f"cannot save an array of dtype {a.dtype} in a cell file",
                           "return numeric arrays")
            return {"scalar" if isinstance(v, np.generic) else "array": put(a)}
        if v is None or isinstance(v, (bool, str)):
            return v
        if isinstance(v, int):
            return int(v)
        if isinstance(v, float):
            return {"float": float(v).hex()}  # hex: bit-exact, and JSON has no NaN
        if isinstance(v, list):
            return {"list": [enc(x, depth + 1) for x in v]}
        if isinstance(v, tuple):
            return {"tuple": [enc(x, depth + 1) for x in v]}
        if isinstance(v, dict):
            return {"dict": [[enc(k, depth + 1), enc(x, depth + 1)] for k, x in v.items()]}
        if isinstance(v, StudyResult):
            cls = type(v)
            return {"result": f"{cls.__module__}.{cls.__qualname__}",
                    "attrs": [[k, enc(x, depth + 1)] for k, x in vars(v).items()]}
        raise fail("sweep", f"cannot save a {type(v).__name__} in a cell file",
                   "return a study result, numbers, strings, arrays, or lists / dicts of them")

    return enc(value, 0), arrays


def decode_cell_value(tree, arrays, where="cell"):
    """The value ``encode_cell_value`` encoded as (tree, arrays); anything else in ``tree``
    raises CellFileError (a strict grammar: every node is checked, every array used once)."""
    used = set()
    classes = None

    def bad(problem):
        return CellFileError(f"sweep: {where}: {problem}. Fix: {_CELL_FIX}")

    def array(i):
        if type(i) is not int or not 0 <= i < len(arrays) or i in used:
            raise bad(f"bad array reference {i!r}")
        used.add(i)
        return arrays[i]

    def dec(x, depth):
        nonlocal classes
        if depth > _CELL_DEPTH_MAX:
            raise bad(f"nested deeper than {_CELL_DEPTH_MAX} levels")
        if x is None or isinstance(x, (bool, str, int)):
            return x
        if not isinstance(x, dict) or not x:
            raise bad(f"unexpected {type(x).__name__} in the header")
        tag = "result" if "result" in x else next(iter(x))
        body = x[tag]
        if tag == "result":
            pairs = x.get("attrs")
            if set(x) != {"result", "attrs"} or not isinstance(pairs, list):
                raise bad("a study result needs exactly 'result' and 'attrs'")
            classes = classes or _result_classes()
            cls = classes.get(body) if isinstance(body, str) else None
            if cls is None:
                raise bad(f"unknown study result class {body!r}")
            if not all(isinstance(p, list) and len(p) == 2 and isinstance(p[0], str)
                       for p in pairs) or len({p[0] for p in pairs}) != len(pairs):
                raise bad("a study result's attrs must be distinct [name, value] pairs")
            attrs = {k: dec(v, depth + 1) for k, v in pairs}
            _check_result_attrs(attrs, bad)
            obj = object.__new__(cls)  # no constructor or other code runs: data only
            obj.__dict__.update(attrs)
            return obj
        if len(x) != 1:
            raise bad(f"a node with keys {sorted(x)}")
        if tag == "float" and isinstance(body, str):
            try:
                return float.fromhex(body)
            except (ValueError, OverflowError):
                raise bad(f"bad float {body!r}") from None
        if tag in ("array", "scalar"):
            a = array(body)
            if tag == "scalar":
                if a.ndim:
                    raise bad(f"a scalar stored with shape {a.shape}")
                return a[()]
            return a
        if tag in ("list", "tuple") and isinstance(body, list):
            items = [dec(v, depth + 1) for v in body]
            return items if tag == "list" else tuple(items)
        if tag == "dict" and isinstance(body, list):
            out = {}
            for pair in body:
                if not isinstance(pair, list) or len(pair) != 2:
                    raise bad("a dict entry that is not a [key, value] pair")
                k = dec(pair[0], depth + 1)
                try:
                    hash(k)
                except TypeError:
                    raise bad(f"an unhashable dict key of type {type(k).__name__}") from None
                out[k] = dec(pair[1], depth + 1)
            return out
        raise bad(f"unknown node {tag!r}")

    value = dec(tree, 0)
    if len(used) != len(arrays):
        raise bad(f"{len(arrays) - len(used)} array(s) not referenced by the header")
    return value


def _check_result_attrs(attrs, bad):
    """What every StudyResult method relies on: rows (list of dicts), params (dict), seconds."""
    for name in attrs:
        if not name.isidentifier() or name.startswith("__"):
            raise bad(f"bad attribute name {name!r}")
    missing = {"rows", "params", "seconds"} - set(attrs)
    if missing:
        raise bad(f"a study result without {sorted(missing)}")
    rows = attrs["rows"]
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise bad("a study result's rows must be a list of dicts")
    if not isinstance(attrs["params"], dict):
        raise bad("a study result's params must be a dict")
    s = attrs["seconds"]
    if s is not None and not isinstance(s, (int, float, list)):
        raise bad("a study result's seconds must be a number or None")


def write_cell_file(path, header, value):
    """Write one cell (``header``: dict of JSON values; ``value``: the cell's result) atomically:
    a temporary file in the same folder, flushed, fsynced, renamed over ``path``."""
    tree, arrays = encode_cell_value(value)
    doc = {"format": CELL_FORMAT, "version": CELL_VERSION, **header, "value": tree,
           "arrays": [{"dtype": a.dtype.str, "shape": list(a.shape)} for a in arrays]}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(_CELL_HEADER, json.dumps(doc, allow_nan=False, sort_keys=True))
        for i, a in enumerate(arrays):
            member = io.BytesIO()
            np.lib.format.write_array(member, a, allow_pickle=False)
            z.writestr(f"a{i}.npy", member.getvalue())
    _atomic_write(path, buf.getvalue())


def read_cell_file(path):
    """(header dict, value) of a cell file written by ``write_cell_file``. Never unpickles.
    Before anything is decompressed, the arrays' total size passes the memory guard and each
    member's declared size is compared with its header entry. Any damage raises CellFileError
    naming the file.

    >>> import tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "cell.npz"
    >>> write_cell_file(path, {"fn": "demo"}, {"loss": [0.5, float("nan")]})
    >>> read_cell_file(path)
    ({'fn': 'demo', 'format': 'fastgrad-sweep-cell', 'version': 1}, {'loss': [0.5, nan]})
    >>> _ = path.write_bytes(path.read_bytes()[:50])
    >>> read_cell_file(path)
    Traceback (most recent call last):
    ...
    fastgrad.study.study.CellFileError: sweep: cell file cell.npz: unreadable (BadZipFile: ...
    """
    path = pathlib.Path(path)
    try:
        if not path.is_file():
            raise _cell_fail(path, "not a regular file")
        with zipfile.ZipFile(path) as z:
            doc = _cell_header(path, z)
            specs = [_cell_array_spec(path, f"a{i}.npy", spec)
                     for i, spec in enumerate(doc["arrays"])]
            guard_memory("sweep", sum(dtype.itemsize * math.prod(shape) for dtype, shape in specs),
                         "free memory, or delete the cell file")
            arrays = [_cell_array(path, z, f"a{i}.npy", dtype, shape)
                      for i, (dtype, shape) in enumerate(specs)]
            extra = set(z.namelist()) - {_CELL_HEADER} - {f"a{i}.npy" for i in range(len(arrays))}
            if extra:
                raise _cell_fail(path, f"unexpected members {sorted(extra)}")
        value = decode_cell_value(doc["value"], arrays, where=f"cell file {path.name}")
    except CellFileError:
        raise
    except Exception as e:  # noqa: BLE001 - any damage: a clear error, never a raw one
        raise _cell_fail(path, f"unreadable ({type(e).__name__}: {e})") from e
    return {k: v for k, v in doc.items() if k not in ("value", "arrays")}, value


def _cell_header(path, z):
    info = z.getinfo(_CELL_HEADER)
    if info.file_size > _CELL_HEADER_MAX:
        raise _cell_fail(path, f"a header of {info.file_size} bytes")
    doc = json.loads(z.read(info).decode("utf-8"), parse_constant=_no_constant)
    if not isinstance(doc, dict) or doc.get("format") != CELL_FORMAT:
        raise _cell_fail(path, "not a fastgrad sweep cell file")
    if doc.get("version") != CELL_VERSION:
        raise _cell_fail(path, f"format version {doc.get('version')!r}, this fastgrad reads "
                         f"{CELL_VERSION}")
    specs = doc.get("arrays")
    if not isinstance(specs, list) or "value" not in doc:
        raise _cell_fail(path, "a header without its value or arrays")
    return doc


def _no_constant(name):
    raise ValueError(f"{name} is not JSON")


def _cell_array_spec(path, member, spec):
    """(dtype, shape) of an array's header entry {"dtype", "shape"}, checked."""
    if not isinstance(spec, dict) or set(spec) != {"dtype", "shape"}:
        raise _cell_fail(path, f"a bad array entry for {member}")
    shape = spec["shape"]
    if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
        raise _cell_fail(path, f"a bad shape {shape!r} for {member}")
    dtype = np.dtype(str(spec["dtype"]))
    if dtype.kind not in _CELL_DTYPE_KINDS or dtype.hasobject:
        raise _cell_fail(path, f"dtype {dtype} for {member}")
    return dtype, shape


def _cell_array(path, z, member, dtype, shape):
    """One array member, checked against its header entry before it is read."""
    nbytes = dtype.itemsize * math.prod(shape)
    info = z.getinfo(member)
    if info.file_size > nbytes + _NPY_HEADER_MAX:  # before decompressing: no zip bomb
        raise _cell_fail(path, f"{member} declares {info.file_size} bytes for {nbytes} of data")
    with z.open(info) as f:
        # the member's own .npy header is checked against the cell header before any data is
        # read (NumPy would allocate whatever shape it names)
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise _cell_fail(path, f"{member} has .npy format version {version}")
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        npy_shape, fortran, npy_dtype = read_header(f)
        if npy_dtype != dtype or list(npy_shape) != shape:
            raise _cell_fail(path, f"{member} holds {npy_dtype} {npy_shape}, its header says "
                             f"{dtype} {tuple(shape)}")
        data = f.read(nbytes)
    if len(data) != nbytes:
        raise _cell_fail(path, f"{member} is truncated ({len(data)} of {nbytes} bytes)")
    flat = np.frombuffer(data, dtype=dtype).copy()  # a writable array, as the study returned
    return flat.reshape(shape, order="F" if fortran else "C")


def sweep(fn, grid, executor=None, out=None, retries=1, max_workers=None, **fixed):
    """Run ``fn(**fixed, **cell)`` for every cell of ``grid`` in parallel; one table of all.

    fn:       a study (any module-level function returning a study result, a dict or a list
              of dicts; it is pickled by reference, so a lambda will not do).
    grid:     dict of lists (Cartesian product) or list of dicts; see :func:`grid_cells`.
    executor: None (a local ``ProcessPoolExecutor``, ``max_workers`` processes), "serial",
              any ``concurrent.futures.Executor``, a ``dask.distributed.Client`` or a Dask
              scheduler address "tcp://host:port" (its ``get_executor()`` is used).
    out:      a folder: each finished cell is saved there at once (cell-<key>.npz: a JSON
              header and NumPy arrays, never a pickle; written atomically) and a rerun with the
              same folder loads those cells instead of running them again (resume). A cell file
              that is damaged, foreign or made for other parameters is reported (a logged
              warning) and the cell computed again. sweep.csv / sweep.json are written at the end.
    retries:  a failing cell is resubmitted up to this many times; a cell that still fails is
              reported in ``result.failed`` and in the table (never silently dropped). A cell
              whose worker process dies (segfault, ``os._exit``) is a failing cell like any
              other, on the local pool as on Dask: the other cells' results are kept.

    Returns a :class:`SweepResult`; cells in grid order whatever the executor, so a sweep gives
    the same table on any executor.

    >>> r = sweep(spectral_radius, [{"W": [[0.0, 2.0], [-0.5, 0.0]]}, {"W": [[3.0]]}],
    ...           executor="serial")
    >>> [row["value"] for row in r.rows]
    [1.0, 3.0]
    """
    cells = grid_cells(grid)
    kwargs = [{**fixed, **c} for c in cells]
    fn_name = _fn_name(fn)
    texts = [_cell_text(fn, k) for k in kwargs]
    keys = [_key_of(t) for t in texts]
    folder = pathlib.Path(out) if out is not None else None
    results, seconds, failed = [None] * len(cells), [None] * len(cells), {}
    todo = list(range(len(cells)))
    if folder is not None:
        todo = [i for i in todo if not _resume_cell(folder, fn_name, keys[i], texts[i], i,
                                                    results, seconds)]

    def done(i, result, secs):
        results[i], seconds[i] = result, secs
        if folder is None:
            return
        try:
            write_cell_file(_cell_path(folder, keys[i]), {
                "fn": fn_name, "key": keys[i], "parameters": texts[i],
                "seconds": float(secs).hex()}, result)
        except (FastgradError, OSError) as e:  # the result is kept; only resuming it is lost
            log.warning("sweep: cell %s is kept in this result but not saved, so a rerun "
                        "computes it again: %s", cells[i], e)

    name = "none needed"
    if todo:
        ex, close, name, renew = _executor(executor, max_workers)
        runner = _CellRunner(fn, kwargs, cells, retries, ex, renew, done)
        try:
            failed = runner.run(todo)
        finally:
            if renew is not None:  # our pool, or the one that replaced it
                runner.ex.shutdown(cancel_futures=True)  # none left unless interrupted
            if close is not None:
                close()
    params = {"fn": fn_name, "executor": name, "cells": len(cells), "retries": retries,
              **{k: v for k, v in fixed.items()}}
    res = SweepResult(cells, results, failed, seconds, params)
    if folder is not None:
        res.to_csv(folder / "sweep.csv")
        res.to_json(folder / "sweep.json")
    return res


def _cell_path(folder, key):
    return folder / f"cell-{key}.npz"


def _resume_cell(folder, fn_name, key, text, i, results, seconds):
    """Load cell i from its file into results/seconds; False when it must be computed."""
    path = _cell_path(folder, key)
    if not path.exists():
        if (folder / f"cell-{key}.pkl").exists():
            log.warning("sweep: %s is a pickle, which sweep never loads (it could run any "
                        "code); the cell is computed again and saved as %s", f"cell-{key}.pkl",
                        path.name)
        return False
    try:
        header, value = read_cell_file(path)
        want = {"fn": fn_name, "key": key, "parameters": text}
        for field, expected in want.items():
            if header.get(field) != expected:
                raise _cell_fail(path, f"it was written for another cell ({field} "
                                 f"{header.get(field)!r}, expected {expected!r})")
        secs = header.get("seconds")
        try:
            secs = float.fromhex(secs)
        except (TypeError, ValueError, OverflowError):
            raise _cell_fail(path, f"bad seconds {secs!r}") from None
    except FastgradError as e:
        log.warning("%s (this sweep computes the cell again)", e)
        return False
    results[i], seconds[i] = value, secs
    return True


# ============================================================================ command line
def parse_range(text):
    """"0.8:1.2:5" -> 5 values from 0.8 to 1.2 inclusive; "0.9,1.1" -> [0.9, 1.1]; "1" -> [1.0].

    >>> parse_range("0.8:1.2:5")
    [0.8, 0.9, 1.0, 1.1, 1.2]
    """
    if ":" in text:
        parts = text.split(":")
        if len(parts) != 3:
            raise ValueError(f"expected start:stop:count, got {text!r}")
        a, b, n = float(parts[0]), float(parts[1]), int(parts[2])
        return [round(float(v), 12) for v in np.linspace(a, b, n)]
    return [float(v) for v in text.split(",") if v]


def _out(args, result, stem):
    paths = result.save(args.out, stem)
    print(result.table(), flush=True)
    if getattr(result, "seconds", None) is not None and not isinstance(result.seconds, list):
        print(f"({result.seconds:.1f} s of study)")
    print("wrote " + ", ".join(str(p) for p in paths), flush=True)
    return 0


def _cmd_rnn(args):
    radii = parse_range(args.radius)
    grid = {"spectral_radius": radii, "seed": list(range(args.seeds))}
    fixed = {"hidden": args.hidden, "T": args.T, "nonlinearity": args.nonlinearity,
             "checkpoint": _checkpoint(args.checkpoint), "weights": args.weights,
             "input_std": args.input_std, "lyapunov_steps": args.lyapunov_steps}
    executor = args.scheduler or ("serial" if args.workers == 1 else None)
    t0 = time.perf_counter()
    swept = sweep(rnn_gradient_norms, grid, executor=executor, out=pathlib.Path(args.out) /
                  "cells", retries=args.retries, max_workers=args.workers, **fixed)
    if swept.failed:
        print(swept.table())
    if not any(r is not None for r in swept.results):
        return 1
    result = swept.combined()
    result.seconds = time.perf_counter() - t0
    code = _out(args, result, "rnn_gradient_norms")
    return 1 if swept.failed else code


def _checkpoint(text):
    if text in (None, "none", "None"):
        return None
    return int(text) if text.isdigit() else text


def _cmd_clipping(args):
    return _out(args, gradient_clipping(T=args.T, hidden=args.hidden, steps=args.steps,
                                        lr=args.lr, max_norm=args.max_norm, radius=args.radius,
                                        seed=args.seed), "gradient_clipping")


def _cmd_saturation(args):
    return _out(args, saturation(depth=args.depth, width=args.width, init=args.init,
                                 weight_scale=args.weight_scale, seed=args.seed), "saturation")


def _cmd_dead_relu(args):
    return _out(args, dead_relus(epochs=args.epochs, large_lr=args.large_lr, seed=args.seed),
                "dead_relus")


def _cmd_data_scale(args):
    return _out(args, data_scale(scales=parse_range(args.scales), lr=args.lr,
                                 epochs=args.epochs, seed=args.seed), "data_scale")


def add_parser(subparsers):
    """Register ``fastgrad study ...`` on the main parser's subparsers."""
    study = subparsers.add_parser(
        "study", help="gradient studies: RNN gradient norms vs spectral radius, clipping, "
        "saturation, dead ReLUs, data scale (tables, CSV/JSON, PNG)")
    sub = study.add_subparsers(dest="study", required=True)

    def common(p, out):
        p.add_argument("--out", default=out, help="output folder (default: %(default)s)")
        p.add_argument("--seed", type=int, default=0)
        return p

    p = sub.add_parser("rnn", help="||dL/dh_t|| over a long unroll per spectral radius and seed")
    p.add_argument("--T", type=int, default=10_000, help="unroll length (default: %(default)s)")
    p.add_argument("--radius", default="0.8:1.2:5",
                   help="spectral radii: start:stop:count or a comma list (default: %(default)s)")
    p.add_argument("--seeds", type=int, default=1, help="seeds 0..n-1 per radius")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--nonlinearity", default="tanh", help="tanh, linear, relu, sigmoid, ...")
    p.add_argument("--weights", default="gaussian", choices=WEIGHTS)
    p.add_argument("--input-std", type=float, default=0.1)
    p.add_argument("--checkpoint", default=None, help="none, sqrt or a segment length k")
    p.add_argument("--lyapunov-steps", type=int, default=2000)
    p.add_argument("--scheduler", default=None,
                   help="Dask scheduler address tcp://host:port (default: local processes)")
    p.add_argument("--workers", type=int, default=None,
                   help="local worker processes (default: all cores; 1: in this process)")
    p.add_argument("--retries", type=int, default=1)
    p.add_argument("--out", default="fastgrad-study", help="output folder (default: %(default)s)")
    p.set_defaults(func=_cmd_rnn)

    p = common(sub.add_parser("clipping", help="adding problem with and without "
                              "clip_grad_norm_"), "fastgrad-study")
    p.add_argument("--T", type=int, default=50)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--max-norm", type=float, default=1.0)
    p.add_argument("--radius", type=float, default=1.5)
    p.set_defaults(func=_cmd_clipping)

    p = common(sub.add_parser("saturation", help="deep sigmoid/tanh MLPs: local gradients and "
                              "gradient norm per layer"), "fastgrad-study")
    p.add_argument("--depth", type=int, default=10)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--init", default="default")
    p.add_argument("--weight-scale", type=float, default=1.0)
    p.set_defaults(func=_cmd_saturation)

    p = common(sub.add_parser("dead-relu", help="dead ReLU fractions per layer and epoch"),
               "fastgrad-study")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--large-lr", type=float, default=0.8)
    p.set_defaults(func=_cmd_dead_relu)

    p = common(sub.add_parser("data-scale", help="gradient magnitude vs input scale"),
               "fastgrad-study")
    p.add_argument("--scales", default="1,10,1000")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--epochs", type=int, default=5)
    p.set_defaults(func=_cmd_data_scale)
    return study
