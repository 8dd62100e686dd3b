"""The tape: a recorded computation as flat NumPy arrays, replayed by fastgrad.kernels.

Format (R rows, N nodes; every integer array is int64):

    rows     ops[r]         op code (fastgrad.ops.Op)
             outs[r]        node id the row writes
             in_ptr[r:r+2]  the row's operands are in_idx[in_ptr[r]:in_ptr[r+1]]  (node ids)
             ip_ptr[r:r+2]  its integer attributes are iparams[ip_ptr[r]:ip_ptr[r+1]]
             fp_ptr[r:r+2]  its float attributes are fparams[fp_ptr[r]:fp_ptr[r+1]] (tape dtype)
    nodes    node_off[v]    offset of node v in its arena
             node_size[v]   number of elements
             node_kind[v]   (named in fastgrad/ops/nodes.py) FLOAT_NODE 0: float node in
                            ``values``; INDEX_NODE 1: integer node (indices, labels) in
                            ``ivalues``; PARAM_NODE 2: parameter of a compiled program, in its
                            flat buffer; EXTERNAL_NODE 3: a compiled program's input read in
                            place from the caller's array (``external``, from offset 0; its
                            gradient slot stays in grads)
             node_need[v]   1 if a gradient must flow to v
             shapes[v]      its shape (Python tuple; also node_shape / node_ndim arrays on demand)
    arenas   values         one contiguous buffer of the tape's float dtype; grads mirrors it
             ivalues        one int64 buffer for integer nodes

Nodes without a producing row are inputs: leaves imported from tensors (their values are
copied in), constants, or compile-time input slots. Rows are in recording order, which is a
topological order, so a forward replay runs rows 0..R-1 and a backward replay runs them in reverse.
A RESHAPE row's output shares its input's slot (same offset), so it costs nothing to replay.

Example, f = (x + y) * z on scalars:

    %0 = leaf f64[]        x
    %1 = leaf f64[]        y
    %2 = add %0 %1 : f64[]
    %3 = leaf f64[]        z
    %4 = mul %2 %3 : f64[]

Arrays grow by amortised doubling. A tape holds one float dtype; mixing float32 and float64
operands is an error at record time (no silent promotion). The memory guard counts the tape's
buffers together at the capacity they are allocated with (and, while an array grows, its old
buffer too): growing past fg.set_memory_limit (or the available memory) is an error before the
allocation, and a doubling that would pass the limit grows only as far as it allows.
``fg.save`` writes these arrays, and ``fastgrad.io.validate_tape`` checks every invariant
above before a loaded tape reaches a kernel.
"""

from __future__ import annotations

import math
import threading
import warnings
import weakref

import numpy as np

from . import blas_threads as _blas_threads
from .anomaly import anomaly_enabled, describe_anomaly, locate
from .tape_groups import BodyRecording, ProgramArrays, TensorLinks
from ..kernels import dispatch
from ..kernels.replay import replay_backward, replay_entries as _replay_entries, replay_forward
from ..core.errors import FastgradError, fail
from ..core.memory import available_memory, guard_memory, memory_limit, needs_no_check
from ..ops import TABLE, Op, fmt
from ..ops.control import BEGIN_LAYOUT, SCAN_LAYOUT
from ..ops.nodes import EXTERNAL_NODE, FLOAT_NODE, FUSED_LABEL, INDEX_NODE, PARAM_NODE

__all__ = ["GrowingArray", "RECORDING", "Tape", "VJP_READS_NO_VALUES", "VJP_READS_OTHER_FACTOR",
           "same_bits"]


_TAPE_FIX = "use smaller shapes or batches (or raise fg.set_memory_limit)"


class GrowingArray:
    """An int64 or float array with amortised-doubling append.

    ``owner`` (a weak reference to the Tape holding it, set by ``Tape.__setattr__``) lets the
    memory guard see the tape's other buffers when this one grows.
    """

    __slots__ = ("a", "n", "owner")

    def __init__(self, dtype, cap=16):
        self.a = np.zeros(cap, dtype)
        self.n = 0
        self.owner = None

    def reserve(self, k, what="tape", fix=_TAPE_FIX):
        need = self.n + k
        if need > self.a.size:
            cap = max(need, 2 * self.a.size)
            tape = self.owner() if self.owner is not None else None
            if tape is not None:
                cap = tape.growth_capacity(self, need, cap, what, fix)
            b = np.zeros(cap, self.a.dtype)
            b[: self.n] = self.a[: self.n]
            self.a = b

    def extend(self, items):
        k = len(items)
        self.reserve(k)
        self.a[self.n : self.n + k] = items
        self.n += k

    def append(self, item):
        self.reserve(1)
        self.a[self.n] = item
        self.n += 1

    @property
    def view(self):
        return self.a[: self.n]

    def __getstate__(self):  # a weak reference cannot be pickled; the tape sets it again
        return self.a, self.n

    def __setstate__(self, state):
        self.a, self.n = state
        self.owner = None

    def copy(self):
        new = GrowingArray(self.a.dtype, 0)
        new.a, new.n = self.a.copy(), self.n
        return new


def _nbytes(value) -> int:
    if isinstance(value, GrowingArray):
        return value.a.nbytes
    return value.nbytes if isinstance(value, np.ndarray) else 0


