"""``fg.scan``: a loop on the tape. The step function is recorded once, as body rows between a
SCAN_BEGIN marker and a SCAN row; the replay kernels run the body T times forward and backward
(kernels/scan.py). Recording time and tape length do not depend on T.

>>> import fastgrad as fg, numpy as np
>>> w = fg.tensor(0.5, requires_grad=True)
>>> h_T = fg.scan(lambda h, x: h * w + x, fg.tensor(1.0), fg.tensor(np.ones(3)))
>>> float(h_T.item())       # ((1*.5 + 1)*.5 + 1)*.5 + 1
1.875
>>> h_T.backward(); float(w.grad)  # h2 + w (h1 + w h0)
2.75
"""

from __future__ import annotations

import math
import os

import numpy as np

from .errors import fail
from .opcodes import Op
from .ops import fmt
from .tape import Tape
from .tensor import Tensor, _import, as_tensor, is_grad_enabled, recording_into
from .kernels.scan import HEADER

_LIMIT = [None]  # user memory limit in bytes for buffers a tape allocates


def set_memory_limit(nbytes):
    """Cap the buffers a scan may allocate (None: the machine's available memory)."""
    _LIMIT[0] = None if nbytes is None else int(nbytes)


def available_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def check_memory(what, nbytes, fix):
    """Raise before allocating ``nbytes`` past the user limit or the available memory."""
    limit = _LIMIT[0] if _LIMIT[0] is not None else available_memory()
    if nbytes > limit:
        raise fail(what, f"needs {nbytes / 2**30:.2f} GiB of buffers but only "
                   f"{limit / 2**30:.2f} GiB are {'allowed' if _LIMIT[0] else 'available'}", fix)


def _interval(checkpoint, T):
    if checkpoint is None:
        return 0
    if checkpoint == "sqrt":
        return max(1, math.isqrt(T - 1) + 1) if T > 1 else 1
    if isinstance(checkpoint, int) and checkpoint > 0:
        return int(checkpoint)
    raise fail("scan", f"unknown checkpoint {checkpoint!r}",
               "use checkpoint=None, 'sqrt' or a segment length k > 0")


