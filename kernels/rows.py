"""Checks on tape rows for anomaly detection, and how a report names a scan body's row.

The replay loops (replay.py) and the scan loops (scan.py) call these with ``check`` set
(fg.detect_anomaly): an output or an input gradient that holds a NaN or an Inf stops the sweep.
"""

import numpy as np

from ._jit import jit
from .views import grad_view

__all__ = ["STEP_CODE", "all_finite", "inputs_grads_finite"]

# An anomaly report (replay_forward / replay_backward with ``check``) is the bad row r, or for a
# row of a scan body at step t, r + (t + 1) * STEP_CODE (runtime/anomaly.py decodes it). Tape
# rows are int64 but far fewer than 2**32 (each has an entry in several arenas).
STEP_CODE = 1 << 32


@jit
def all_finite(y):
    for i in range(y.size):
        if not np.isfinite(y[i]):
            return False
    return True


@jit
def inputs_grads_finite(tape, grads, pgrads, need, r):
    """Whether every input of row r that needs a gradient holds a finite one."""
    in_ptr, in_idx, node_off, node_size, kind = tape[2], tape[3], tape[8], tape[9], tape[10]
    for t in range(in_ptr[r + 1] - in_ptr[r]):
        v = in_idx[in_ptr[r] + t]
        if need[v] and not all_finite(grad_view(v, grads, pgrads, kind, node_off, node_size)):
            return False
    return True
