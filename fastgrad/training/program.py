"""One traced program of ``fg.compile``: the tape recorded on placeholder inputs for one input
signature, through the fusion pass, its parameters in the optimizer's buffer, its arrays
packed for the native training step (kernels/train.py)."""

from __future__ import annotations

import time

import numpy as np

from ..runtime import blas_threads as _blas_threads
from ..transforms import fusion
from ..runtime.anomaly import STATE as anomaly_state
from ..runtime.anomaly import anomaly_enabled, describe_anomaly
from ..core.errors import fail
from ..kernels import dispatch as _dispatch
from ..kernels import optim as _optim_kernels
from ..kernels import train as _train
from ..kernels._jit import native_entry
from ..kernels.views import INTO_VALUE
from ..kernels.movement import load_indices
from ..ops import Op, fmt
from ..ops.matmul import LAYOUT as MATMUL_LAYOUT
from ..ops.matmul import LINEAR_LAYOUT
from ..ops.nodes import EXTERNAL_NODE, FLOAT_NODE, INDEX_NODE, PARAM_NODE
from ..core.memory import check_memory
from ..runtime.tape import RECORDING, Tape
from ..frontend.modes import tracing
from ..frontend.inputs import checked_indices
from ..frontend.tensor import Tensor, placeholder

__all__ = ["EMPTY_INDEX", "Program", "as_entry", "entry_array", "index_error", "overwritten_by_vjp"]


EMPTY_INDEX = np.zeros(0, np.int64)
# where a product row (matmul, linear, linear_act) stores its number of batched products
_BATCH = MATMUL_LAYOUT.index("batch")
assert LINEAR_LAYOUT.index("batch") == _BATCH


