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

import contextlib
import functools
import inspect
import math

import numpy as np

from . import fusion
from ..core.errors import fail
from ..ops import Op
from ..ops.control import SCAN_LAYOUT
from ..ops.nodes import FLOAT_NODE, INDEX_NODE
from ..ops import fmt
from ..core.memory import check_memory, guard_memory
from ..core.memory import set_memory_limit  # noqa: F401 - its old place
from ..kernels.scan import binomial_advance
from ..runtime.tape import RECORDING, Tape
from ..frontend.modes import get_default_dtype, is_grad_enabled, recording_into
from ..frontend.recorder import import_tensor
from ..frontend.tensor import Tensor, as_tensor

__all__ = ["Binomial", "scan", "set_memory_limit"]


class Binomial:
    """Binomial checkpointing for ``fg.scan`` (Griewank & Walther's revolve schedule):
    ``checkpoint=fg.Binomial(slots=s)`` keeps at most ``s`` carries, the initial one included,
    whatever the number of steps T, and recomputes forward from them in the backward sweep.

    With r the least integer such that C(s + r, s) >= T, no step runs more than r + 1 times
    and the backward sweep runs ``extra_steps(T)`` = r T - C(s + r, s + 1) forward steps, the
    fewest any schedule with s slots can (Griewank 1992). The sweep follows ``schedule(T)``; it
    is computed on the fly inside the scan kernel, so nothing of size T is stored.

    >>> import fastgrad as fg
    >>> ck = fg.Binomial(slots=10)
    >>> ck.repetitions(1000), ck.extra_steps(1000)   # T = 1000 with 10 carries kept
    (4, 3636)
    >>> fg.Binomial(slots=2).schedule(4)  # doctest: +NORMALIZE_WHITESPACE
    [('store', 0, 0), ('forward', 0, 1), ('store', 1, 1), ('forward', 1, 4), ('backward', 3),
     ('restore', 1, 1), ('advance', 1, 3), ('backward', 2), ('restore', 1, 1), ('advance', 1, 2),
     ('backward', 1), ('restore', 0, 0), ('advance', 0, 1), ('backward', 0)]
    """

    def __init__(self, slots):
        if isinstance(slots, bool) or not isinstance(slots, (int, np.integer)) or slots < 1:
            raise fail("Binomial", f"slots must be an integer >= 1, got {slots!r}",
                       "pass the number of carries to keep, e.g. fg.Binomial(slots=32)")
        self.slots = int(slots)

    def __repr__(self):
        return f"Binomial(slots={self.slots})"

    def __eq__(self, other):
        return isinstance(other, Binomial) and other.slots == self.slots

    def __hash__(self):
        return hash(("Binomial", self.slots))

    def repetitions(self, T) -> int:
        """r: the least integer with C(slots + r, slots) >= T (each step runs at most r + 1
        times: once in the forward sweep, at most r times in the backward sweep)."""
        T = _steps("Binomial", T)
        hi = 1  # C(slots + r, slots) grows with r: double past T, then bisect
        while math.comb(self.slots + hi, self.slots) < T:
            hi *= 2
        lo = 0
        while lo < hi:
            mid = (lo + hi) // 2
            if math.comb(self.slots + mid, self.slots) < T:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def extra_steps(self, T) -> int:
        """Forward steps the backward sweep runs for a T-step scan: Griewank's binomial
        optimum r T - C(s + r, s + 1) (T - 1 with a slot for every step; 0 for T = 1)."""
        r = self.repetitions(T)
        return r * T - math.comb(self.slots + r, self.slots + 1) if r > 0 else 0

    def schedule(self, T) -> list:
        """The actions of a T-step scan, as the kernel runs them:
        ('store', slot, t): keep the carry entering step t in a slot; ('restore', slot, t):
        put it back; ('forward', t0, t1): the forward sweep's steps t0..t1-1; ('advance', t0,
        t1): recompute steps t0..t1-1 in the backward sweep; ('backward', t): the VJP of step t,
        whose values the step just run left in place. The advances add up to extra_steps(T).
        """
        T = _steps("Binomial", T)
        r = self.repetitions(T)  # about (2 r + 3) T actions of about 100 bytes each
        guard_memory("Binomial", (2 * r + 3) * T * 100, f"a schedule of {T} steps does not "
                     "fit; ask for a shorter one (the scan kernel computes it on the fly)")
        slots = max(1, min(self.slots, T - 1))
        acts, held = [], []
        t = 0
        while t < T - 1:
            acts.append(("store", len(held), t))
            held.append(t)
            nxt = t + int(binomial_advance(T - t, slots - len(held) + 1))
            acts.append(("forward", t, nxt))
            t = nxt
        if acts:  # the forward sweep runs on to step T-1 after its last store
            acts[-1] = ("forward", acts[-1][1], T)
        else:
            acts.append(("forward", 0, T))
        acts.append(("backward", T - 1))
        for t in range(T - 2, -1, -1):
            at = held[-1]
            acts.append(("restore", len(held) - 1, at))
            if at == t:
                held.pop()
            n = at
            while n < t:
                if n > at:
                    acts.append(("store", len(held), n))
                    held.append(n)
                stop = n + int(binomial_advance(t + 1 - n, slots - len(held) + 1))
                acts.append(("advance", n, stop))
                n = stop
            if n > at:  # the advance runs on through step t itself
                acts[-1] = ("advance", acts[-1][1], t + 1)
            else:
                acts.append(("advance", t, t + 1))
            acts.append(("backward", t))
        return acts


