"""Trace once, replay natively: ``fg.compile`` and ``fg.fit``.

``compile(fn, optimizer)`` records ``fn`` on its first call into a tape whose inputs are slots,
then every call writes the new inputs into the slots and runs forward + backward (+ clipping,
+ the optimizer update) in ONE native call (kernels/train.py). Like ``jax.jit``, Python control
flow that depends on values is frozen at trace time, and so is an array ``fn`` copies
(``fg.tensor(a)`` inside ``fn``). Tensors ``fn`` captures are read at each call at their
current values: parameters in the optimizer's buffer, every other leaf (``fg.from_numpy(a)``
included) reloaded. A call with new input shapes or dtypes traces again (once per signature,
logged on the "fastgrad" logger).

>>> import fastgrad as fg, numpy as np
>>> w = fg.nn.Parameter(np.array([1.0, 2.0]))
>>> loss_and_grad = fg.compile(lambda x: ((x @ w) ** 2).sum())
>>> loss, (gw,) = loss_and_grad(np.array([[1.0, 1.0]]))
>>> float(loss), gw
(9.0, array([6., 6.]))
"""

from __future__ import annotations

import inspect
import logging
import math
import numbers
import operator
import signal
import sys
import threading
import time
import weakref

import numpy as np

from ..runtime import blas_threads as _blas_threads
from ..transforms import fusion
from ..runtime.anomaly import STATE as anomaly_state
from ..runtime.anomaly import AnomalyError, anomaly_enabled, describe_anomaly
from ..core.errors import FastgradError, fail
from ..kernels import dispatch as _dispatch
from ..kernels import optim as _optim_kernels
from ..kernels import train as _train
from ..kernels._jit import native_entry
from ..kernels.views import INTO_VALUE
from ..kernels.movement import load_indices
from ..ops import Op, flag, fmt
from ..ops.matmul import LAYOUT as MATMUL_LAYOUT
from ..ops.matmul import LINEAR_LAYOUT
from ..ops.nodes import EXTERNAL_NODE, FLOAT_NODE, INDEX_NODE, PARAM_NODE
from ..core.memory import check_memory
from .optim import Optimizer
from ..runtime.tape import RECORDING, Tape
from ..frontend.tensor import (
    FLOAT_DTYPES, Tensor, checked_indices, get_default_dtype, input_array, input_dtype_problem,
    placeholder, tracing,
)

__all__ = ["Compiled", "History", "Program", "as_entry", "compile", "entry_array", "fit",
           "overwritten_by_vjp", "step_lock"]

