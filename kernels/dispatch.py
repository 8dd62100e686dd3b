"""The dispatch table: each op's row kernels, compiled when a tape first uses the op, and their
addresses in one int64 array per float dtype, which the entry kernels call through (call.py).

Per op code and dtype there are two kernels, ``forward`` and ``vjp`` (signatures in call.py),
made by ``row_kernels(code)``: closures over the code, so that Numba compiles and caches one
machine-code function per op (the code is part of the cache key, as a closure variable) and
prunes every other op's branches from it (rows.py); a few ops run on another op's kernels
(``KERNEL_OF``: LINEAR on LINEAR_ACT's, the arithmetic ops on ADD's). A SCAN row's kernels run
the scan loops of scan.py, which reach the body's ops through the same table.

``Table.ensure(codes)`` compiles (or loads from the cache) the kernels of the codes not yet in
the table, under a lock, before any entry kernel may run a row of them: a slot not yet filled
holds 0, which the loops refuse to call (call.py ``row_kernel`` raises rather than skip a row
silently). The kernels stay referenced by the table: their machine code lives as long as the
process.
"""

import threading

import numpy as np

from ..ops import Op
from .call import (FORWARD_SIGNATURE, SCAN_BINOMIAL, SCAN_CELL, SCAN_STEPS, SLOTS,
                   VJP_SIGNATURE, unpack, value_alpha)
from .codes import ADD, CROSS_ENTROPY, MATMUL, RESHAPE, SUM, WHERE
from .elementwise import (binary_row_forward, binary_row_vjp, unary_row_forward, unary_row_vjp,
                          where_row_forward, where_row_vjp)
from .linalg import matmul_row_forward, matmul_row_vjp
from .movement import shape_row_forward, shape_row_vjp
from .reduce import loss_row_forward, loss_row_vjp, reduce_row_forward, reduce_row_vjp
from . import scan as _scan
from .scan import (scan_backward, scan_binomial_backward, scan_binomial_forward,
                   scan_cell_backward, scan_cell_forward, scan_forward, scan_steps_backward,
                   scan_steps_forward)
from .workers import compile_units, compiled

__all__ = ["CODES", "ENTRY_WEIGHTS", "KERNEL_OF", "NO_KERNEL", "KERNEL_NAMES", "Table",
           "codes_used", "row_kernels", "table"]


def row_kernels(code, dtype):
    """The Python functions of op ``code``'s forward and VJP row kernels for float ``dtype``
    (see call.py), named after the op (``tanh_forward``, ``tanh_vjp``; ``KERNEL_NAMES`` names
    the kernels that are not one op's): the names the compile log shows, and the kernels' own
    files in the kernel cache."""
    forward, vjp = _row_kernels(code, np.dtype(dtype).type, np.dtype(dtype).itemsize)
    name = KERNEL_NAMES.get(code) or Op(code).name.lower()
    forward.__name__ = forward.__qualname__ = f"{name}_forward"
    vjp.__name__ = vjp.__qualname__ = f"{name}_vjp"
    return forward, vjp