def _steps(op, T) -> int:
    """A number of scan steps: an int >= 1 (NumPy integers too)."""
    if isinstance(T, (bool, np.bool_)) or not isinstance(T, (int, np.integer)) or T < 1:
        raise fail(op, f"the number of steps T must be an int >= 1, got {T!r}", "pass e.g. T=100")
    return int(T)


def _interval(checkpoint, T):
    """k for the SCAN row: 0 keeps every step, k > 0 segments of k, -s binomial with s slots."""
    if checkpoint is None:
        return 0
    if isinstance(checkpoint, Binomial):
        return -max(1, min(checkpoint.slots, T - 1))  # more than T - 1 slots are never used
    if isinstance(checkpoint, str) and checkpoint == "sqrt":
        return max(1, math.isqrt(T - 1) + 1) if T > 1 else 1
    if isinstance(checkpoint, (int, np.integer)) and not isinstance(checkpoint, (bool, np.bool_)) \
            and checkpoint > 0:
        return int(checkpoint)
    raise fail("scan", f"unknown checkpoint {checkpoint!r}",
               "use checkpoint=None, 'sqrt', a segment length k > 0 or fg.Binomial(slots=s)")



def _is_alias(t) -> bool:
    """Whether tensor t is a RESHAPE (of a RESHAPE ...) of a leaf: its values then live in the
    leaf's slot, which a compiled step moves into its flat parameter buffer."""
    tape, v, row = t.tape, t.node, t.tape.producer.get(t.node)
    if row is None or tape.ops.a[row] != Op.RESHAPE:
        return False
    while row is not None and tape.ops.a[row] == Op.RESHAPE:
        v = int(tape.in_idx.a[tape.in_ptr.a[row]])
        row = tape.producer.get(v)
    return row is None and (tape.labels.get(v) == "leaf" or tape.node_kind.a[v] != FLOAT_NODE)


def _recording_alone(record):
    """``record`` (fg.scan) under RECORDING and the locks of its operands' tapes: the body's
    rows are recorded between SCAN_BEGIN and SCAN, so no other thread may record a row onto
    that tape (nor replay it) meanwhile. Other threads wait until the loop is recorded."""
    signature = inspect.signature(record)

    @functools.wraps(record)
    def alone(*args, **kwargs):
        bound = signature.bind(*args, **kwargs).arguments
        init, xs = bound.get("init"), bound.get("xs")
        operands = (list(init) if isinstance(init, (tuple, list)) else [init]) + [xs]
        with RECORDING, contextlib.ExitStack() as held:
            for t in operands:
                if isinstance(t, Tensor) and t._tape is not None:
                    held.enter_context(t.tape.lock)
            return record(*args, **kwargs)

    return alone


