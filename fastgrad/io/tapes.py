"""A recorded tape as the flat arrays a file holds, and back (every loaded tape passes
``validate_tape`` before a kernel can see it)."""

from __future__ import annotations

import numpy as np

from ..core.errors import fail
from ..ops import Op
from ..ops.control import SCAN_LAYOUT
from ..runtime.tape import Tape, GrowingArray
from .validate import FIX_DAMAGED, int_list, partitions, scan_results, validate_tape

__all__ = ["tape_from_arrays", "tape_to_arrays"]


# ----------------------------------------------------------------------------- tapes
_TAPE_INTS = ("ops", "outs", "in_ptr", "in_idx", "ip_ptr", "iparams", "fp_ptr", "node_off",
              "node_size")


def tape_to_arrays(tape: Tape, put) -> dict:
    if tape.merged_into is not None:
        raise fail("save", "this tape was merged into another one",
                   "save the tape of the result (tensor.tape)")
    if tape.body.active:
        raise fail("save", "an fg.scan body is being recorded on this tape",
                   "save the tape after fg.scan returns")
    tape.flush()
    validate_tape(tape, "save")  # never write a file that load would refuse
    shapes = tape.shapes
    doc = {"dtype": tape.dtype.name, "n_done": int(tape.n_done),
           "labels": [[int(v), s] for v, s in tape.labels.items()],
           "int_bounds": [[int(v), int(lo), int(hi)] for v, (lo, hi) in tape.int_bounds.items()],
           "shape_ptr": put(np.cumsum([0] + [len(s) for s in shapes]).astype(np.int64)),
           "shape_dims": put(np.array([d for s in shapes for d in s], np.int64)),
           "fparams": put(tape.fparams.view.copy()),
           "node_kind": put(tape.node_kind.view.copy()),
           "node_need": put(tape.node_need.view.copy()),
           "values": put(tape.values.view.copy()),
           "ivalues": put(tape.ivalues.view.copy()),
           "param_arena": put(np.array(tape.program_arrays.param_arena, copy=True))}
    for name in _TAPE_INTS:
        doc[name] = put(getattr(tape, name).view.copy())
    return doc


def _grow(a, dtype):
    g = GrowingArray(dtype, max(1, a.size))
    g.a[: a.size] = a
    g.n = a.size
    return g


def tape_from_arrays(doc, get) -> Tape:
    dtype = np.dtype(doc["dtype"])
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise fail("load", f"tape dtype {dtype} is not float32 or float64", FIX_DAMAGED)

    def arr(name, want):
        a = get(doc[name])
        if a.ndim != 1 or a.dtype != want:
            raise fail("load", f"tape array {name} is {a.dtype}{list(a.shape)}, expected a 1-D "
                       f"{np.dtype(want)} array", FIX_DAMAGED)
        return a

    tape = Tape(dtype)
    for name in _TAPE_INTS:
        setattr(tape, name, _grow(arr(name, np.int64), np.int64))
    tape.fparams = _grow(arr("fparams", dtype), dtype)
    tape.node_kind = _grow(arr("node_kind", np.int8), np.int8)
    tape.node_need = _grow(arr("node_need", np.int8), np.int8)
    tape.values = _grow(arr("values", dtype), dtype)
    tape.ivalues = _grow(arr("ivalues", np.int64), np.int64)
    tape.program_arrays.param_arena = np.array(arr("param_arena", dtype), copy=True)
    tape.program_arrays.param_grads = np.zeros_like(tape.program_arrays.param_arena)
    ptr, dims = arr("shape_ptr", np.int64), arr("shape_dims", np.int64)
    n = tape.node_off.n
    if ptr.size != n + 1 or not partitions(ptr, dims.size):
        raise fail("load", "the tape's shape table is inconsistent", FIX_DAMAGED)
    tape.shapes = [tuple(int(d) for d in dims[ptr[v] : ptr[v + 1]]) for v in range(n)]
    tape.labels = {int(v): str(s) for v, s in doc["labels"]}
    tape.int_bounds = {int(v): (int(lo), int(hi)) for v, lo, hi in doc["int_bounds"]}
    tape.producer = {int(o): r for r, o in enumerate(tape.outs.view)}
    validate_tape(tape, "load")
    n_done = doc["n_done"]
    tape.n_done = n_done if isinstance(n_done, int) and 0 <= n_done <= tape.n_rows else 0
    tape.scan_rows = [int(r) for r in np.flatnonzero(tape.ops.view == Op.SCAN)]
    for r in tape.scan_rows:  # as fg.scan leaves them: its results are the SCAN row's
        ip = int_list(tape.iparams.view[tape.ip_ptr.view[r] : tape.ip_ptr.view[r + 1]])
        for v in scan_results(ip):
            tape.producer[v] = r
        begin = ip[SCAN_LAYOUT.index("begin_row")]
        if begin < tape.n_done <= r:  # never half a loop: replay it from its SCAN_BEGIN row
            tape.n_done = begin
    return tape
