"""What a study returns: ``StudyResult`` (a table that prints plainly, CSV / JSON, a plot with
matplotlib), the plain-text tables, and the helpers every study shares."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import pathlib

import numpy as np

from ..core.errors import FastgradError, fail
from ..io import atomic_write

__all__ = ["public_name", "StudyResult", "Table", "as_list", "first_index", "format_table",
           "jsonable", "pyplot_figure", "save_figure", "seeds_of", "thin_points", "write_file"]

log = logging.getLogger("fastgrad")


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


def jsonable(v):
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, range)):
        return [jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return jsonable(v.tolist())
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        v = float(v)
        return v if math.isfinite(v) else str(v)  # JSON has no inf/nan
    if isinstance(v, (np.bool_,)):
        return bool(v)
    return v


def write_file(path, data: bytes):
    """Write ``data`` to ``path`` atomically (``fastgrad.io.atomic_write``: a crash leaves the
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
        write_file(path, buf.getvalue().encode())
        return pathlib.Path(path)

    def to_json(self, path):
        """Write ``{"study", "params", "rows"}`` as JSON (non-finite floats as strings, objects
        JSON has no type for as their repr)."""
        doc = {"study": self.name, "params": jsonable(self.params),
               "rows": jsonable(self.rows)}
        write_file(path, json.dumps(doc, indent=1, default=repr).encode())
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


def pyplot_figure(ncols=1, width=6.0, height=4.2):
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


def save_figure(fig, path):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def thin_points(n, most=2000):
    """Indices of at most ``most`` points spread over range(n), log-spaced near 0."""
    if n <= most:
        return np.arange(n)
    idx = np.unique(np.concatenate([np.geomspace(1, n, most // 2).astype(int) - 1,
                                    np.linspace(0, n - 1, most // 2).astype(int)]))
    return idx


def public_name(obj):
    """"module.qualname" of a function or class, with fastgrad.study's own under the name users
    import them by (``fastgrad.study.RNNGradientNorms``, not its module inside the package):
    cell files and sweep keys stay valid when the package's files are rearranged."""
    module = getattr(obj, "__module__", "")
    if module.startswith("fastgrad.study."):
        module = "fastgrad.study"
    return f"{module}.{getattr(obj, '__qualname__', repr(obj))}"


def as_list(v):
    if isinstance(v, (int, float, np.integer, np.floating)):
        return [v]
    return list(v)


def seeds_of(seeds, seed):
    if seed is not None:
        return [int(seed)]
    if isinstance(seeds, (int, np.integer)):
        return list(range(int(seeds)))
    return [int(s) for s in seeds]


def first_index(mask):
    idx = np.flatnonzero(mask)
    return int(idx[0]) if idx.size else None