class Program:
    """One traced signature: the tape, its input slots, and where parameters live in it."""

    def __init__(self, fn, inputs, optimizer, params, dtype, fuse=True):
        self.tape = tape = Tape(dtype)
        slots = [placeholder(tape, x, label=f"input {i}") for i, x in enumerate(inputs)]
        with tracing(), fusion.fusion_off(not fuse):
            out = fn(*slots)
        if not isinstance(out, Tensor) or out.size != 1:
            raise fail("compile", "the function must return a one-element loss tensor, got "
                       + (f"shape {fmt(out.shape)}" if isinstance(out, Tensor) else repr(out)),
                       "return a scalar loss (.mean() / .sum())")
        if not out.requires_grad:
            raise fail("compile", "the loss does not depend on any parameter that requires grad",
                       "use model parameters (fg.nn.Parameter) inside the function")
        # An input the loss does not read (``lambda x: (W * 2).sum()``) is still a slot of
        # the program, on a tape of its own until it joins the loss's here.
        with RECORDING:
            for s in slots:
                if s.tape is not out.tape:
                    out.tape.absorb(s.tape)
        # the memory guard (fg.set_memory_limit): the program's buffers together (its copy of
        # the tape, the packed arrays, gradients and scratch), refused before the first is made
        check_memory("compile", out.tape.compiled_nbytes(), f"the program traced for inputs "
                     f"{[fmt(x.shape) for x in inputs]} needs a gradient buffer as large as its "
                     "values; use a smaller batch, or checkpoint= in fg.scan for long loops")
        # Merges may have moved the graph onto a user's eager tape (or theirs onto ours): the
        # program rewrites its tape below, so it works on a copy and theirs stays as recorded.
        tape = self.tape = out.tape.copy()
        self.slot_nodes = [s.node for s in slots]
        self.loss_node = out.node
        if fuse:  # the program reads back only its loss (and fills its input slots)
            fusion.fuse_program(tape, [self.loss_node, *self.slot_nodes])
        self.loss_off = int(tape.node_off.a[self.loss_node])
        self.params = list(params) if params is not None else list(
            {id(leaf): leaf for leaf, _ in tape.tensors.leaves}.values())
        for p in self.params:
            if getattr(p, "_cast_of", None) is not None:
                raise fail("compile", f"a parameter of shape {fmt(p.shape)} is a cast of another "
                           "tensor (x.float() or x.astype(...) made outside the function): its "
                           "updates would not reach the tensor it was cast from",
                           "cast the model first (model.astype(...)) and pass its parameters")
        index = {id(p): i for i, p in enumerate(self.params)}
        flat_off = np.concatenate([[0], np.cumsum([p.size for p in self.params])])
        self.flat_size = int(flat_off[-1])
        # Parameter nodes move into the flat parameter buffer (kind 2): replay reads and writes
        # the optimizer's memory directly. Every other leaf copy (a leaf that is not a
        # parameter, a constant such as fg.from_numpy(a), a parameter read under no_grad) is
        # reloaded from its tensor at each call (``frozen``): never its trace-time values.
        modes = tape.grad_modes()
        seen = {}
        for leaf, v in tape.tensors.leaves:
            if id(leaf) in index:
                tape.node_kind.a[v] = PARAM_NODE
                tape.node_off.a[v] = flat_off[index[id(leaf)]]
                seen.setdefault(id(leaf), []).append(v)
        self.frozen = [(leaf, v) for leaf, v in tape.tensors.copies if tape.node_kind.a[v] == FLOAT_NODE]
        self.frozen_index = list(tape.tensors.index_copies)  # captured index arrays, checked per call
        # The first input is read in place from the caller's array (kind 3): no copy per step
        # (a 1024 x 784 float64 batch: 0.4 ms of each 9 ms step was that copy).
        self.external = self._external_slot(inputs)
        if self.external is not None:
            tape.node_kind.a[self.slot_nodes[self.external]] = EXTERNAL_NODE
        for r, name, ins, out in tape.rows():  # a RESHAPE output shares its input's slot
            if tape.ops.a[r] == Op.RESHAPE and \
                    tape.node_kind.a[ins[0]] in (PARAM_NODE, EXTERNAL_NODE):
                tape.node_kind.a[out] = tape.node_kind.a[ins[0]]
                tape.node_off.a[out] = tape.node_off.a[ins[0]]
        for nodes in seen.values():
            if len(nodes) > 1:  # one parameter, several nodes: their gradients must add up
                modes[nodes] = np.minimum(modes[nodes], 1)
        # The loss's gradient is the seed: a row recorded after the loss that reads it must add
        # to it, not overwrite it (the step's backward sweep runs every row).
        modes[self.loss_node] = min(modes[self.loss_node], 1)
        self.modes = modes
        self.zero_spans = self._zero_spans(modes)
        self.fold_modes, self.keep_spans = self._fold_marks(modes, optimizer)
        # the ops' kernels are loaded at the first run, with the entry kernel it needs
        self.arrays = tape.arrays(dispatch_rows=False)
        self._dispatched = False
        self.kind = -1 if optimizer is None else int(optimizer.kind)
        self._pack(tape.values.a.size, tape.scratch_size())
        self.logits_off, self.ncls = self._find_logits()
        self.slot_views = [None if i == self.external else tape.node_values(v)
                           for i, v in enumerate(self.slot_nodes)]
        # Integer inputs that a kernel indexes with are loaded and range-checked natively
        # (load_indices): (input, slot, lo, hi). Every other input is copied into its slot.
        self.index_slots = [(i, self.slot_views[i].reshape(-1), *tape.int_bounds[v])
                            for i, v in enumerate(self.slot_nodes)
                            if tape.node_kind.a[v] == INDEX_NODE and v in tape.int_bounds]
        indexed = {i for i, *_ in self.index_slots}
        self.copy_slots = [(i, view) for i, view in enumerate(self.slot_views)
                           if view is not None and i not in indexed]
        # The step's native entry loads the first integer index input (labels) and the first
        # float input (targets) itself; any others are loaded here in Python (load_inputs).
        floats = [(i, view) for i, view in self.copy_slots if view.dtype == tape.dtype]
        self.native_int = self.index_slots[0] if self.index_slots else None
        self.native_float = floats[0][0] if floats else None
        h = self.ints  # where train_step loads them: header entries (kernels/train.py)
        if self.native_float is not None:
            h[_train.H_FLOAT_OFF] = tape.node_off.a[self.slot_nodes[self.native_float]]
        if self.native_int is not None:
            i, _, lo, hi = self.native_int
            h[_train.H_INT_OFF] = tape.node_off.a[self.slot_nodes[i]]
            h[_train.H_INT_LO], h[_train.H_INT_HI] = lo, hi
        self.python_index = self.index_slots[1:]
        self.python_copy = [(i, view) for i, view in self.copy_slots if i != self.native_float]
        self.empty_float = np.zeros(0, tape.dtype)
        self.signature = None  # the caller's (shape, dtype) per input, set by Compiled.program
        self._entry = None  # train_step's native entry, typed for the optimizer's buffers

    def _pack(self, n_grads, n_scratch):
        """Pack the program for train_step (kernels/train.py, which says why): ``ints`` (a
        header, the tape's int64 arrays and the zero spans), ``bytes`` (node kinds and
        gradient modes) and ``floats`` (float parameters, then the gradient and scratch
        arenas, which the tape and fit use as views)."""
        tape = self.tape
        segments = [a.astype(np.int64) for a in self.arrays[:7] + self.arrays[8:10]]
        segments += [self.zero_spans.ravel(), self.keep_spans.ravel()]
        ends = _train.H_SIZE + np.cumsum([0] + [a.size for a in segments])
        header = np.zeros(_train.H_SIZE, np.int64)
        header[_train.H_SEGMENTS : _train.H_SEGMENTS + len(ends)] = ends
        fparams = self.arrays[7]
        header[_train.H_FPARAMS_END] = fparams.size
        header[_train.H_GRADS_END] = fparams.size + n_grads
        header[_train.H_NODES] = tape.n_nodes
        header[_train.H_LOSS_OFF] = self.loss_off
        header[_train.H_KIND] = self.kind
        header[_train.H_FOLD] = self.folds
        self.ints = np.concatenate([header, *segments])
        self.zero_spans = self.ints[ends[-3] : ends[-2]].reshape(-1, 3)
        self.keep_spans = self.ints[ends[-2] : ends[-1]].reshape(-1, 2)
        nn = tape.n_nodes
        self.bytes = np.concatenate([tape.node_kind.view, self.modes, self.fold_modes]).astype(
            np.int8)
        self.modes, self.fold_modes = self.bytes[nn : 2 * nn], self.bytes[2 * nn :]
        self.floats = np.zeros(fparams.size + n_grads + n_scratch, tape.dtype)
        self.floats[: fparams.size] = fparams
        tape.grads = self.floats[fparams.size : fparams.size + n_grads]
        tape._scratch = self.scratch = self.floats[fparams.size + n_grads :]

    def _external_slot(self, inputs):
        """0 when the first input (x, by convention; ``fit`` gathers its batches) is read in
        place, else None: it must be a non-empty float input that no scan loop takes as its
        sequence or initial carry, directly or through reshapes (the scan kernels address
        those by offset in the value arena)."""
        tape = self.tape
        if not self.slot_nodes or inputs[0].size == 0:
            return None
        x = self.slot_nodes[0]
        if tape.node_kind.a[x] != FLOAT_NODE:
            return None
        aliases = {x}
        for r, name, ins, out in tape.rows():
            op = tape.ops.a[r]
            if op == Op.RESHAPE and int(ins[0]) in aliases:
                aliases.add(int(out))
            elif op in (Op.SCAN, Op.SCAN_BEGIN) and aliases.intersection(int(v) for v in ins):
                return None
        return 0

    def _zero_spans(self, modes) -> np.ndarray:
        """Gradient spans a step clears before its backward sweep, as rows (0 value arena /
        1 flat parameter gradients, offset, size).

        A gradient that its only consumer, an unbatched matmul, overwrites (mode 2) is not
        cleared: for an MLP that is every weight gradient, most of the flat buffer.
        """
        tape = self.tape
        kinds = tape.node_kind.view
        overwritten = overwritten_by_vjp(tape, modes)
        spans = [(0, int(tape.node_off.a[v]), int(tape.node_size.a[v])) for v in
                 np.flatnonzero((tape.node_need.view != 0) & (kinds == FLOAT_NODE) & ~overwritten)]
        clear = _flat_runs_without(tape, self.flat_size, (kinds == PARAM_NODE) & overwritten)
        spans += [(1, int(a), int(size)) for a, size in clear]
        return np.array(spans, np.int64).reshape(-1, 3)

    def _fold_marks(self, modes, optimizer):
        """``modes`` with INTO_VALUE (kernels/views.py) on the weights and biases whose plain-SGD
        update their VJP may apply, and the spans of ``flat`` the update loop still runs over
        then, as rows (offset, size). Marked: a parameter (kind 2) that is the weight or the
        bias of an unbatched LINEAR or LINEAR_ACT row, its only consumer (mode 2, which also
        keeps out parameters read inside a scan loop or through a reshape). Nothing is marked
        unless the optimizer is SGD; whether a step folds is decided per step (momentum,
        weight decay, clipping and the anomaly check turn it off, kernels/optim.py
        ``folds_sgd``)."""
        tape = self.tape
        fold = modes.copy()
        if optimizer is not None and optimizer.kind == _optim_kernels.SGD:
            ops, kinds = tape.ops.view, tape.node_kind.view
            for r in np.flatnonzero((ops == Op.LINEAR) | (ops == Op.LINEAR_ACT)):
                if tape.iparams.a[tape.ip_ptr.a[r] + _BATCH] != 1:  # batched products
                    continue
                weight_bias = tape.in_idx.a[tape.in_ptr.a[r] + 1 : tape.in_ptr.a[r + 1]]
                for v in weight_bias:
                    if kinds[v] == 2 and modes[v] == 2:
                        fold[v] = INTO_VALUE
        return fold, _flat_runs_without(tape, self.flat_size, fold == INTO_VALUE)

    @property
    def folds(self) -> bool:
        """Whether any parameter may have its plain-SGD update folded into its VJP."""
        return bool((self.fold_modes == INTO_VALUE).any())

    def allow_folding(self, allowed: bool):
        """Let this program's steps fold updates (when ``folds``), or keep every gradient:
        a header entry the native step reads, so the per-step path needs no rebuilding."""
        self.ints[_train.H_FOLD] = bool(allowed) and self.folds

    def _find_logits(self):
        """Logits node of the cross-entropy row the loss comes from (for accuracy), if any."""
        tape = self.tape
        for r, name, ins, out in tape.rows():
            if Op(int(tape.ops.a[r])) == Op.CROSS_ENTROPY:
                return int(tape.node_off.a[ins[0]]), tape.shapes[ins[0]][1]
        return 0, 0

    def load_inputs(self, inputs):
        """Load the inputs Python loads (any beyond the native pair, frozen leaves, the
        external input's reference) and return the two the native entry loads, as
        ``(float input, integer input)`` 1-D arrays of the entry's types (empty for none)."""
        for i, view in self.python_copy:
            np.copyto(view, inputs[i], casting="unsafe")
        for i, slot, lo, hi in self.python_index:
            if not load_indices(slot, inputs[i], lo, hi):
                raise index_error(i, lo, hi)
        if self.external is not None:
            self.tape.program_arrays.external = entry_array(inputs[self.external],
                                                            self.tape.dtype, 2)
        self.reload_frozen()
        return (self.empty_float if self.native_float is None
                else entry_array(inputs[self.native_float], self.tape.dtype),
                EMPTY_INDEX if self.native_int is None
                else entry_array(inputs[self.native_int[0]], np.int64))

    def reload_frozen(self):
        """Leaves and index arrays the function captured, at their current values: a float
        leaf copied, an index array copied and range-checked (it may have changed since the
        trace, and no index reaches a kernel unchecked)."""
        tape = self.tape
        for leaf, v in self.frozen:
            tape.node_values(v)[...] = leaf.numpy()
        for t, v, lo, hi, where in self.frozen_index:
            values = t.numpy()
            if values.shape != tuple(tape.shapes[v]):
                raise fail("compile", f"a captured index array changed shape from "
                           f"{fmt(tape.shapes[v])} to {fmt(values.shape)} since the trace",
                           "pass it as an input of the compiled function instead")
            tape.node_values(v)[...] = checked_indices("compile", values, lo, hi, where)

    def run(self, buffers, hyper, t, max_norm, max_value, finput, iinput, reuse=True):
        """One native train_step over the inputs ``load_inputs`` loaded and returned.
        ``buffers``: rows flat, flat_grad (and three optimizer states). With ``reuse`` (the
        optimizer's own block, fixed for its life) the kernel's entry point is kept for
        ``fast_step``. Raises on an index out of range (nothing ran) or, under
        fg.detect_anomaly, on the row that made a NaN/Inf."""
        tape = self.tape
        tape.program_arrays.param_arena = buffers[0]
        tape.program_arrays.param_grads = buffers[1]
        # the casts: an int max_norm seen once would type the entry int64 and truncate a later 0.5
        args = (self.ints, self.bytes, self.floats, tape.values.a, tape.ivalues.a,
                tape.program_arrays.external, buffers, hyper, int(t), float(max_norm),
                float(max_value), anomaly_enabled(), finput, iinput, self.arrays[12])
        self.dispatch(_train.train_step, args)
        loss, norm, bad, direction = _train.train_step(*args)
        if reuse and self._entry is None:
            self._entry = native_entry(_train.train_step, args)
        if bad >= 0:
            raise self.failure(bad, direction)
        return loss, norm  # Python floats (Numba boxes float32 as float too)

    def dispatch(self, entry, args):
        """Load (or compile) the kernels of this program's ops before ``entry`` first runs it
        with ``args``, ``entry`` itself alongside them (Table.ensure). Decided on the program's
        own node kinds (parameters, the input read in place), which pick its scans'
        strategies: every row, even rows an eager flush of the trace dispatched."""
        if self._dispatched:
            return
        tape = self.tape
        codes = _dispatch.codes_used(tape.ops.a, tape.ip_ptr.a, tape.iparams.a, 0, tape.n_rows,
                                     tape.arrays(dispatch_rows=False), tape.node_need.view)
        types = tuple(entry.typeof_pyval(a) for a in args)
        _dispatch.table(tape.dtype).ensure(codes, ((entry, types),))
        tape.n_dispatched = tape.n_rows
        self._dispatched = True

    def failure(self, bad, direction):
        """The error for train_step's (row or position, direction) report."""
        if direction == 2:
            i, _, lo, hi = self.native_int
            return index_error(i, lo, hi)
        if direction == 3:  # entry_array makes every input the general path passes contiguous
            return fail("compile", "internal: an input reached the step's kernel "
                        "non-contiguous or unaligned", "pass np.ascontiguousarray(x)")
        return describe_anomaly(self.tape, bad, "backward" if direction else "forward")

    def fast_step(self, compiled):
        """``step(*inputs) -> loss``, or None when this program has no entry point yet. The
        function takes the general path (``compiled._general_call``) itself when the inputs do
        not have this program's signature or an input the entry reads in place is not
        C-contiguous and aligned. ``Compiled.__call__`` goes straight to it (see there).

        It is the general path (``Compiled._general_call`` → ``load_inputs`` → ``run``) with
        every lookup it can make once made here: its locals are this closure's cells. Why: a
        training step's kernel evicts the interpreter's data from cache, so each attribute
        lookup and call of the next step costs several times its hot price. At 784-128-10
        batch 64 the general path's Python took 16-20 µs per step, more than the margin
        against a hand-written Numba step. The native entry is called directly, skipping the
        dispatcher's typing of every argument, so every argument must have the types it was
        compiled for: the external input goes as the caller passed it when it is 1-D or 2-D
        of the model's dtype, and so do 1-D labels (int64) and targets (the model's dtype)
        that the entry loads (train_step checks their layout and asks for a copy otherwise),
        other arrays through ``entry_array``, the optimizer's buffers are fixed
        for its life (read-only attributes) and ``Optimizer.hyper`` is always a float64
        vector.
        """
        if self._entry is None:
            return None
        entry, opt = self._entry, compiled.optimizer
        buffers, ints, bytes_, floats = opt.buffers, self.ints, self.bytes, self.floats
        tape, dtype, fail_with = self.tape, self.tape.dtype, self.failure
        values, ivalues = tape.values.a, tape.ivalues.a
        sig, n = self.signature, len(self.signature)
        max_norm, max_value = compiled.max_norm, compiled.max_value
        external, fi, ii = self.external, self.native_float, self.native_int
        ii = None if ii is None else ii[0]
        table = self.arrays[12]  # the dispatch table, its ops' kernels loaded (Tape.arrays)
        empty_f, empty_i, int64 = self.empty_float, EMPTY_INDEX, EMPTY_INDEX.dtype
        python_inputs = bool(self.python_copy or self.python_index or self.frozen
                             or self.frozen_index)
        load_inputs, general_call = self.load_inputs, compiled._general_call
        anomaly = anomaly_state
        # the bound methods, not ``with lock``: 0.08 against 0.15 µs per step (timeit)
        acquire, release = compiled._lock.acquire, compiled._lock.release
        clock, next_sample, sample = time.monotonic, _blas_threads.NEXT_SAMPLE, \
            _blas_threads.refresh  # the BLAS threads follow the machine's load

        def plan(i, want):  # (entry dtype, the signature's dtype is it, the input is 1-D)
            return None if i is None else (want, sig[i][1] == want, len(sig[i][0]) == 1)

        f_plan, i_plan = plan(fi, dtype), plan(ii, int64)
        # a 1-D input of the entry's dtype goes as the caller passed it: train_step checks its
        # layout (direction 3 below), which saves a call and a flags object per step
        f_direct, i_direct = (p is not None and p[1] and p[2] for p in (f_plan, i_plan))
        x_direct = external is not None and sig[external][1] == dtype and 1 <= len(
            sig[external][0]) <= 2
        tape.program_arrays.param_arena = buffers[0]
        tape.program_arrays.param_grads = buffers[1]
        no_external = tape.program_arrays.external

        (s0, d0), (s1, d1) = sig if n == 2 else ((None, None),) * 2
        ndarray = np.ndarray

        def step(*inputs):
            if len(inputs) != n:
                return general_call(*inputs)
            # ``is`` first: NumPy's built-in dtypes are singletons, and != is the slower test
            if n == 2:  # (x, y), the usual call, without a loop: its iterator and unpacking
                a, b = inputs  # cost about 2 µs a step at 784-128-10 batch 64
                if (type(a) is not ndarray or type(b) is not ndarray or a.shape != s0
                        or b.shape != s1 or (a.dtype is not d0 and a.dtype != d0)
                        or (b.dtype is not d1 and b.dtype != d1)):
                    return general_call(*inputs)
            else:
                for x, (shape, dt) in zip(inputs, sig):
                    if type(x) is not ndarray or x.shape != shape or (x.dtype is not dt
                                                                      and x.dtype != dt):
                        return general_call(*inputs)
            # one step at a time: the arenas, opt.t and the optimizer's buffers are shared
            # by every thread calling this step (or another over the same optimizer)
            if clock() >= next_sample[0]:
                sample()
            acquire()
            try:
                if python_inputs:
                    load_inputs(inputs)
                if external is None:
                    x = no_external
                else:
                    x = inputs[external]
                    if not x_direct:  # else as it is: train_step checks its layout (dir. 3)
                        x = entry_array(x, dtype, 2)
                    tape.program_arrays.external = x  # what an anomaly report reads
                t = opt.t + 1
                loss, norm, bad, direction = entry(
                    ints, bytes_, floats, values, ivalues, x, buffers, opt.hyper(), t,
                    max_norm, max_value, anomaly.on,
                    inputs[fi] if f_direct else empty_f if fi is None
                    else as_entry(inputs[fi], f_plan),
                    inputs[ii] if i_direct else empty_i if ii is None
                    else as_entry(inputs[ii], i_plan), table)
                if bad < 0:
                    opt.t = t
                    compiled.last_grad_norm = norm
                    return loss
                if direction != 3:
                    raise fail_with(bad, direction)
            finally:
                release()
            # an input is not C-contiguous and aligned: the general path copies it
            return general_call(*inputs)

        return step