def _row_kernels(code, F, itemsize):
    if code >= Op.SCAN:
        return _scan_kernels(code, F, itemsize)

    # The family chain is written here, in the closure, so that Numba prunes it with ``code`` a
    # constant before it inlines the one family function left (elementwise.py says why).
    def forward(ctx, r, check):
        tape, values, ivalues, params, grads, pgrads, need, scratch = unpack(ctx, F, itemsize)
        if code < ADD:
            unary_row_forward(code, tape, values, ivalues, params, r)
        elif code < WHERE:
            binary_row_forward(code, tape, values, ivalues, params, r)
        elif code < SUM:
            where_row_forward(code, tape, values, ivalues, params, r)
        elif code < MATMUL:
            reduce_row_forward(code, tape, values, ivalues, params, r)
        elif code < RESHAPE:
            matmul_row_forward(code, tape, values, ivalues, params, r)
        elif code < CROSS_ENTROPY:
            shape_row_forward(code, tape, values, ivalues, params, r)
        else:
            loss_row_forward(code, tape, values, ivalues, params, r)
        return -1

    def vjp(ctx, r, check):
        tape, values, ivalues, params, grads, pgrads, need, scratch = unpack(ctx, F, itemsize)
        if code < ADD:
            unary_row_vjp(code, tape, values, ivalues, params, grads, pgrads, need, scratch, r)
        elif code < WHERE:
            binary_row_vjp(code, tape, values, ivalues, params, grads, pgrads, need, scratch, r)
        elif code < SUM:
            where_row_vjp(code, tape, values, ivalues, params, grads, pgrads, need, scratch, r)
        elif code < MATMUL:
            reduce_row_vjp(code, tape, values, ivalues, params, grads, pgrads, need, scratch, r)
        elif code < RESHAPE:  # the one family with INTO_VALUE targets (kernels/views.py)
            matmul_row_vjp(code, tape, values, ivalues, params, grads, pgrads, need, scratch, r,
                           value_alpha(ctx))
        elif code < CROSS_ENTROPY:
            shape_row_vjp(code, tape, values, ivalues, params, grads, pgrads, need, scratch, r)
        else:
            loss_row_vjp(code, tape, values, ivalues, params, grads, pgrads, need, scratch, r)
        return -1

    return forward, vjp


def _scan_kernels(code, F, itemsize):
    """The SCAN row's kernels (which pick the kernel of the scan's strategy, at the slots
    after the op codes) and the strategies' own. Compiled functions are globals here, not
    closure variables: a closure's variables are part of its cache key, and a compiled
    function's would change in every process."""
    if code == Op.SCAN:

        def forward(ctx, r, check):
            tape, values, ivalues, params, grads, pgrads, need, scratch = unpack(ctx, F, itemsize)
            return scan_forward(ctx, tape, values, ivalues, params, r, check)

        def vjp(ctx, r, check):
            tape, values, ivalues, params, grads, pgrads, need, scratch = unpack(ctx, F, itemsize)
            return scan_backward(ctx, tape, values, ivalues, params, grads, pgrads, need,
                                 scratch, r, check)

    elif code == SCAN_CELL:

        def forward(ctx, r, check):
            tape, values, ivalues, params, grads, pgrads, need, scratch = unpack(ctx, F, itemsize)
            return scan_cell_forward(ctx, tape, values, ivalues, params, r, check)

        def vjp(ctx, r, check):
            tape, values, ivalues, params, grads, pgrads, need, scratch = unpack(ctx, F, itemsize)
            return scan_cell_backward(ctx, tape, values, ivalues, params, grads, pgrads, need,
                                      scratch, r, check)

    elif code == SCAN_STEPS:

        def forward(ctx, r, check):
            tape, values, ivalues, params, grads, pgrads, need, scratch = unpack(ctx, F, itemsize)
            return scan_steps_forward(ctx, tape, values, ivalues, params, r, check)

        def vjp(ctx, r, check):
            tape, values, ivalues, params, grads, pgrads, need, scratch = unpack(ctx, F, itemsize)
            return scan_steps_backward(ctx, tape, values, ivalues, params, grads, pgrads, need,
                                       scratch, r, check)

    else:

        def forward(ctx, r, check):
            tape, values, ivalues, params, grads, pgrads, need, scratch = unpack(ctx, F, itemsize)
            return scan_binomial_forward(ctx, tape, values, ivalues, params, r, check)

        def vjp(ctx, r, check):
            tape, values, ivalues, params, grads, pgrads, need, scratch = unpack(ctx, F, itemsize)
            return scan_binomial_backward(ctx, tape, values, ivalues, params, grads, pgrads,
                                          need, scratch, r, check)

    return forward, vjp