def scan(step, init, xs=None, length=None, checkpoint=None, stack=False):
    """Run ``carry = step(carry, x_t)`` for t = 0..T-1 and return the final carry.

    step:   (carry, x_t) -> new carry, where carry is a tensor or a tuple of tensors with the
            shapes of ``init`` and x_t = xs[t]. It is called ONCE, to record the loop body.
    init:   tensor or tuple of tensors.
    xs:     tensor of shape (T, ...) or None (then give ``length``).
    checkpoint: None (keep every step's body values: memory T x body), "sqrt" (keep every
            ceil(sqrt(T))-th carry and recompute segments in the backward sweep), or an int k.
            Gradients are bit-identical either way.
    stack:  also return the first carry component stacked over time, shape (T, ...).

    Returns the final carry (same structure as init), or (stacked, final carry) with stack=True.
    """
    single = not isinstance(init, (tuple, list))
    carries = [as_tensor(c) for c in ([init] if single else init)]
    for c in carries:
        if c.dtype.kind != "f":
            raise fail("scan", f"carries must hold floats, got {c.dtype}", "cast init to float")
    if not carries:
        raise fail("scan", "init is empty", "pass a tensor or a tuple of tensors")
    x = None if xs is None else as_tensor(xs)
    if x is not None and x.dtype.kind != "f":
        raise fail("scan", f"xs must hold floats, got {x.dtype}",
                   "cast xs (xs.astype(np.float32)); index an embedding table inside the step")
    if x is not None and x._tape is None and x.requires_grad:
        x = x + 0.0  # a parameter as xs: loop over a copy (a compiled step remaps parameters)
    if x is not None and x.ndim == 0:
        raise fail("scan", "xs must have a leading time axis", "pass xs of shape (T, ...)")
    T = x.shape[0] if x is not None else length
    if T is None or T < 1 or (length is not None and x is not None and length != T):
        raise fail("scan", f"needs T >= 1 steps (xs {fmt(x.shape) if x is not None else None}, "
                   f"length {length})", "pass xs with T >= 1 rows or length=T")
    floats = {t.dtype for t in carries + ([x] if x is not None else []) if t.dtype.kind == "f"}
    if len(floats) > 1:
        raise fail("scan", f"carries and xs mix dtypes {sorted(map(str, floats))}",
                   "cast them to one dtype")
    from .tensor import get_default_dtype

    dtype = floats.pop() if floats else get_default_dtype()
    grad_on = is_grad_enabled()
    tapes = []
    for t in carries + ([x] if x is not None else []):
        if t._tape is not None and t.tape not in tapes:
            tapes.append(t.tape)
    tape = tapes[0] if tapes else Tape(dtype)
    for other in tapes[1:]:
        tape.absorb(other)
    if tape.recording_scan:
        raise fail("scan", "nested scans are not supported",
                   "unroll the inner loop or fold it into the step function")
    init_nodes = [_import(tape, c, 0, not grad_on) for c in carries]
    x_node = _import(tape, x, 0, not grad_on) if x is not None else -1
    tape.flush()
    # --- record the body, once
    marker = tape.record(Op.SCAN_BEGIN, [init_nodes[0]], (0,), [-1], [], False)
    marker_row = tape.n_rows - 1
    first_node = tape.n_nodes
    reg_start = tape.values.n
    slots = []
    for c, v in zip(carries, init_nodes):
        s = tape.add_node(c.shape, need=grad_on, label="carry")
        tape.node_values(s)[...] = tape.node_values(v)
        slots.append(s)
    x_slot = -1
    if x is not None:
        x_slot = tape.add_node(x.shape[1:], need=grad_on and x.requires_grad, label="x_t")
        tape.node_values(x_slot)[...] = tape.node_values(x_node)[0]
    body_start = tape.n_rows
    tape.recording_scan = True
    try:
        carry_in = [Tensor._on_tape(tape, s, grad_on) for s in slots]
        x_t = Tensor._on_tape(tape, x_slot, grad_on and x.requires_grad) if x is not None else None
        with recording_into(tape):
            out = step(carry_in[0] if single else tuple(carry_in), x_t)
            outs = [as_tensor(o) for o in ([out] if single else out)]
            if len(outs) != len(carries):
                raise fail("scan", f"step returned {len(outs)} carries for {len(carries)} in init",
                           "return a carry with init's structure")
            couts = []
            for o, c in zip(outs, carries):
                if o.shape != c.shape or (o.dtype.kind == "f" and o.dtype != dtype):
                    raise fail("scan", f"step returned a carry of shape {fmt(o.shape)} {o.dtype} "
                               f"for init {fmt(c.shape)} {c.dtype}",
                               "the carry must keep its shape and dtype from step to step")
                if o._tape is None or o.tape is not tape or o.node < first_node or \
                        o.node not in tape.producer or tape.ops.a[tape.producer[o.node]] == Op.RESHAPE:
                    o = o + 0.0  # carry_out must be a body-owned slot of its own: copy
                couts.append(o.node)
    finally:
        tape.recording_scan = False
    body_end = tape.n_rows
    captured = set()
    for v in range(first_node, tape.n_nodes):
        if tape.labels.get(v) in ("leaf", "const") or tape.node_kind.a[v] != 0:
            captured.add(v)
    for r in range(body_start, body_end):  # a RESHAPE of an outside tensor shares its slot
        src = int(tape.in_idx.a[tape.in_ptr.a[r]])
        if tape.ops.a[r] == Op.RESHAPE and (src < first_node or src in captured):
            captured.add(int(tape.outs.a[r]))
    own = [v for v in range(first_node, tape.n_nodes)
           if v not in captured and tape.node_size.a[v] > 0]
    ptr, idx = tape.in_ptr.view, tape.in_idx.view
    body_inputs = set(idx[ptr[body_start] : ptr[body_end]].tolist()) if body_end > body_start \
        else set()
    outer_need = any(tape.node_need.a[v] for v in body_inputs if v < first_node or v in captured)
    need = grad_on and (outer_need or any(c.requires_grad for c in carries)
                        or (x is not None and x.requires_grad))
    # --- buffers, after the memory guard
    k = _interval(checkpoint, T)
    size = int(sum(tape.node_size.a[v] for v in own))  # the body state saved per step
    csize = sum(c.size for c in carries)
    stored = (k * size + ((T + k - 1) // k) * csize) if k else T * size
    stacked_size = T * carries[0].size if stack else 0
    check_memory("scan", (stored + stacked_size) * tape.dtype.itemsize * (2 if need else 1),
                 f"T={T} steps keep {size} values each; pass checkpoint='sqrt' (or a smaller "
                 "segment k) to keep about sqrt(T) steps, or shorten T")
    store = tape.add_node(((k if k else T) * size,), label="scan store")
    ckpt = tape.add_node((((T + k - 1) // k) * csize if k else 0,), label="scan checkpoints")
    finals = [tape.add_node(c.shape, need=need, label="carry T") for c in carries]
    stacked = tape.add_node((T, *carries[0].shape), need=need, label="stacked") if stack else -1
    ip = [T, marker_row, body_start, body_end, len(carries), 1 if stack else 0,
          1 if x is not None else 0, x_node, x_slot, int(np.prod(x.shape[1:])) if x is not None
          else 0, store, k, ckpt, reg_start, size, len(own)]
    assert len(ip) == HEADER
    for v, s, co, f in zip(init_nodes, slots, couts, finals):
        ip += [v, s, co, f]
    if stack:
        ip += [couts[0], stacked]
    ip += own
    inputs = init_nodes + ([x_node] if x is not None else [])
    out0 = tape.record(Op.SCAN, inputs, (0,), ip, [], need)
    row = tape.n_rows - 1
    for f in finals + ([stacked] if stack else []):
        tape.producer[f] = row
    tape.iparams.a[tape.ip_ptr.a[marker_row]] = row  # the marker now skips to the SCAN row
    tape.scan_rows.append(row)
    tape.n_done = min(tape.n_done, marker_row)
    del marker, out0
    results = [Tensor._on_tape(tape, f, need) for f in finals]
    final = results[0] if single else tuple(results)
    if stack:
        return Tensor._on_tape(tape, stacked, need), final
    return final