def entry_array(a, dtype, max_ndim=1):
    """``a`` as an array type the native entry is compiled for: ``a`` itself when it is
    exactly an ndarray of ``dtype``, C-contiguous, writeable and aligned, else a copy; 1-D, or
    with ``max_ndim=2`` (the external input) 1-D or 2-D, else flattened. (An ndarray subclass
    is copied too: np.matrix stays 2-D on reshape(-1).) Writeable, so that a read-only first
    input does not compile a read-only specialisation."""
    # flags.carray: C-contiguous, aligned and writeable
    if not (type(a) is np.ndarray and (a.dtype is dtype or a.dtype == dtype) and a.flags.carray):
        a = np.array(a, dtype=dtype, order="C")
    return a if 1 <= a.ndim <= max_ndim else a.reshape(-1)


def as_entry(a, plan):
    """``entry_array`` for an input that passed ``fast_step``'s signature check, planned
    from that signature (dtype, whether it is the entry's, whether ``a`` is 1-D): only the
    layout is left to test, and a 1-D array needs no reshape (each NumPy call after a large
    step costs a few µs: its code and data are out of cache)."""
    want, same_dtype, one_d = plan
    if same_dtype and a.flags.carray:
        return a if one_d else a.reshape(-1)
    return entry_array(a, want)