# The size of the value arena of the last tape swept backward, per dtype: a new tape starts with
# that capacity. An eager training loop records the same graph every step, and its arena grew
# from 64 values by doubling, a new buffer and a copy each time (half of a 784-128-10 step's
# time; docs/benchmarks.md, "Where the eager step's time goes"). A hint only: any tape still
# grows as it needs, and a start that would need a memory check starts small.
_LAST_ARENA = {}


def _start_capacity(dtype) -> int:
    n = _LAST_ARENA.get(dtype, 64)
    return n if needs_no_check(n * dtype.itemsize) else 64


class Tape:
    """A recorded computation in flat arrays. See the module docstring for the format."""

    def __init__(self, dtype):
        try:
            with warnings.catch_warnings():  # NumPy's deprecated aliases are refused below
                warnings.simplefilter("ignore", DeprecationWarning)
                self.dtype = np.dtype(dtype)
        except (TypeError, ValueError):
            self.dtype = None  # no dtype at all: refused below
        if self.dtype is None or self.dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            # (tested for None first: NumPy compares a dtype equal to None, its default float64)
            raise FastgradError(f"Tape: unsupported dtype {dtype!r}. Fix: a tape holds "
                                "float32 or float64 values")
        self.ops = GrowingArray(np.int64)
        self.outs = GrowingArray(np.int64)
        self.in_ptr = GrowingArray(np.int64)
        self.in_idx = GrowingArray(np.int64)
        self.ip_ptr = GrowingArray(np.int64)
        self.iparams = GrowingArray(np.int64)
        self.fp_ptr = GrowingArray(np.int64)
        self.fparams = GrowingArray(self.dtype)
        for ptr in (self.in_ptr, self.ip_ptr, self.fp_ptr):
            ptr.append(0)
        self.node_off = GrowingArray(np.int64)
        self.node_size = GrowingArray(np.int64)
        self.node_kind = GrowingArray(np.int8)
        self.node_need = GrowingArray(np.int8)
        self.shapes: list[tuple] = []
        self.labels: dict[int, str] = {}  # node -> "leaf", "const", "input 0", ...
        self.producer: dict[int, int] = {}  # node -> row
        self.values = GrowingArray(self.dtype, _start_capacity(self.dtype))
        self.ivalues = GrowingArray(np.int64, 8)
        self.grads: np.ndarray | None = None
        self._scratch: np.ndarray | None = None
        self.program_arrays = ProgramArrays.empty(self.dtype)  # fg.compile's parameters, inputs
        self.tensors = TensorLinks()  # the tensors the nodes copy (the recorder's)
        # held by a native call on this tape (flush, backward) and by whatever changes it (with
        # RECORDING first): threads sharing a tape take turns, never interleave rows
        self.lock = threading.RLock()
        self.int_bounds: dict[int, tuple] = {}  # integer input node -> (lo, hi) valid range
        self.n_done = 0  # rows whose values are computed
        self.n_dispatched = 0  # rows whose ops' kernels are in the dispatch table
        self.body = BodyRecording()  # an fg.scan body being recorded here
        self.scan_rows: list[int] = []
        self.merged_into: Tape | None = None
        self.node_shift = 0

    def __setattr__(self, name, value):
        if isinstance(value, GrowingArray):  # the guard sees the whole tape when one array grows
            value.owner = weakref.ref(self)
        object.__setattr__(self, name, value)

    def nbytes(self) -> int:
        """Bytes of every buffer the tape holds (arrays at their capacity, gradients, scratch;
        not the parameter arena, which belongs to the optimizer)."""
        return sum(_nbytes(v) for v in vars(self).values())

    def growth_capacity(self, grow, need, cap, what, fix) -> int:
        """The capacity array ``grow`` (of this tape) may grow to: ``cap`` (doubling), less if
        the memory limit allows less, never below ``need``; past the limit a FastgradError.

        While growing, the old buffer and the new one are both held, so the guard counts the
        tape's bytes as they are (old buffer included) plus the new buffer."""
        item = grow.a.itemsize
        if needs_no_check(cap * item):
            return cap
        held = self.nbytes()
        # a user limit bounds the whole tape; the available memory, the new buffer
        limit = memory_limit()
        room = (limit - held if limit is not None else available_memory()) // item
        if need > room:
            guard_memory(what, need * item, fix, held=held)
            room = need  # the guard passed (the available memory went up meanwhile)
        return max(need, min(cap, room))

    def copy(self) -> "Tape":
        """An independent copy: arrays, node table and bookkeeping copied, leaf tensors shared.

        ``fg.compile`` rewrites its program's tape (parameter nodes move into the flat buffer);
        on a copy, a user's eager graph merged into the trace keeps working as recorded.

        >>> import fastgrad as fg
        >>> y = fg.tensor([1.0, 2.0], requires_grad=True) * 3.0
        >>> t = y.tape.copy()
        >>> t.n_rows == y.tape.n_rows and t.values.a is not y.tape.values.a
        True
        """
        new = Tape.__new__(Tape)
        with RECORDING, self.lock:
            state = self.__getstate__()
        for name, value in state.items():
            if isinstance(value, GrowingArray):
                value = value.copy()
                value.owner = weakref.ref(new)
            elif isinstance(value, np.ndarray):
                value = value.copy()
            elif isinstance(value, (list, dict)):
                value = type(value)(value)
            elif isinstance(value, (TensorLinks, BodyRecording, ProgramArrays)):
                value = value.copy()
            new.__dict__[name] = value
        new.merged_into, new.node_shift = None, 0
        new.lock = threading.RLock()
        return new

    def __getstate__(self):  # copy.deepcopy, pickle: a lock is not copied, a copy gets its own
        state = dict(vars(self))
        del state["lock"]
        return state

    def __setstate__(self, state):  # unpickled: its arrays learn their tape again (setattr)
        for name, value in state.items():
            setattr(self, name, value)
        self.lock = threading.RLock()

    # ------------------------------------------------------------------ building
    @property
    def n_rows(self) -> int:
        return self.ops.n

    @property
    def n_nodes(self) -> int:
        return self.node_off.n

    def add_node(self, shape, kind=FLOAT_NODE, need=False, alias_of=None, label=None,
                 what=None) -> int:
        shape = tuple(int(s) for s in shape)
        size = math.prod(shape)
        if alias_of is not None:
            off = int(self.node_off.a[alias_of])
        else:
            arena = self.values if kind == FLOAT_NODE else self.ivalues
            off = arena.n
            # growing: refuse what cannot fit (the guard counts the whole tape) before allocating
            arena.reserve(size, what or label or "tape",
                          f"a result of shape {fmt(shape)} does not fit; " + _TAPE_FIX)
            arena.n += size
        v = self.n_nodes
        self.node_off.append(off)
        self.node_size.append(size)
        self.node_kind.append(kind)
        self.node_need.append(1 if need else 0)
        self.shapes.append(shape)
        if label:
            self.labels[v] = label
        return v

    def _arena(self, v, grads=False):
        kind = self.node_kind.a[v]
        if grads:
            return self.program_arrays.param_grads if kind == PARAM_NODE else self.grads
        if kind == EXTERNAL_NODE:
            return self.program_arrays.external.reshape(-1)
        return (self.values.a, self.ivalues.a, self.program_arrays.param_arena)[kind]

    def node_values(self, v) -> np.ndarray:
        """The node's values as an array of its shape (a view into its arena)."""
        arena = self._arena(v)
        off = int(self.node_off.a[v]) if self.node_kind.a[v] != EXTERNAL_NODE else 0
        return arena[off : off + int(self.node_size.a[v])].reshape(self.shapes[v])

    def add_input(self, array, kind=FLOAT_NODE, need=False, label="input", what=None) -> int:
        """A node without a producing row, holding a copy of ``array``."""
        array = np.asarray(array)
        v = self.add_node(array.shape, kind=kind, need=need, label=label, what=what)
        self.node_values(v)[...] = array
        return v

    def record(self, op: Op, inputs, out_shape, iparams, fparams, need) -> int:
        alias = inputs[0] if op == Op.RESHAPE else None
        out = self.add_node(out_shape, need=need, alias_of=alias, what=Op(op).name.lower())
        self.ops.append(int(op))
        self.outs.append(out)
        self.in_idx.extend(inputs)
        self.in_ptr.append(self.in_idx.n)
        self.iparams.extend(iparams)
        self.ip_ptr.append(self.iparams.n)
        self.fparams.extend(fparams)
        self.fp_ptr.append(self.fparams.n)
        self.producer[out] = self.n_rows - 1
        return out

    def remove_row(self, r):
        """Delete row ``r``: its operands and attributes go, later rows move up by one and its
        output node stays as an input without a producer. ``fg.scan`` takes back its
        SCAN_BEGIN row with it when the step function fails, so the tape stays valid."""
        n, out = self.n_rows, int(self.outs.a[r])
        for items, ptr in ((self.in_idx, self.in_ptr), (self.iparams, self.ip_ptr),
                           (self.fparams, self.fp_ptr)):
            lo, hi = int(ptr.a[r]), int(ptr.a[r + 1])
            items.a[lo : items.n - (hi - lo)] = items.a[hi : items.n].copy()
            items.n -= hi - lo
            ptr.a[r + 1 : n] = ptr.a[r + 2 : n + 1] - (hi - lo)
            ptr.n -= 1
        for column in (self.ops, self.outs):
            column.a[r : n - 1] = column.a[r + 1 : n].copy()
            column.n -= 1
        self.producer = {v: row - (row > r) for v, row in self.producer.items() if v != out}
        self.scan_rows = [row - (row > r) for row in self.scan_rows]
        self.n_done -= self.n_done > r
        self.n_dispatched -= self.n_dispatched > r

    def hoist_last_row(self):
        """Move the last row, recorded in the scan body being recorded but reading only nodes
        from outside it, to just before the body's SCAN_BEGIN marker: the loop then computes
        it once, not at every step, and its VJP runs once, on the gradient the steps summed
        into its output (a body reads outside nodes in mode 1, ``grad_modes``). Every later
        row moves down by one; rows are named by number only in the columns fixed here."""
        r, pos = self.n_rows - 1, self.body.marker
        out = int(self.outs.a[r])
        for items, ptr in ((self.in_idx, self.in_ptr), (self.iparams, self.ip_ptr),
                           (self.fparams, self.fp_ptr)):
            a, lo, hi = int(ptr.a[pos]), int(ptr.a[r]), int(ptr.a[r + 1])
            length = hi - lo
            moved = items.a[lo:hi].copy()
            items.a[a + length : hi] = items.a[a:lo].copy()
            items.a[a : a + length] = moved
            ptr.a[pos + 1 : r + 1] = ptr.a[pos:r] + length
        for column in (self.ops, self.outs):
            moved = column.a[r]
            column.a[pos + 1 : r + 1] = column.a[pos:r].copy()
            column.a[pos] = moved
        for row in range(pos, r + 1):  # the rows that moved: the body so far and its marker
            self.producer[int(self.outs.a[row])] = row
        self.scan_rows = [row + (row >= pos) for row in self.scan_rows]
        self.n_done = min(self.n_done, pos)
        self.n_dispatched = min(self.n_dispatched, pos)
        self.body.marker += 1
        self.body.hoisted.add(out)

    def rewrite(self, replace, drop):
        """Rewrite rows in place: ``replace`` maps a row to its new (op, inputs, iparams,
        fparams), writing the same output node; the rows in ``drop`` go, their output nodes
        stay unwritten (labelled FUSED_LABEL: no row reads them). Row numbers held in the
        tape (scan headers and markers, ``scan_rows``, ``producer``) follow the rows that stay.
        The fusion pass (fastgrad/transforms/fusion.py) is the caller."""
        n = self.n_rows
        if not replace and not drop:
            return
        kept = [r for r in range(n) if r not in drop]
        new_of = {r: i for i, r in enumerate(kept)}
        for r in drop:  # no gradient either: nothing clears or reads its slot
            self.labels[int(self.outs.a[r])] = FUSED_LABEL
            self.node_need.a[int(self.outs.a[r])] = 0
        ptrs = ((self.in_ptr.a, self.in_idx.a), (self.ip_ptr.a, self.iparams.a),
                (self.fp_ptr.a, self.fparams.a))
        rows = []
        for r in kept:
            out = int(self.outs.a[r])
            if r in replace:
                op, ins, ip, fp = replace[r]
            else:
                op = int(self.ops.a[r])
                ins, ip, fp = (a[p[r] : p[r + 1]].copy() for p, a in ptrs)
            rows.append((int(op), out, np.asarray(ins, np.int64), np.asarray(ip, np.int64),
                         np.asarray(fp, self.dtype)))
        at_begin = BEGIN_LAYOUT.index("scan_row")
        fields = [SCAN_LAYOUT.index(f) for f in ("begin_row", "body_start", "body_end")]
        for i, (op, out, ins, ip, fp) in enumerate(rows):
            if op == Op.SCAN_BEGIN and ip[at_begin] >= 0:
                ip[at_begin] = new_of[int(ip[at_begin])]
            elif op == Op.SCAN:
                begin = new_of[int(ip[fields[0]])]
                ip[fields[0]], ip[fields[1]], ip[fields[2]] = begin, begin + 1, i
        for grow, ptr, pos in ((self.in_idx, self.in_ptr, 2), (self.iparams, self.ip_ptr, 3),
                               (self.fparams, self.fp_ptr, 4)):
            grow.n, ptr.n = 0, 1
            for row in rows:
                grow.extend(row[pos])
                ptr.append(grow.n)
        self.ops.n = self.outs.n = 0
        self.ops.extend([row[0] for row in rows])
        self.outs.extend([row[1] for row in rows])
        self.producer = {v: new_of[r] for v, r in self.producer.items() if r in new_of}
        self.scan_rows = [new_of[r] for r in self.scan_rows]
        if self.body.marker >= 0:
            self.body.marker = new_of[self.body.marker]
        first = min(list(replace) + list(drop))
        self.n_done = min(self.n_done, first)
        self.n_dispatched = min(self.n_dispatched, first)

    def body_nodes(self, first: int, end: int, b0: int, b1: int) -> tuple[list[int], set]:
        """(own, captured): the nodes first..end-1 recorded for an fg.scan body whose rows are
        b0..b1-1, split by the one rule the loop kernels, the recorder (transforms/scan.py) and
        the validator (io/validate.py) share. Captured: the body reads them but no step computes
        them (leaves and constants imported in the body, integer and parameter nodes, outputs
        of rows hoisted out of the body (before its SCAN_BEGIN row, b0 - 1) or fused away, and
        reshapes of those or of outer nodes, which share their slot). Own: the others with a
        size, the state a step writes and the loop saves per step."""
        kind, size, labels = self.node_kind.view, self.node_size.view, self.labels
        ops, outs = self.ops.view, self.outs.view
        in_ptr, in_idx = self.in_ptr.view, self.in_idx.view
        captured = {v for v in range(first, end)
                    if labels.get(v) in ("leaf", "const", FUSED_LABEL) or kind[v] != FLOAT_NODE}
        captured.update(int(v) for v in outs[: max(b0 - 1, 0)] if first <= v < end)  # hoisted
        for r in range(b0, b1):
            if ops[r] == Op.RESHAPE and in_ptr[r + 1] > in_ptr[r]:
                src = int(in_idx[in_ptr[r]])
                if src < first or src in captured:
                    captured.add(int(outs[r]))
        return [v for v in range(first, end) if v not in captured and size[v] > 0], captured

    def outside_body(self, v) -> bool:
        """Whether node v, read by the scan body being recorded, is the same at every step:
        made before the body, a leaf or constant captured into it, or a hoisted row's."""
        return (v < self.body.first_node or v in self.body.hoisted
                or (v not in self.producer
                    and (self.labels.get(v) in ("leaf", "const")
                         or self.node_kind.a[v] != FLOAT_NODE)))

    # ------------------------------------------------------------------ replay
    def arrays(self, entries=(), dispatch_rows=True):
        """The tape as the tuple the replay kernels take (kernels/call.py), its ops' kernels
        compiled or loaded first: the rows recorded since the last call are looked up in the
        dispatch table of the tape's dtype, which compiles an op's kernels at its first use
        (with ``entries``, the entry kernels the caller runs next: ``Table.ensure``). Without
        ``dispatch_rows``, the caller must call this again before any kernel runs the tape."""
        table = dispatch.table(self.dtype)
        arrays = (self.ops.view, self.outs.view, self.in_ptr.view, self.in_idx.view,
                  self.ip_ptr.view, self.iparams.view, self.fp_ptr.view, self.fparams.a,
                  self.node_off.view, self.node_size.view, self.node_kind.view,
                  self.program_arrays.external.reshape(-1), table.addresses)
        done = getattr(self, "n_dispatched", 0)
        if dispatch_rows and done < self.n_rows:
            table.ensure(dispatch.codes_used(self.ops.a, self.ip_ptr.a, self.iparams.a, done,
                                             self.n_rows, arrays, self.node_need.view),
                         entries)
            self.n_dispatched = self.n_rows
        return arrays

    def flush(self, check=False):
        """Compute every row not yet computed (one native call, and one more per fg.scan body
        or failed step whose slots wait for their values: ``fill_body_slots``)."""
        if self.n_done < self.n_rows:
            with self.lock:
                self.fill_body_slots(check)
                self._run_rows(self.n_rows, check)

    def fill_body_slots(self, check=False):
        """Give the carry and x_t slots of fg.scan bodies their values (the initial carries',
        xs[0]), each once the rows before its body have run (running them first). fg.scan
        records without computing anything, so that the kernels of the rows before a loop
        compile with the loop's; the slots get their values when something reads a value
        (``flush``), also after a failed recording has left the step's rows on the tape."""
        with self.lock:
            while self.body.slot_sources:
                at = min(self._slots_row(row) for row, *_ in self.body.slot_sources)
                self._run_rows(at, check)
                waiting = []
                for row, slot, source, first in self.body.slot_sources:
                    if self._slots_row(row) == at:
                        values = self.node_values(source)
                        self.node_values(slot)[...] = values[0] if first else values
                    else:
                        waiting.append((row, slot, source, first))
                self.body.slot_sources = waiting

    def _slots_row(self, row):
        return self.body.marker if row < 0 else row

    def _run_rows(self, stop, check):
        """Run rows n_done .. stop-1 (the caller holds the lock)."""
        if self.n_done >= stop:
            return
        # the replay loops compile with the ops' kernels; the backward one only for a tape
        # with leaves that want gradients
        entries = _replay_entries(self.dtype)[: 2 if self.tensors.leaves else 1]
        bad = replay_forward(self.arrays(entries), self.values.a, self.ivalues.a,
                             self.program_arrays.param_arena, self.n_done, stop,
                             check or anomaly_enabled())
        if bad >= 0:
            row, _, scan_row = locate(self, bad)
            # a scan stopped inside its body did not finish: it runs again next flush
            self.n_done = scan_row if scan_row >= 0 else row + 1
            raise describe_anomaly(self, bad, "forward")
        self.n_done = stop

    def backward(self, node, seed):
        """Reverse sweep from ``node`` seeded with ``seed``; returns the gradient arena.

        The caller holds ``self.lock`` until it has read the gradients it needs (the arena is
        the tape's, reused by the next backward). Raises FastgradError before the sweep when a
        row it runs reads a leaf copy whose leaf has been changed since (check_saved_leaves)."""
        _blas_threads.refresh()
        self.flush()
        _LAST_ARENA[self.dtype] = max(64, self.values.n)
        stop = self.producer.get(node, -1) + 1
        self.check_saved_leaves(node, stop)
        if self.grads is None or self.grads.size < self.values.a.size:
            guard_memory("backward", self.values.a.size * self.dtype.itemsize,
                         "the gradient buffer mirrors the tape's values; use smaller batches, "
                         "or checkpoint= in fg.scan for long loops", held=self.nbytes())
            self.grads = np.zeros(self.values.a.size, self.dtype)
        else:
            self.grads[: self.values.n] = 0
        off = int(self.node_off.a[node])
        self.grads[off : off + int(self.node_size.a[node])] = np.asarray(seed).ravel()
        arrays = self.program_arrays
        bad = replay_backward(self.arrays(), self.values.a, self.ivalues.a, arrays.param_arena,
                              self.grads, arrays.param_grads, self.grad_modes(), self.scratch(),
                              0, stop, anomaly_enabled(), 0.0)
        if bad >= 0:
            _, _, scan_row = locate(self, bad)
            if scan_row >= 0:  # the scan's slots hold a step of the aborted sweep: rerun it
                self.n_done = min(self.n_done, scan_row)
            raise describe_anomaly(self, bad, "backward")
        return self.grads

    def check_saved_leaves(self, node, stop):
        """Raise FastgradError if a row that the backward sweep from ``node`` runs read a leaf
        copy (``copies``) whose leaf has changed since, and its VJP needs that value (PyTorch's
        version-counter error). Changes made behind fastgrad's back (a NumPy array shared through
        ``fg.from_numpy``, a write into ``.numpy()``) count too: the copy is compared with the
        leaf's current data, which a version counter could not see.

        Cost: one comparison per leaf copied into the tape before ``node``; the walk over the
        rows only when a leaf has changed. Rows that do not reach ``node`` (an earlier loss on
        the same tape) may read an old copy: their values are not used.

        >>> import fastgrad as fg
        >>> w = fg.tensor([3.0], requires_grad=True)
        >>> loss = (w * w).sum()
        >>> w.numpy()[:] = 2.0  # changed after mul saved it
        >>> loss.backward()
        Traceback (most recent call last):
        fastgrad.core.errors.FastgradError: backward: a variable needed for gradient computation ...
        """
        changed = {v: leaf for leaf, v in self.tensors.copies
                   if v < node and not same_bits(self.node_values(v), leaf.numpy())}
        if not changed:
            return
        live = np.zeros(self.n_nodes, bool)  # nodes whose gradient the sweep from node needs
        live[node] = True
        scans = {r: [] for r in self.scan_rows}  # SCAN row -> the results it writes (carries
        for v, r in self.producer.items():      # at T, stacked) besides its outs node
            if r in scans:
                scans[r].append(v)
        ops, outs, ptr, idx = self.ops.a, self.outs.a, self.in_ptr.a, self.in_idx.a
        need = self.node_need.a
        for r in range(stop - 1, -1, -1):
            op = int(ops[r])
            if not (live[outs[r]] or (op == Op.SCAN and live[scans.get(r, [])].any())):
                continue
            ins = idx[ptr[r] : ptr[r + 1]]
            live[ins] = True
            if op == Op.SCAN:  # the body rows run T times inside it: all of them are needed
                b0, b1 = self.scan_body(r)
                live[outs[b0:b1]] = True
            if op in VJP_READS_NO_VALUES:
                continue
            for j, v in enumerate(ins.tolist()):
                if v in changed and not (op in VJP_READS_OTHER_FACTOR and (
                        j >= 2 or not need[ins[1 - j]])):
                    leaf = changed[v]
                    what = "leaf" if leaf.requires_grad else "constant"
                    raise fail(
                        "backward", "a variable needed for gradient computation has been "
                        f"modified by an inplace operation: the {what} tensor of shape "
                        f"{fmt(leaf.shape)} ({leaf.dtype}) read by {Op(op).name.lower()} "
                        f"(row {r}, node %{v}) holds other values than when that op was "
                        "recorded", "call backward() before changing it (before "
                        "optimizer.step(), or before writing into its array), or recompute the "
                        "forward pass after the change; detach() a tensor carried across "
                        "optimizer steps")

    def scan_body(self, r) -> tuple[int, int]:
        """The body rows [body_start, body_end) of the SCAN row ``r``."""
        at = int(self.ip_ptr.a[r])
        return (int(self.iparams.a[at + SCAN_LAYOUT.index("body_start")]),
                int(self.iparams.a[at + SCAN_LAYOUT.index("body_end")]))

    def grad_modes(self) -> np.ndarray:
        """Per node: 0 no gradient, 1 accumulate, 2 sole consumer (its VJP may overwrite)."""
        need = self.node_need.view.astype(np.int8)
        uses = np.bincount(self.in_idx.view, minlength=self.n_nodes)[: self.n_nodes]
        reshapes = self.ops.view == Op.RESHAPE
        aliased = np.zeros(self.n_nodes, bool)  # a RESHAPE output shares its input's slot
        aliased[self.outs.view[reshapes]] = True
        aliased[self.in_idx.view[self.in_ptr.view[:-1][reshapes]]] = True
        modes = np.where((need == 1) & (uses == 1) & ~aliased, 2, need).astype(np.int8)
        for r in self.scan_rows:  # nodes a scan body reads from outside run T times: accumulate
            b0, b1 = self.scan_body(r)
            used = self.in_idx.a[self.in_ptr.a[b0] : self.in_ptr.a[b1]]
            modes[used] = np.minimum(modes[used], 1)
            modes[self.outs.a[b0:b1]] = np.minimum(modes[self.outs.a[b0:b1]], 1)
        return modes

    def scratch(self) -> np.ndarray:
        """A work buffer as large as the largest node, plus the largest LINEAR_ACT output (its
        VJP keeps the pre-activation gradient there while the matmul VJP uses the rest), kept:
        kernels must not allocate."""
        size = self.scratch_size()
        if self._scratch is None or self._scratch.size < size:
            guard_memory("backward", size * self.dtype.itemsize,
                         "the scratch buffer is as large as the largest node; " + _TAPE_FIX,
                         held=self.nbytes())
            self._scratch = np.zeros(size, self.dtype)
        return self._scratch

    def scratch_size(self) -> int:
        """Elements of the scratch buffer (see ``scratch``), at least 1."""
        size = int(self.node_size.view.max()) if self.n_nodes else 1
        fused = self.outs.view[self.ops.view == Op.LINEAR_ACT]
        size += int(self.node_size.a[fused].max()) if fused.size else 0
        return max(size, 1)

    def compiled_nbytes(self) -> int:
        """Bytes a compiled program built from this tape holds (training/program.py): its copy
        of the tape, the tape's integer arrays packed (cast, then concatenated) and one float
        buffer of float attributes, gradients (as many as values) and scratch."""
        ints = sum(g.a.nbytes for g in vars(self).values()
                   if isinstance(g, GrowingArray) and g.a.dtype != self.dtype)
        floats = self.fparams.a.size + self.values.a.size + self.scratch_size()
        return self.nbytes() + 2 * ints + floats * self.dtype.itemsize

    def node_grad(self, v) -> np.ndarray:
        off = int(self.node_off.a[v])
        return self._arena(v, True)[off : off + int(self.node_size.a[v])].reshape(self.shapes[v])

    # ------------------------------------------------------------------ merging
    def absorb(self, other: "Tape"):
        """Append ``other``'s rows and nodes to this tape; ``other`` then forwards to it. The
        caller holds RECORDING; both tapes' locks are taken here (after ``self``'s)."""
        with self.lock, other.lock:
            self._absorb(other)

    def _absorb(self, other: "Tape"):
        if other.dtype != self.dtype:
            raise FastgradError("internal: cannot merge tapes of different dtypes")
        if self.body.active or other.body.active:
            raise FastgradError(
                "scan: the step function combines a tensor recorded on another graph. Fix: "
                "compute such tensors before calling fg.scan on the same graph, or pass them "
                "through xs")
        # Rows run in one range from n_done: rows not yet computed stay so (their kernels
        # compile with the rest, not in a wave of their own) unless ours would come before
        # rows of ``other`` already computed, which must not run again (a leaf may have
        # changed since: a later op sees current values, an earlier one keeps its own).
        if self.body.slot_sources or other.body.slot_sources:  # rows of a failed fg.scan step
            self.flush()
            other.flush()
        if self.n_done < self.n_rows and other.n_done > 0:
            self.flush()
        pending = self.n_done if self.n_done < self.n_rows else self.n_rows + other.n_done
        nshift, vshift, ishift = self.n_nodes, self.values.n, self.ivalues.n
        kinds = other.node_kind.view
        self.node_off.extend(other.node_off.view + np.where(kinds == FLOAT_NODE, vshift, ishift))
        self.node_size.extend(other.node_size.view)
        self.node_kind.extend(kinds)
        self.node_need.extend(other.node_need.view)
        self.shapes += other.shapes
        self.values.extend(other.values.view)
        self.ivalues.extend(other.ivalues.view)
        rshift = self.n_rows
        self.ops.extend(other.ops.view)
        self.outs.extend(other.outs.view + nshift)
        self.in_ptr.extend(other.in_ptr.view[1:] + self.in_idx.n)
        self.in_idx.extend(other.in_idx.view + nshift)
        self.ip_ptr.extend(other.ip_ptr.view[1:] + self.iparams.n)
        self.iparams.extend(other.iparams.view)
        self.fp_ptr.extend(other.fp_ptr.view[1:] + self.fparams.n)
        self.fparams.extend(other.fparams.view)
        self.labels.update({v + nshift: s for v, s in other.labels.items()})
        self.producer.update({v + nshift: r + rshift for v, r in other.producer.items()})
        self.int_bounds.update({v + nshift: b for v, b in other.int_bounds.items()})
        self.tensors.merge(other.tensors.shifted(nshift))
        for r in other.scan_rows:  # a loop's attributes name nodes and rows: they move too
            self._shift_loop(r + rshift, nshift, rshift)
        self.scan_rows += [r + rshift for r in other.scan_rows]
        self.n_done = pending
        other.merged_into, other.node_shift = self, nshift
        other.tensors = TensorLinks()

    def _shift_loop(self, r, nshift, rshift):
        """Move the nodes and rows that the SCAN row ``r`` and its SCAN_BEGIN row name (a
        merged tape's loop: its rows moved by ``rshift``, its nodes by ``nshift``)."""
        lo, hi = int(self.ip_ptr.a[r]), int(self.ip_ptr.a[r + 1])
        a = SCAN_LAYOUT.decode(self.iparams.a[lo:hi], [], "scan")
        fields = {f: getattr(a, f) for f in SCAN_LAYOUT.ints}
        for f in ("begin_row", "body_start", "body_end"):
            fields[f] += rshift
        for f in ("xs", "x_slot", "store", "ckpt", "schedule"):
            fields[f] += nshift if fields[f] >= 0 else 0
        for t in SCAN_LAYOUT.tails:
            fields[t.name] = np.asarray(getattr(a, t.name)) + nshift
        ip, _ = SCAN_LAYOUT.encode(**fields)
        self.iparams.a[lo:hi] = ip
        begin = int(self.ip_ptr.a[fields["begin_row"]])
        self.iparams.a[begin + BEGIN_LAYOUT.index("scan_row")] += rshift

    # ------------------------------------------------------------------ seeing it
    def _type(self, v):
        floats = {4: "f32", 8: "f64"}[self.dtype.itemsize]
        kind = "i64" if self.node_kind.a[v] == INDEX_NODE else floats
        return f"{kind}[{','.join(str(s) for s in self.shapes[v])}]"

    def rows(self):
        """(row, op name, input nodes, output node) in recording order."""
        ptr, idx = self.in_ptr.view, self.in_idx.view
        for r in range(self.n_rows):
            ins = [int(i) for i in idx[ptr[r] : ptr[r + 1]]]
            yield r, Op(int(self.ops.a[r])).name.lower(), ins, int(self.outs.a[r])

    def attrs(self, r):
        """Row ``r``'s attributes by name, decoded through its op's layout (fastgrad/ops/)."""
        d = TABLE[Op(int(self.ops.a[r]))]
        ip = self.iparams.a[self.ip_ptr.a[r] : self.ip_ptr.a[r + 1]]
        fp = self.fparams.a[self.fp_ptr.a[r] : self.fp_ptr.a[r + 1]]
        return d.layout.decode(ip, fp, d.name)

    def __str__(self):
        """One line per node; a row's shown attributes (its layout's ``shown``) follow its type,
        e.g. ``%3 = sum %2 : f64[] {outer=1, n=4, inner=1}``."""
        lines = [f"Tape({self.dtype.name}, {self.n_rows} rows, {self.n_nodes} nodes)"]
        made = {o: (r, name, ins) for r, name, ins, o in self.rows()}
        for v in range(self.n_nodes):
            if v in made:
                r, name, ins = made[v]
                args = " ".join(f"%{i}" for i in ins)
                shown = TABLE[Op(int(self.ops.a[r]))].layout.brief(self.attrs(r))
                lines.append(f"  %{v} = {name} {args} : {self._type(v)}" +
                             (f" {shown}" if shown else ""))
            else:
                lines.append(f"  %{v} = {self.labels.get(v, 'input')} : {self._type(v)}")
        return "\n".join(lines)

    __repr__ = __str__

    def to_dot(self, values=False, grads=False) -> str:
        """Graphviz source of the computational graph (optionally with values and gradients)."""

        def brief(a):
            a = np.asarray(a)
            return np.array2string(a, precision=4, threshold=6) if a.size <= 6 else f"{a.shape}"

        out = ["digraph tape {", "  rankdir=LR;", "  node [fontname=monospace];"]
        if values:
            self.flush()
        for v in range(self.n_nodes):
            label = f"%{v} {self.labels.get(v, '')} {self._type(v)}".replace("  ", " ")
            if values:
                label += f"\\nvalue {brief(self.node_values(v))}"
            if grads and self.grads is not None and self.node_need.a[v]:
                label += f"\\ngrad {brief(self.node_grad(v))}"
            shape = "box" if v in self.producer else "ellipse"
            out.append(f'  n{v} [shape={shape}, label="{label}"];')
        for r, name, ins, o in self.rows():
            out.append(f'  op{r} [shape=circle, label="{name}"];')
            for i in ins:
                out.append(f"  n{i} -> op{r};")
            out.append(f"  op{r} -> n{o};")
        out.append("}")
        return "\n".join(out)