log = logging.getLogger("fastgrad")
_EMPTY_F = {dt: np.zeros((0, 1), dt) for dt in FLOAT_DTYPES}
_EMPTY_I = np.zeros(0, np.int64)
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
            {id(leaf): leaf for leaf, _ in tape.leaves}.values())
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
        for leaf, v in tape.leaves:
            if id(leaf) in index:
                tape.node_kind.a[v] = PARAM_NODE
                tape.node_off.a[v] = flat_off[index[id(leaf)]]
                seen.setdefault(id(leaf), []).append(v)
        self.frozen = [(leaf, v) for leaf, v in tape.copies if tape.node_kind.a[v] == FLOAT_NODE]
        self.frozen_index = list(tape.index_copies)  # captured index arrays, checked per call
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
                 np.flatnonzero((tape.node_need.view != 0) & (kinds == 0) & ~overwritten)]
        clear = _flat_runs_without(tape, self.flat_size, (kinds == 2) & overwritten)
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
                raise _index_error(i, lo, hi)
        if self.external is not None:
            self.tape.external = entry_array(inputs[self.external], self.tape.dtype, 2)
        self.reload_frozen()
        return (self.empty_float if self.native_float is None
                else entry_array(inputs[self.native_float], self.tape.dtype),
                _EMPTY_I if self.native_int is None
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
        tape.param_arena, tape.param_grads = buffers[0], buffers[1]
        # the casts: an int max_norm seen once would type the entry int64 and truncate a later 0.5
        args = (self.ints, self.bytes, self.floats, tape.values.a, tape.ivalues.a,
                tape.external, buffers, hyper, int(t), float(max_norm), float(max_value),
                anomaly_enabled(), finput, iinput, self.arrays[12])
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
            return _index_error(i, lo, hi)
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
        empty_f, empty_i, int64 = self.empty_float, _EMPTY_I, _EMPTY_I.dtype
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
        tape.param_arena, tape.param_grads = buffers[0], buffers[1]
        no_external = tape.external

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
                    tape.external = x  # what an anomaly report reads
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


def _index_error(i, lo, hi):
    return fail("compile", f"input {i} holds indices outside [{lo}, {hi})",
                "check labels/indices against the class count or axis size")


class Compiled:
    """A traced training step (with an optimizer) or value-and-grad function (without).

    Call it with arrays: with an optimizer it returns the loss (a float) after updating the
    parameters; without, it returns ``(loss, [gradient per parameter])`` as NumPy arrays.

    Safe to call from several threads: each call is one whole step under a lock (one per
    optimizer, shared by every step over it and by ``fg.fit``; one per function without an
    optimizer), so N calls give N serial steps in the order the threads took it.
    """

    # Why a property and not a method: Python looks ``__call__`` up on the type, and a
    # property built from C parts (attrgetter) hands the call to ``_call`` without a Python
    # frame of its own. ``_call`` is the last program's per-step function once one has run
    # (it takes the general path itself when the inputs do not fit), else ``_general_call``.
    # The frame it saves cost about 2 µs per step at 784-128-10 batch 64 (a training step
    # leaves the interpreter's data out of cache).
    __call__ = property(operator.attrgetter("_call"),
                        doc="``step(*inputs)``: see the class docstring.")

    def __init__(self, fn, optimizer=None, params=None, clip_grad_norm=None,
                 clip_grad_value=None, keep_grads=False, fuse=True):
        if not callable(fn):
            raise fail("compile", f"fn must be a function returning a scalar loss, got "
                       f"{type(fn).__name__}", "pass a function: fg.compile(lambda x, y: "
                       "loss_fn(model(x), y), optimizer=opt)")
        if optimizer is not None and not isinstance(optimizer, Optimizer):
            raise fail("compile", f"optimizer must be a fastgrad optimizer or None, got "
                       f"{type(optimizer).__name__}", "pass fg.optim.SGD(model.parameters(), "
                       "lr=0.1) (or another fg.optim optimizer)")
        if not isinstance(fuse, (bool, np.bool_)):
            raise fail("compile", f"fuse must be True or False, got {fuse!r}",
                       "pass fuse=False to replay the rows as recorded")
        self.fn = fn
        self.fuse = bool(fuse)
        self._optimizer = optimizer
        self.params = optimizer.params if optimizer is not None else _checked_params(params)
        # Calls of one step, and of every step over the same optimizer, run one at a time:
        # the program's arenas and the optimizer's buffers are shared state (see __call__).
        self._lock = threading.RLock() if optimizer is None else step_lock(optimizer)
        self.history = None  # the History of the last (or running) fg.fit over this step
        self._fast = None
        self.max_norm = clip_grad_norm
        self.max_value = clip_grad_value
        self.programs: dict = {}
        self.keep_grads = keep_grads
        self.last_grad_norm = 0.0
        self._last = None  # the program of the last call

    def _dtype(self, inputs):
        """The computation's float dtype: the optimizer's, the parameters', else the first
        float input's (else the default dtype)."""
        if self.optimizer is not None:
            return self.optimizer.dtype
        if self.params:
            return self.params[0].dtype
        floats = [x.dtype for x in inputs if x.dtype.kind == "f"]
        return floats[0] if floats and floats[0] in FLOAT_DTYPES else get_default_dtype()

    def program(self, *inputs) -> tuple[Program, list]:
        """The traced program for these inputs' shapes and dtypes (tracing if new), and the
        inputs as arrays. Inputs enter by fastgrad's one input rule
        (``frontend.tensor.input_dtype_problem``), as in eager ops: a signature is traced, and
        so stored, only once its dtypes have passed it."""
        arrays = [input_array(x) for x in inputs]
        sig = tuple((a.shape, a.dtype) for a in arrays)
        prog = self.programs.get(sig)
        if prog is None:
            self._check_arity(len(arrays))
            dtype = self._dtype(arrays)
            for i, a in enumerate(arrays):
                problem = input_dtype_problem(a.dtype, dtype)
                if problem is not None:
                    raise fail("compile", f"input {i} (shape {fmt(a.shape)}): {problem[0]}",
                               problem[1])
            if self.programs:
                log.info("fastgrad.training.compile: tracing again for new input signature %s "
                         "(previous: %s)", [(a.shape, a.dtype.name) for a in arrays],
                         [[(s, d.name) for s, d in k] for k in self.programs])
            prog = self._trace(arrays, dtype)
            prog.allow_folding(not self.keep_grads)
            prog.signature = sig
            self.programs[sig] = prog
        return prog, arrays

    def _trace(self, arrays, dtype) -> "Program":
        """The Program for ``arrays``. An integer input is traced as an index slot (labels,
        indices: range-checked each call); one that the function uses in float arithmetic is
        traced again as floats, cast each call, as eager ops cast it (the one input rule)."""
        as_float: set[int] = set()
        while True:
            cast = [a.astype(np.int64) if a.dtype.kind in "iu" and i not in as_float
                    else a.astype(dtype) for i, a in enumerate(arrays)]
            try:
                return Program(self.fn, cast, self.optimizer, self.params, dtype, self.fuse)
            except FastgradError as e:
                label = getattr(e, "integer_input", None) or ""
                index = int(label[6:]) if label.startswith("input ") else None
                if index is None or index in as_float:
                    if as_float:  # the float trace failed where the integer one did not
                        raise fail("compile", f"integer input(s) {sorted(as_float)} are used "
                                   f"in float arithmetic and, traced as floats, fail: {e}",
                                   "pass floats, or pass the values twice: once as integers "
                                   "(labels, indices) and once as floats") from None
                    raise
                as_float.add(index)

    def _check_arity(self, n):
        """Refuse a call with a number of inputs the traced function cannot take (before
        tracing, where it would be a raw TypeError from inside the trace)."""
        try:
            signature = inspect.signature(self.fn)
        except (TypeError, ValueError):  # a builtin or C callable: let the trace decide
            return
        try:
            signature.bind(*range(n))
        except TypeError as e:
            raise fail("compile", f"the compiled function {signature} cannot take {n} "
                       f"input(s) ({e})", "call the step with the function's inputs, "
                       "e.g. step(x, y)") from None

    @property
    def _fast(self):
        """Program.fast_step of the last call's program once it has run, else None."""
        return self._fast_step

    @_fast.setter
    def _fast(self, step):
        self._fast_step = step
        self._call = self._general_call if step is None else step

    def _general_call(self, *inputs):
        """A call through the general path: find or trace the inputs' program, load the
        inputs, run it (``__call__`` takes it unless the last program's step fits). Under
        the step's lock, as the per-step path: one call at a time (see ``step_lock``)."""
        with self._lock:
            return self._locked_call(inputs)

    def _locked_call(self, inputs):
        _blas_threads.refresh()
        prog = self._last
        if prog is not None and _same_signature(prog.signature, inputs):
            arrays = inputs
        else:
            prog, arrays = self.program(*inputs)
            self._last = prog
        finput, iinput = prog.load_inputs(arrays)
        opt = self.optimizer
        if opt is not None:
            t = opt.t + 1  # counted once the update has run
            loss, self.last_grad_norm = prog.run(opt.buffers, opt.hyper(), t, self.max_norm,
                                                 self.max_value, finput, iinput)
            opt.t = t
            self._fast = prog.fast_step(self)
            return loss
        buffers = np.zeros((2, prog.flat_size), prog.tape.dtype)  # flat, flat_grad
        if prog.params:
            np.concatenate([p.numpy().ravel() for p in prog.params], out=buffers[0])
        flat_grad = buffers[1]
        loss, self.last_grad_norm = prog.run(buffers, np.zeros(8), 1, self.max_norm,
                                             self.max_value, finput, iinput, reuse=False)
        offs = np.concatenate([[0], np.cumsum([p.size for p in prog.params])])
        grads = [flat_grad[a:b].reshape(p.shape).copy()
                 for p, a, b in zip(prog.params, offs[:-1], offs[1:])]
        return loss, grads

    @property
    def optimizer(self):
        """The optimizer this step updates (fixed: its programs were traced for it)."""
        return self._optimizer

    @property
    def max_norm(self) -> float:
        """``clip_grad_norm`` (0: off). Setting it takes effect at the next call."""
        return self._max_norm

    @max_norm.setter
    def max_norm(self, value):
        self._max_norm = _clip_limit("clip_grad_norm", value)
        self._fast = None  # the fast path holds the clip settings

    @property
    def max_value(self) -> float:
        """``clip_grad_value`` (0: off). Setting it takes effect at the next call."""
        return self._max_value

    @max_value.setter
    def max_value(self, value):
        self._max_value = _clip_limit("clip_grad_value", value)
        self._fast = None

    @property
    def keep_grads(self) -> bool:
        """Whether every step writes every gradient into ``optimizer.flat_grad``. False (the
        default): a plain-SGD step folds the update of each Linear layer's weight and bias into
        its gradient's computation, and their gradients may not be written (see ``compile``).
        Setting it takes effect at the next call."""
        return self._keep_grads

    @keep_grads.setter
    def keep_grads(self, value):
        self._keep_grads = bool(value)
        for prog in self.programs.values():
            prog.allow_folding(not self._keep_grads)

    @property
    def parameters(self):
        return self.params


_STEP_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_STEP_LOCKS_GUARD = threading.Lock()


def step_lock(optimizer) -> threading.RLock:
    """The lock that every compiled step and ``fg.fit`` over ``optimizer`` hold while they
    load inputs, run the native step and count ``optimizer.t``: the program's arenas and the
    optimizer's buffers are shared, and the native step releases the GIL. Reentrant, so a
    step may call another over the same optimizer (``fit``'s last partial batch does)."""
    with _STEP_LOCKS_GUARD:
        lock = _STEP_LOCKS.get(optimizer)
        if lock is None:
            lock = _STEP_LOCKS[optimizer] = threading.RLock()
        return lock


def _checked_params(params):
    """``compile``'s ``params`` as a list of leaf tensors that require grad (None: every
    parameter the function uses)."""
    if params is None:
        return None
    if isinstance(params, Tensor) or not hasattr(params, "__iter__"):
        raise fail("compile", f"params must be a list of parameters, got "
                   f"{type(params).__name__}", "pass model.parameters() or [w, b]")
    params = list(params)
    for i, p in enumerate(params):
        if not isinstance(p, Tensor) or p.tape is not None or not p.requires_grad:
            raise fail("compile", f"params must hold leaf tensors that require grad; entry {i} "
                       f"is {type(p).__name__}" + ("" if not isinstance(p, Tensor) else
                                                   " without requires_grad or recorded"),
                       "pass model.parameters() or fg.nn.Parameter tensors")
    return params


def _clip_limit(name, value) -> float:
    """A clipping limit as a float: None or 0 is off, else a finite number > 0."""
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(
            value) or value < 0:
        raise fail("compile", f"{name} must be None or a finite number >= 0, got {value!r}",
                   f"pass {name}=1.0 (or None for no clipping)")
    return float(value)


def _flat_runs_without(tape, flat_size, nodes) -> np.ndarray:
    """The runs of the flat parameter buffer [0, flat_size) that none of the parameter nodes
    selected by the mask ``nodes`` covers, as rows (offset, size)."""
    keep = np.ones(flat_size, bool)
    for v in np.flatnonzero(nodes):
        keep[tape.node_off.a[v] : tape.node_off.a[v] + tape.node_size.a[v]] = False
    edges = np.flatnonzero(np.diff(np.concatenate([[0], keep.view(np.int8), [0]])))
    return np.array([(a, b - a) for a, b in zip(edges[::2], edges[1::2])],
                    np.int64).reshape(-1, 2)


def _same_signature(signature, inputs) -> bool:
    if len(signature) != len(inputs):
        return False
    for (shape, dtype), x in zip(signature, inputs):
        if type(x) is not np.ndarray or x.shape != shape or x.dtype != dtype:
            return False
    return True


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


def compile(fn, optimizer=None, params=None, clip_grad_norm=None,  # noqa: A001
            clip_grad_value=None, keep_grads=False, fuse=True):
    """Trace ``fn(*inputs) -> scalar loss`` once per input signature and replay it natively.

    With ``optimizer``: each call runs forward, backward, optional clipping (``clip_grad_value``
    then ``clip_grad_norm``, PyTorch's rules) and the optimizer update in one native call and
    returns the loss. Without: returns ``(loss, grads)``, the gradients of ``params`` (default:
    every parameter the function uses, in order of first use).

    With plain SGD (no momentum, no weight decay, no clipping, outside fg.detect_anomaly), the
    update of a Linear layer's weight and bias is folded into the backward sweep: the weight's
    is computed as part of its gradient's matrix product, ``W -= lr * (gZ.T @ X)`` in one BLAS
    call, so that gradient is never stored and no separate pass runs over it. The update is
    the same to rounding, but ``optimizer.flat_grad`` may then hold stale values for those
    parameters. ``keep_grads=True`` writes every gradient, as PyTorch keeps ``p.grad``.

    The traced tape goes through the fusion pass (transforms/fusion.py): a layer written with
    plain ops, ``(x @ W.T + b).relu()``, replays as one fused LINEAR_ACT row, as ``fg.nn``'s
    layers record it; ``print(step.programs[...].tape)`` shows the rows it runs.
    ``fuse=False`` replays the rows as recorded (for debugging; results agree to rounding).
    """
    return Compiled(fn, optimizer, params, clip_grad_norm, clip_grad_value, keep_grads, fuse)


class History(dict):
    """Per-epoch results of ``fit``: ``loss`` (mean over batches), ``accuracy`` (if classes),
    ``seconds``, and ``lr``."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError as e:
            raise AttributeError(name) from e


def _progress(total, enabled):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm

        return tqdm(total=total, unit="epoch", leave=True)
    except ImportError:
        return "text"


_CONTINUE = object()  # fit's default seed: the step's own generator, continued across calls


def fit(step: Compiled, X, Y, epochs=1, batch_size=32, shuffle=True, seed=_CONTINUE,
        drop_last=False, scheduler=None, progress=True, validation_data=None, callbacks=()):
    """Train ``step`` (a compiled step with an optimizer) over minibatches of (X, Y).

    Each epoch of full batches is ONE native call (kernels/train.fit_epoch): minibatch
    gathering, forward, backward, clipping and updates, with no Python per batch. A final
    partial batch (unless ``drop_last``) is one more compiled call, traced once. Shuffling is
    seeded: by default from the step's own generator, seeded 0 at its first fit and continued
    by the next, so that ``fit(epochs=1)`` called twice shuffles as ``fit(epochs=2)`` (never
    the same order twice); ``seed=`` an int restarts from that seed, None draws fresh entropy.
    Returns a History with per-epoch ``loss`` and, when Y holds integer classes and the loss is
    a cross-entropy, ``accuracy``; the History being filled is also ``step.history`` (as Keras
    keeps ``model.history``). ``validation_data=(Xv, Yv)`` adds ``val_loss`` (the loss
    function on them after each epoch, without an update). ``callbacks``: functions called
    ``cb(epoch, history)`` after each epoch (evaluation, checkpointing with ``fg.save``); one
    returning True stops training there (early stopping).

    X: (N, ...) inputs; Y: (N,) integer labels or (N, ...) float targets, by the input rule of
    eager ops and compiled steps (``frontend.tensor.input_dtype_problem``). Integer labels are
    copied once and the copy is range-checked: a loader that refills Y while fit runs does not
    reach the kernels. Ctrl-C (SIGINT, in the main thread) stops the running epoch after its
    running batch; then ``KeyboardInterrupt`` is raised with the History as ``exc.history``
    (and ``step.history``; a stopped epoch's entry covers its completed batches), the
    parameters and the optimizer's state (``opt.t`` included) those of exactly those batches.

    >>> import fastgrad as fg, numpy as np
    >>> model = fg.nn.MLP([2, 4, 2], seed=0)
    >>> step = fg.compile(lambda x, y: fg.cross_entropy(model(x), y),
    ...                   optimizer=fg.optim.SGD(model.parameters(), lr=0.1))
    >>> h = fg.fit(step, np.ones((8, 2)), np.zeros(8, np.int64), epochs=2, batch_size=4,
    ...            progress=False)
    >>> len(h.loss), step.optimizer.t, h is step.history
    (2, 4, True)
    """
    if not isinstance(step, Compiled) or step.optimizer is None:
        raise fail("fit", "step must be a compiled step with an optimizer, got "
                   + (type(step).__name__ if not isinstance(step, Compiled) else
                      "one without"), "step = fg.compile(loss_fn, optimizer=opt)")
    epochs = _count_argument("epochs", epochs, 0)
    batch_size = _count_argument("batch_size", batch_size, 1)
    shuffle, drop_last = flag("fit", "shuffle", shuffle), flag("fit", "drop_last", drop_last)
    if not (seed is None or seed is _CONTINUE or isinstance(
            seed, (np.random.Generator, np.random.SeedSequence)) or (
            isinstance(seed, numbers.Integral) and not isinstance(seed, bool) and seed >= 0)):
        raise fail("fit", f"seed must be None or an int >= 0, got {seed!r}", "pass seed=0")
    callbacks = list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
    if not all(callable(cb) for cb in callbacks):
        raise fail("fit", "callbacks must be functions cb(epoch, history)",
                   "pass a list of functions, e.g. callbacks=[lambda epoch, h: ...]")
    if scheduler is not None and not callable(getattr(scheduler, "step", None)):
        raise fail("fit", f"scheduler must have a step() method, got {type(scheduler).__name__}",
                   "pass an fg.optim scheduler (e.g. StepLR(opt, 10)) or None")
    opt = step.optimizer
    dtype = opt.dtype
    X, Y = _fit_data("X", X, dtype), _fit_data("Y", Y, dtype)
    n = X.shape[0]
    if Y.shape[0] != n:
        raise fail("fit", f"X has {n} rows but Y has {Y.shape[0]}", "pass matching X and Y")
    if n == 0:
        raise fail("fit", "X and Y have no rows", "pass at least one sample")
    if batch_size > n:
        raise fail("fit", f"batch_size {batch_size} for {n} samples", f"use 1..{n}")
    Xc = np.ascontiguousarray(X, dtype=dtype)
    int_labels = Y.dtype.kind in "iu"
    # Labels: a private copy, checked below and read by the kernels: the caller's buffer may
    # change while fit runs (a loader thread), and an index must never reach a kernel unchecked
    Yc = np.array(Y, dtype=np.int64, order="C", copy=True) if int_labels else \
        np.ascontiguousarray(Y, dtype=dtype)
    with step._lock:  # tracing beside another thread's step of the same optimizer
        prog, _ = step.program(Xc[:batch_size], Yc[:batch_size])
    x_off = int(prog.tape.node_off.a[prog.slot_nodes[0]])
    # the minibatch is gathered where the kernels read x: its own buffer when x is external
    arrays = prog.arrays if prog.external != 0 else prog.arrays[:11] + (
        np.empty(Xc[:batch_size].size, dtype), prog.arrays[12])
    y_off = int(prog.tape.node_off.a[prog.slot_nodes[1]])
    if int_labels:
        for _, _, lo, hi in prog.index_slots:
            if Yc.min() < lo or Yc.max() >= hi:
                raise fail("fit", f"labels outside [{lo}, {hi})",
                           "check the labels against the number of classes")
    X2 = Xc.reshape(n, -1)
    Yf = _EMPTY_F[np.dtype(dtype)] if int_labels else Yc.reshape(n, -1)
    Yi = Yc if int_labels else _EMPTY_I
    ncls = prog.ncls if int_labels else 0
    nfull = n // batch_size
    rest = 0 if drop_last else n - nfull * batch_size
    if seed is _CONTINUE:
        if getattr(step, "_shuffle_rng", None) is None:
            step._shuffle_rng = np.random.default_rng(0)
        rng = step._shuffle_rng
    else:
        rng = np.random.default_rng(seed)
    validate = _validator(step, validation_data, batch_size, dtype)
    history = step.history = History(loss=[], accuracy=[], seconds=[], lr=[])
    if validate is not None:
        history["val_loss"] = []
    bar = _progress(epochs, progress)
    ctrl_c = _HeldInterrupt()
    try:
        with ctrl_c:
            for epoch in range(epochs):
                start = time.perf_counter()
                perm = rng.permutation(n) if shuffle else np.arange(n)
                with step._lock:  # one epoch at a time with other calls of the step
                    prog.reload_frozen()
                    check = anomaly_enabled()
                    try:
                        epoch_args = (
                            arrays, prog.tape.values.a, prog.tape.ivalues.a, prog.tape.grads,
                            prog.modes, prog.fold_modes if prog.ints[_train.H_FOLD]
                            and not check else prog.fold_modes[:0], prog.scratch,
                            prog.zero_spans, prog.keep_spans, prog.loss_off, opt.flat,
                            opt.flat_grad, opt.kind, opt.state[0], opt.state[1], opt.state[2],
                            opt.hyper(), opt.t + 1, step.max_norm, step.max_value,
                            X2, x_off, prog.external == 0, Yf, Yi, y_off, perm, batch_size, nfull,
                            prog.logits_off, ncls, check, ctrl_c.stop)
                        prog.dispatch(_train.fit_epoch, epoch_args)
                        _blas_threads.refresh()
                        epoch_result = ctrl_c.run(_train.fit_epoch, *epoch_args)
                    except BaseException:
                        if ctrl_c.late is not None:  # the batches it completed are applied
                            opt.t += ctrl_c.late[2]
                        raise
                    total, correct, done, bad, direction = epoch_result
                    opt.t += done  # the batches completed: all, or those before a stop
                    if bad >= 0:  # fg.detect_anomaly: the batches before it are applied
                        tape = prog.tape  # the report reads the buffers this run used
                        tape.param_arena, tape.param_grads = opt.flat, opt.flat_grad
                        if prog.external == 0:
                            tape.external = arrays[11]
                        err = prog.failure(bad, direction)
                        raise type(err)(f"fit (epoch {epoch + 1}, batch {done + 1}): {err}"
                                        ) from None
                    seen = done * batch_size
                    total *= batch_size
                    if rest and done == nfull:
                        idx = perm[seen:]
                        try:
                            total += step(Xc[idx], Yc[idx]) * rest
                        except AnomalyError as err:
                            raise type(err)(f"fit (epoch {epoch + 1}, batch {nfull + 1}): "
                                            f"{err}") from None
                        if ncls:
                            logits = _logits_of(step, Xc[idx], Yc[idx])
                            correct += int((logits.argmax(axis=1) == Yc[idx]).sum())
                        seen += rest
                if seen == 0:  # Ctrl-C before this epoch's first batch: nothing to record
                    break
                if not np.isfinite(total):
                    log.warning("fastgrad.fit: loss is not finite at epoch %d; rerun inside "
                                "fg.detect_anomaly() to find the op", epoch + 1)
                history["loss"].append(total / seen)
                if ncls:
                    history["accuracy"].append(correct / seen)
                history["seconds"].append(time.perf_counter() - start)
                history["lr"].append(opt.lr)
                if done < nfull:  # stopped inside the epoch: no scheduler step for a part
                    break
                if scheduler is not None:
                    scheduler.step()
                if validate is not None:
                    history["val_loss"].append(validate())
                _report(bar, epoch, epochs, history)
                if ctrl_c.pressed:
                    break
                if any([bool(cb(epoch, history)) for cb in callbacks]):
                    break  # a callback asked to stop (every callback saw this epoch)
        ctrl_c.raise_if_pressed()  # pressed during an epoch or its bookkeeping
    except KeyboardInterrupt as e:
        e.history = _finished(history)
        raise
    finally:
        if bar is not None and not isinstance(bar, str):
            bar.close()
    return _finished(history)


def _validator(step, validation_data, batch_size, dtype):
    """A function returning the mean loss over ``validation_data`` (X, Y), batch by batch,
    computed by a compiled twin of the step without its optimizer (no update); None without
    validation data."""
    if validation_data is None:
        return None
    if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
        raise fail("fit", "validation_data must be a pair (X, Y)",
                   "pass validation_data=(X_val, Y_val)")
    Xv, Yv = (_fit_data(name, v, dtype) for name, v in zip(("X", "Y"), validation_data))
    if Xv.shape[0] != Yv.shape[0] or Xv.shape[0] == 0:
        raise fail("fit", f"validation_data has {Xv.shape[0]} and {Yv.shape[0]} rows",
                   "pass matching, non-empty X_val and Y_val")
    twin = getattr(step, "_evaluator", None)
    if twin is None:  # traced once per step and input shape, not per fit call
        twin = step._evaluator = Compiled(step.fn, params=step.params, fuse=step.fuse)

    def evaluate():
        total = 0.0
        for i in range(0, Xv.shape[0], batch_size):
            loss, _ = twin(Xv[i : i + batch_size], Yv[i : i + batch_size])
            total += float(loss) * len(Xv[i : i + batch_size])
        return total / Xv.shape[0]

    return evaluate


def _finished(history):
    if not history["accuracy"]:
        history.pop("accuracy", None)
    return history


class _HeldInterrupt:
    """Hold SIGINT (Ctrl-C) while fit runs: the handler notes it and sets ``stop``, which the
    epoch kernel reads before each batch, so fit stops after the running batch and raises
    KeyboardInterrupt once its bookkeeping is done (``raise_if_pressed``): parameters,
    optimizer state and History then describe the same completed batches (an interrupt raised
    right after a native call returned would skip ``opt.t``'s update). Only in the main thread
    (where Python delivers signals) and only over Python's default handler: a handler the
    caller installed stays in charge.

    Python runs a signal handler only between bytecodes of the main thread, never during a
    native call, so the epoch runs on a worker thread (``run``) and the main thread waits in
    short waits, where a handler can run."""

    def __init__(self):
        self.pressed = False
        self.previous = None
        self.stop = np.zeros(1, np.int64)
        self.late = None  # what an epoch stopped by another exception returned (see run)

    def _note(self, signum, frame):
        if not self.pressed:
            log.warning("fastgrad.fit: Ctrl-C; stopping after the running batch")
        self.pressed = True
        self.stop[0] = 1

    def __enter__(self):
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self.previous = signal.signal(signal.SIGINT, self._note)
        return self

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            self.previous = None
        return False

    def run(self, kernel, *args):
        """``kernel(*args)``, on a worker thread when called from the main thread (see above):
        Ctrl-C, and any other signal handler that raises (SIGALRM, SIGTERM), then stops the
        epoch after its running batch instead of landing after it, past ``opt.t``'s update."""
        if threading.current_thread() is not threading.main_thread():
            return kernel(*args)
        result, finished = [], threading.Event()

        def work():
            try:
                result.append((True, kernel(*args)))
            except BaseException as e:  # noqa: BLE001 - re-raised in the calling thread
                result.append((False, e))
            finally:
                finished.set()

        # an Event, not Thread.join: an exception raised into join's wait (Python 3.11) marks
        # a thread that is still running as stopped
        worker = threading.Thread(target=work, name="fastgrad-fit-epoch", daemon=True)
        try:
            worker.start()  # inside the try: a handler may raise while start() waits
            while not finished.wait(0.05):
                pass
        except BaseException:  # another handler raised (SIGALRM, SIGTERM): stop the epoch
            self.stop[0] = 1  # after its running batch, and never leave it training unlocked
            if worker.ident is not None:
                while not finished.wait(0.05):
                    pass
                self.late = result[0][1] if result[0][0] else None
            raise
        ok, value = result[0]
        if not ok:
            raise value
        return value

    def raise_if_pressed(self):
        if self.pressed:
            self.pressed = False
            self.stop[0] = 0
            raise KeyboardInterrupt


def _count_argument(name, value, least):
    """``fit``'s integer argument ``name`` (>= least) as an int."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
        raise fail("fit", f"{name} must be an int >= {least}, got {value!r}",
                   f"pass {name}={max(least, 1)}")
    return int(value)


def _fit_data(name, value, dtype) -> np.ndarray:
    """``fit``'s X or Y as an array with a leading axis of samples, by the input rule."""
    a = input_array(value)
    if a.ndim == 0:
        raise fail("fit", f"{name} must have a leading axis of samples, got a 0-d "
                   f"{a.dtype} value", f"pass {name} of shape (N, ...)")
    problem = input_dtype_problem(a.dtype, dtype)
    if problem is not None:
        raise fail("fit", f"{name} (shape {fmt(a.shape)}): {problem[0]}", problem[1])
    return a


def _logits_of(step, x, y):
    prog, _ = step.program(x, y)
    off, ncls = prog.logits_off, prog.ncls
    return prog.tape.values.a[off : off + len(y) * ncls].reshape(len(y), ncls)


def _report(bar, epoch, epochs, history):
    msg = f"loss {history['loss'][-1]:.4f}"
    if history.get("accuracy"):
        msg += f" acc {history['accuracy'][-1]:.4f}"
    if bar is None:
        return
    if isinstance(bar, str):  # "text": no tqdm (whose __eq__ refuses a str)
        print(f"epoch {epoch + 1}/{epochs}: {msg} ({history['seconds'][-1]:.2f}s)",
              file=sys.stderr, flush=True)
    else:
        bar.set_postfix_str(msg)
        bar.update(1)