def index_error(i, lo, hi):
    return fail("compile", f"input {i} holds indices outside [{lo}, {hi})",
                "check labels/indices against the class count or axis size")


def _flat_runs_without(tape, flat_size, nodes) -> np.ndarray:
    """The runs of the flat parameter buffer [0, flat_size) that none of the parameter nodes
    selected by the mask ``nodes`` covers, as rows (offset, size)."""
    keep = np.ones(flat_size, bool)
    for v in np.flatnonzero(nodes):
        keep[tape.node_off.a[v] : tape.node_off.a[v] + tape.node_size.a[v]] = False
    edges = np.flatnonzero(np.diff(np.concatenate([[0], keep.view(np.int8), [0]])))
    return np.array([(a, b - a) for a, b in zip(edges[::2], edges[1::2])],
                    np.int64).reshape(-1, 2)


def overwritten_by_vjp(tape, modes) -> np.ndarray:
    """Per node: True when its gradient is written whole by its only consumer's VJP (mode 2
    and an unbatched MATMUL, LINEAR or LINEAR_ACT row, kernels/linalg.py), so nothing needs to
    clear it first."""
    out = np.zeros(tape.n_nodes, bool)
    ops = tape.ops.view
    for r in np.flatnonzero((ops == Op.MATMUL) | (ops == Op.LINEAR) | (ops == Op.LINEAR_ACT)):
        if tape.iparams.a[tape.ip_ptr.a[r] + _BATCH] == 1:  # one product
            for v in tape.in_idx.a[tape.in_ptr.a[r] : tape.in_ptr.a[r + 1]]:
                out[v] |= modes[v] == 2
    return out