@_recording_alone
def scan(step, init, xs=None, length=None, checkpoint=None, stack=False, fuse=True):
    """Run ``carry = step(carry, x_t)`` for t = 0..T-1 and return the final carry.

    step:   (carry, x_t) -> new carry, where carry is a tensor or a tuple of tensors with the
            shapes of ``init`` and x_t = xs[t]. It is called ONCE, to record the loop body.
    init:   tensor or tuple of tensors.
    xs:     tensor of shape (T, ...) or None (then give ``length``).
    checkpoint: what the backward sweep keeps (gradients are bit-identical in every mode):
            None      every step's body values: memory T x body, no recomputation;
            "sqrt"    every ceil(sqrt(T))-th carry plus one segment's body values; each step
                      is recomputed once (an int k: segments of k steps);
            fg.Binomial(slots=s)  at most s carries, recomputing with the binomial schedule
                      (fewest recomputations for s slots; see fg.Binomial, docs/recurrence.md).
    stack:  also return the first carry component stacked over time, shape (T, ...).
    fuse:   rewrite chains of plain rows in the body into fused rows (transforms/fusion.py):
            ``act(h @ W.T + x)`` becomes one LINEAR_ACT row. Off inside
            ``fg.compile(..., fuse=False)``. Tensors made inside ``step`` other than the carry
            it returns are not meant to be read after the loop; a fused one is not computed.

    Returns the final carry (same structure as init), or (stacked, final carry) with stack=True.
    """
    if not callable(step):
        raise fail("scan", f"step must be a function (carry, x_t) -> carry, got "
                   f"{type(step).__name__}", "pass e.g. lambda h, x: h * w + x")
    if length is not None and (isinstance(length, (bool, np.bool_))
                               or not isinstance(length, (int, np.integer)) or length < 1):
        raise fail("scan", f"length must be an int >= 1 or None, got {length!r}",
                   "pass the number of steps as an int, or xs of shape (T, ...)")
    if not isinstance(stack, (bool, np.bool_)):
        raise fail("scan", f"stack must be True or False, got {stack!r}", "pass stack=True")
    if not isinstance(fuse, (bool, np.bool_)):
        raise fail("scan", f"fuse must be True or False, got {fuse!r}", "pass fuse=False")
    length = None if length is None else int(length)
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
    if x is not None and x.requires_grad and (x._tape is None or _is_alias(x)):
        # a parameter (or a reshape of one) as xs: loop over a copy, since a compiled step
        # moves parameters and their reshapes into its flat parameter buffer
        x = x + 0.0
    if x is not None and x.ndim == 0:
        raise fail("scan", "xs must have a leading time axis", "pass xs of shape (T, ...)")
    T = x.shape[0] if x is not None else length
    if T is None or T < 1 or (length is not None and x is not None and length != T):
        raise fail("scan", f"needs T >= 1 steps (xs {fmt(x.shape) if x is not None else None}, "
                   f"length {length})", "pass xs with T >= 1 rows or length=T")
    _interval(checkpoint, T)  # refuse a bad checkpoint before recording anything
    floats = {t.dtype for t in carries + ([x] if x is not None else []) if t.dtype.kind == "f"}
    if len(floats) > 1:
        raise fail("scan", f"carries and xs mix dtypes {sorted(map(str, floats))}",
                   "cast them to one dtype")
    dtype = floats.pop() if floats else get_default_dtype()
    grad_on = is_grad_enabled()
    tapes = []
    for t in carries + ([x] if x is not None else []):
        if t._tape is not None and t.tape not in tapes:
            tapes.append(t.tape)
    tape = tapes[0] if tapes else Tape(dtype)
    for other in tapes[1:]:
        tape.absorb(other)
    if tape.body.active:
        raise fail("scan", "nested scans are not supported",
                   "unroll the inner loop or fold it into the step function")
    init_nodes = [import_tensor(tape, c, FLOAT_NODE, not grad_on) for c in carries]
    x_node = import_tensor(tape, x, FLOAT_NODE, not grad_on) if x is not None else -1
    # --- record the body, once; a failure on the way takes the loop back off the tape
    tape.record(Op.SCAN_BEGIN, [init_nodes[0]], (0,), [-1], [], False)
    marker_row = tape.n_rows - 1
    tape.body.marker, tape.body.hoisted = marker_row, set()
    try:
        finals, stacked, need = _record_loop(tape, step, single, carries, x, x_node,
                                             init_nodes, T, dtype, grad_on, checkpoint, stack,
                                             fuse and fusion.enabled())
    except BaseException:
        marker_row = tape.body.marker  # rows hoisted out of the body moved it down
        if tape.n_rows > marker_row and tape.ops.a[marker_row] == Op.SCAN_BEGIN and \
                not (tape.scan_rows and tape.scan_rows[-1] > marker_row):
            tape.remove_row(marker_row)  # the body rows stay, as plain rows on init and xs[0]
        # ... whose slots get those values once the rows before them have run (next read)
        tape.body.slot_sources = [(marker_row if row < 0 else row, *rest)
                                  for row, *rest in tape.body.slot_sources]
        raise
    finally:
        tape.body.marker, tape.body.first_node, tape.body.hoisted = -1, -1, set()
        # a recorded loop loads its slots itself (kernels/scan.py)
        tape.body.slot_sources = [e for e in tape.body.slot_sources if e[0] >= 0]
    results = [Tensor._on_tape(tape, f, need) for f in finals]
    final = results[0] if single else tuple(results)
    if stack:
        return Tensor._on_tape(tape, stacked, need), final
    return final