# Ops whose rows another op's kernels run: a LINEAR row is a LINEAR_ACT row without the
# activation (kernels/linalg.py), and one kernel for both links the product's code once (a
# model with both, an MLP or an RNN with a readout, compiled about 4 s less on one core).
# The four arithmetic ops share ADD's kernels, which branch on the row's op once per run
# (elementwise.py): nearly every program uses two or more of them, and each kernel of its
# own cost about 0.5 s of fixed compile (docs/benchmarks.md, "Machine code only for what
# runs").
KERNEL_OF = {int(Op.LINEAR): int(Op.LINEAR_ACT), int(Op.SUB): int(Op.ADD),
             int(Op.MUL): int(Op.ADD), int(Op.DIV): int(Op.ADD)}

# The names of the kernels that are not one op's: the compile log's and the kernel cache's.
KERNEL_NAMES = {SCAN_CELL: "scan_cell", SCAN_STEPS: "scan_steps",
                  SCAN_BINOMIAL: "scan_binomial", int(Op.ADD): "arithmetic"}


def codes_used(ops, ip_ptr, iparams, start, stop, tape=None, need=None):
    """The table slots rows [start, stop) of a tape run: their op codes and, for a SCAN row,
    the strategies it will take (scan.py ``_strategy``). Given the tape tuple (kernels/call.py)
    and ``need`` (whether each node wants a gradient), that is decided as the scan kernels
    decide it, so a program compiles only the strategies it runs; without them, every
    strategy the scan may take."""
    codes = set(np.unique(ops[start:stop]).tolist())
    if Op.SCAN in codes:
        for r in np.flatnonzero(ops[start:stop] == Op.SCAN) + start:
            ip = iparams[ip_ptr[r] : ip_ptr[r + 1]]
            codes |= _strategies(ops, ip, tape, need)
    return codes


def _strategies(ops, ip, tape, need):
    """The strategies of the scan with attributes ``ip``: scan_forward takes the single-cell
    kernel when ``_cell_row`` finds one cell, scan_backward when also the carry's gradient is
    wanted; else binomial checkpoints (ip[11] < 0) or the steps kernel."""
    general = SCAN_BINOMIAL if ip[_scan.CKPT_EVERY] < 0 else SCAN_STEPS
    body = ops[ip[_scan.BODY_START] : ip[_scan.BODY_END]]
    if ip[_scan.CKPT_EVERY] < 0 or body.size != 1 or body[0] != Op.LINEAR_ACT:
        return {general}  # _cell_row's first tests
    if tape is None or need is None:
        return {general, SCAN_CELL}
    if _scan._cell_row.py_func(tape, ip, _scan._x_offset.py_func(tape, ip)) < 0:
        return {general}
    return {SCAN_CELL} if need[ip[_scan.HEADER + _scan.CARRY_OUT]] else {SCAN_CELL, general}


# Ops without row kernels, whose rows the loops skip (call.py ``has_kernel``): SCAN_BEGIN marks
# where a loop's body starts; a RESHAPE's output aliases its input's slot.
NO_KERNEL = frozenset((int(Op.SCAN_BEGIN), int(Op.RESHAPE)))
# Codes with row kernels (the scan strategies' slots are not ops: ``codes_used`` adds them).
CODES = tuple(int(op) for op in Op if op not in NO_KERNEL)