# Taken (before any tape's lock) by whatever changes the structure of tapes: recording a row,
# merging tapes, recording a scan, copying a tape, resolving a tensor's merged tape. One lock
# for all tapes, since one op may merge several; the native calls hold only their tape's lock.
RECORDING = threading.RLock()

# ops whose VJP reads no operand value (the output's gradient, the integer attributes, maybe
# the output, e.g. exp' = y, tanh' = 1 - y^2): a leaf changed after such a row was recorded
# leaves its backward exact, as in PyTorch. Each op says so in the registry (``saves``).
VJP_READS_NO_VALUES = frozenset(int(op) for op, d in TABLE.items()
                                if d.saves in ("nothing", "output"))
# products: operand 0's value is read only for operand 1's gradient and the other way round
# (a bias or addend, operand 2, not at all), so a changed factor matters only when the other
# factor needs a gradient, as in PyTorch, which saves each factor only for the other's sake
VJP_READS_OTHER_FACTOR = frozenset(int(op) for op, d in TABLE.items() if d.saves == "other factor")


def same_bits(copy, current) -> bool:
    """Whether ``current`` (a leaf's data, cast to the copy's dtype) holds exactly the bits of
    ``copy``: NaN equals NaN, -0.0 differs from 0.0. Small arrays compare as bytes, which skips
    NumPy's per-call overhead (the common case: a parameter re-used on one tape).

    >>> import numpy as np
    >>> same_bits(np.array([np.nan, 1.0]), np.array([np.nan, 1.0])), same_bits(
    ...     np.array([0.0]), np.array([-0.0]))
    (True, False)
    """
    if current.dtype != copy.dtype:
        current = current.astype(copy.dtype)
    if current.shape != copy.shape:
        return False
    if copy.nbytes <= 4096:
        return copy.tobytes() == current.tobytes()
    unsigned = np.dtype(f"u{copy.dtype.itemsize}") if copy.dtype.itemsize in (1, 2, 4, 8) \
        else None
    if unsigned is None:
        return copy.tobytes() == current.tobytes()
    return bool((copy.view(unsigned) == current.view(unsigned)).all())