def _record_loop(tape, step, single, carries, x, x_node, init_nodes, T, dtype, grad_on,
                 checkpoint, stack, fuse):
    """Record the body of fg.scan after its SCAN_BEGIN row (``tape.body.marker``), then the
    SCAN row; returns the final carries' nodes, the stacked output's node (-1 without stack)
    and whether they need gradients. Rows of the step that read only outside nodes are
    recorded before the marker instead (``Tape.hoist_last_row``): computed once."""
    first_node = tape.n_nodes
    tape.body.first_node = first_node
    slots = []
    for c, v in zip(carries, init_nodes):
        s = tape.add_node(c.shape, need=grad_on, label="carry")
        tape.body.slot_sources.append((-1, s, v, False))
        slots.append(s)
    x_slot = -1
    if x is not None:
        x_slot = tape.add_node(x.shape[1:], need=grad_on and x.requires_grad, label="x_t")
        tape.body.slot_sources.append((-1, x_slot, x_node, True))
    if tape.n_done >= tape.body.marker:  # nothing before the loop waits to run
        tape.fill_body_slots()
    tape.body.active = True
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
                if o._tape is None or o.tape is not tape or tape.outside_body(o.node) or \
                        o.node not in tape.producer or tape.ops.a[tape.producer[o.node]] == Op.RESHAPE:
                    o = o + 0.0  # carry_out must be a body-owned slot of its own: copy
                couts.append(o.node)
    finally:
        tape.body.active = False
    if fuse:
        fusion.fuse_body(tape, tape.body.marker + 1,
                         set(couts) | set(slots) | ({x_slot} if x_slot >= 0 else set()))
    marker_row = tape.body.marker
    body_start, body_end = marker_row + 1, tape.n_rows
    own, captured = tape.body_nodes(first_node, tape.n_nodes, body_start, body_end)
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
    if k < 0:  # binomial: -k carries; the body nodes hold the step being reversed
        n_store, n_ckpt = 0, -k * csize
    elif k > 0:  # segments: one carry per segment, one segment's states
        n_store, n_ckpt = k * size, ((T + k - 1) // k) * csize
    else:
        n_store, n_ckpt = T * size, 0
    stacked_size = T * carries[0].size if stack else 0
    check_memory("scan", (n_store + n_ckpt + stacked_size) * tape.dtype.itemsize
                 * (2 if need else 1) + (8 * (4 - k) if k < 0 else 0),
                 f"T={T} steps keep {size} values each; pass checkpoint='sqrt' (or a smaller "
                 "segment k) to keep about sqrt(T) steps, or checkpoint=fg.Binomial(slots=s) "
                 "to keep s carries, or shorten T", held=tape.nbytes())
    store = tape.add_node((n_store,), label="scan store")
    ckpt = tape.add_node((n_ckpt,), label="scan checkpoints")
    sched = tape.add_node((4 - k,), kind=INDEX_NODE, label="scan schedule") if k < 0 else -1
    finals = [tape.add_node(c.shape, need=need, label="carry T") for c in carries]
    stacked = tape.add_node((T, *carries[0].shape), need=need, label="stacked") if stack else -1
    ip, _ = SCAN_LAYOUT.encode(
        T=T, begin_row=marker_row, body_start=body_start, body_end=body_end,
        n_carry=len(carries), n_stack=1 if stack else 0, has_x=1 if x is not None else 0,
        xs=x_node, x_slot=x_slot, x_step=int(np.prod(x.shape[1:])) if x is not None else 0,
        store=store, k=k, ckpt=ckpt, schedule=sched, reg_size=size, n_own=len(own),
        carries=[[v, s, co, f] for v, s, co, f in zip(init_nodes, slots, couts, finals)],
        stacked=[[couts[0], stacked]] if stack else [], own=own)
    inputs = init_nodes + ([x_node] if x is not None else [])
    out0 = tape.record(Op.SCAN, inputs, (0,), ip, [], need)
    row = tape.n_rows - 1
    for f in finals + ([stacked] if stack else []):
        tape.producer[f] = row
    tape.iparams.a[tape.ip_ptr.a[marker_row]] = row  # the marker now skips to the SCAN row
    tape.scan_rows.append(row)
    tape.n_done = min(tape.n_done, marker_row)
    del out0
    return finals, stacked, need