class Table:
    """The dispatch table of one float dtype: ``addresses`` (int64, 2 * SLOTS), forward
    kernels at [code], VJP kernels at [SLOTS + code], filled by ``ensure``."""

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)
        self.lock = threading.Lock()
        self.kernels = {}  # code -> (forward dispatcher, vjp dispatcher)
        self.ready = np.zeros(SLOTS, bool)
        self.addresses = np.zeros(2 * SLOTS, np.int64)
        # 0: not filled yet (call.py ``row_kernel`` refuses to run it)

    def signatures(self):
        return FORWARD_SIGNATURE, VJP_SIGNATURE

    def ensure(self, codes, entries=()):
        """Compile or load the row kernels of the op ``codes`` (any iterable of ints) that the
        table does not hold yet. Cheap when it holds them all. ``entries``: (dispatcher,
        argument types) of the entry kernels the caller will run next, compiled alongside the
        row kernels when several processes compile (workers.py); else left to the call."""
        codes = np.array(sorted(codes) if isinstance(codes, (set, frozenset)) else codes,
                         np.int64).ravel()
        if codes.size == 0 or self.ready[codes].all():
            return
        with self.lock:  # two threads at first use must not both fill a slot
            fwd_sig, vjp_sig = self.signatures()
            todo, runs = [], {}
            for code in sorted(set(codes.tolist())):
                if self.ready[code] or code in NO_KERNEL:
                    self.ready[code] = True
                    continue
                if code not in CODES and code not in KERNEL_NAMES:
                    raise ValueError(f"fastgrad internal error: no op has code {code}")
                owner = KERNEL_OF.get(code, code)
                if owner not in runs and not self.ready[owner]:
                    todo.append((owner, *row_kernels(owner, self.dtype)))
                runs.setdefault(owner, []).append(code)
            # on several cores where that helps: the rest below then loads from the cache
            units = [(f, fwd_sig, _family(code), _weight(code, 0)) for code, f, _ in todo]
            units += [(v, vjp_sig, _family(code), _weight(code, 1)) for code, _, v in todo]
            units += [(entry, types, entry, _entry_weight(entry)) for entry, types in entries]
            done = compile_units(units if todo else [], self.dtype)
            for owner, forward, vjp in todo:
                fwd, fwd_address = done.get(forward) or compiled(forward, fwd_sig)
                bwd, vjp_address = done.get(vjp) or compiled(vjp, vjp_sig)
                self._fill(owner, (fwd, bwd), fwd_address, vjp_address)
            for owner, users in runs.items():
                for code in users:
                    self._fill(code, self.kernels[owner], self.addresses[owner],
                               self.addresses[SLOTS + owner])

    def _fill(self, code, kernels, fwd_address, vjp_address):
        self.kernels[code] = kernels
        self.addresses[code] = fwd_address
        self.addresses[SLOTS + code] = vjp_address
        self.ready[code] = True


# Rough compile costs in seconds on one core, measured cold (docs/benchmarks.md, "Cold start"):
# what compile_units balances its processes with. The first kernel of a group pays for the
# helpers its members share; the weights spread that over them.
ENTRY_WEIGHTS = {"train_step": 3.8, "fit_epoch": 3.8, "replay_forward": 1.0,
                 "replay_backward": 0.8}


def _entry_weight(entry):
    return ENTRY_WEIGHTS.get(getattr(entry, "py_func", entry).__name__, 1.0)


def _family(code):
    """The group of an op code's kernels, which one process compiles: its family (the
    hundreds), whose forward and VJP kernels link the same helpers. The single-cell scan loops
    call the fused cell's own kernels (linalg.py), forward ones in the VJP too (it recomputes
    checkpointed steps), so they go with the matmul family; the other scan strategies are each
    their own group."""
    if code == SCAN_CELL:
        return MATMUL // 100
    return code if code > SCAN_CELL else code // 100


def _weight(code, vjp):
    if code == SCAN_CELL:  # the loops alone: the cell's kernels come with its family
        return 3.3 if vjp else 1.0
    if code >= Op.SCAN:  # the scan row, and the loops of the other strategies
        return 2.5 if code > Op.SCAN else 0.2
    if MATMUL <= code < RESHAPE:
        return 2.1 if vjp else 1.2
    if code >= CROSS_ENTROPY:
        return 1.0 if vjp else 1.2
    if code == ADD:  # the arithmetic kernels (KERNEL_OF)
        return 1.1 if vjp else 0.7
    return 0.55 if vjp else 0.4


_tables = {}
_tables_lock = threading.Lock()


def table(dtype) -> Table:
    """The dispatch table of float ``dtype`` (created at first use)."""
    key = np.dtype(dtype)
    found = _tables.get(key)
    if found is None:
        with _tables_lock:
            found = _tables.get(key)
            if found is None:
                found = _tables[key] = Table(key)
    return found
