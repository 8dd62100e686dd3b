"""NaN/Inf tracing: ``with fg.detect_anomaly():`` makes every replay check each op's output.

Off by default; when off the replay kernels skip the check entirely (one branch per row).
Inside ``fg.scan`` the body's rows are checked at every step, and the report names the op in
the loop body and the step t; ``fg.compile``d steps and ``fg.fit`` check the same way.
"""

from __future__ import annotations

import contextlib
import threading

import numpy as np

from ..core.errors import FastgradError
from ..core.errors import flag
from ..kernels.rows import STEP_CODE

__all__ = ["AnomalyError", "STATE", "anomaly_enabled", "describe_anomaly", "detect_anomaly",
           "locate"]


class _State(threading.local):
    on = False  # per thread; a class default, so reading it is one attribute lookup


STATE = _State()  # detect_anomaly's switch, per thread: ``STATE.on``


class AnomalyError(FastgradError, FloatingPointError):
    """A NaN or Inf appeared; the message names the op, its tape row and its inputs' statistics."""


def anomaly_enabled() -> bool:
    return STATE.on


@contextlib.contextmanager
def detect_anomaly(enabled: bool = True):
    """Check every op's output (forward) and input gradients (backward) for NaN/Inf.

    >>> import fastgrad as fg
    >>> x = fg.tensor([1.0, 0.0], requires_grad=True)
    >>> with fg.detect_anomaly():
    ...     y = fg.log(x).sum()
    ...     y.item()
    Traceback (most recent call last):
    fastgrad.runtime.anomaly.AnomalyError: forward: row 0 (log) produced -inf ...
    """
    enabled = flag("detect_anomaly", "enabled", enabled)
    prev = anomaly_enabled()
    STATE.on = enabled
    try:
        yield
    finally:
        STATE.on = prev


def _stats(a):
    a = np.asarray(a, dtype=np.float64)
    if a.size == 0:
        return "empty"
    fin = a[np.isfinite(a)]
    rng = f"min {fin.min():.4g} max {fin.max():.4g}" if fin.size else "no finite values"
    return f"shape {a.shape}, {rng}, nan {int(np.isnan(a).sum())}, inf {int(np.isinf(a).sum())}"


def locate(tape, report):
    """(row, step t, scan row) of a replay kernel's anomaly report: ``report`` is the row, or
    for a row of a scan body at step t, row + (t + 1) * STEP_CODE (kernels/rows.py); step and
    scan row are -1 outside a scan body."""
    row, t = int(report) % STEP_CODE, int(report) // STEP_CODE - 1
    if t < 0:
        return row, -1, -1
    for s in tape.scan_rows:
        b0, b1 = tape.scan_body(s)
        if b0 <= row < b1:
            return row, t, int(s)
    raise FastgradError(f"internal: anomaly report {report} names no scan body row")


def describe_anomaly(tape, report, direction) -> AnomalyError:
    """The error for a replay kernel's anomaly ``report`` (see ``locate``) in ``direction``
    ("forward" or "backward"): the op, its row (and the loop step inside ``fg.scan``), and its
    inputs' statistics (at that step)."""
    row, t, scan_row = locate(tape, report)
    r, name, ins, out = next(x for x in tape.rows() if x[0] == row)
    where = f"row {r} ({name})"
    if t >= 0:
        T = tape.attrs(scan_row).T
        where += f" at step t={t} of {T} of the fg.scan loop body (scan row {scan_row})"
    if direction == "forward":
        y = tape.node_values(out)
        what = "nan" if np.isnan(y).any() else ("-inf" if np.isneginf(y).any() else "inf")
        lines = [f"forward: {where} produced {what} in %{out} {tape.shapes[out]}"]
        for i in ins:
            lines.append(f"  input %{i}: {_stats(tape.node_values(i))}")
    else:
        lines = [f"backward: {where} produced a NaN/Inf gradient for its inputs"]
        for i in ins:
            lines.append(f"  input %{i}: {_stats(tape.node_values(i))}")
            if tape.node_need.a[i]:
                lines.append(f"  grad of %{i}: {_stats(tape.node_grad(i))}")
        lines.append(f"  incoming grad of %{out}: {_stats(tape.node_grad(out))}")
    lines.append("  print the tape (print(tensor.tape)) to see where these nodes come from")
    return AnomalyError("\n".join(lines))
