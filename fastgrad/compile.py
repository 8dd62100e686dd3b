"""Trace once, replay natively: ``fg.compile`` and ``fg.fit``.

``compile(fn, optimizer)`` records ``fn`` on its first call into a tape whose inputs are slots,
then every call writes the new inputs into the slots and runs forward + backward (+ clipping,
+ the optimizer update) in ONE native call (kernels/train.py). Like ``jax.jit``, Python control
flow that depends on values is frozen at trace time; arrays captured by ``fn`` that are not
inputs or parameters are constants frozen at trace time too. A call with new input shapes or
dtypes traces again (once per signature, logged on the "fastgrad" logger).

>>> import fastgrad as fg, numpy as np
>>> w = fg.nn.Parameter(np.array([1.0, 2.0]))
>>> loss_and_grad = fg.compile(lambda x: ((x @ w) ** 2).sum())
>>> loss, (gw,) = loss_and_grad(np.array([[1.0, 1.0]]))
>>> float(loss), gw
(9.0, array([6., 6.]))
"""

from __future__ import annotations

import logging
import sys
import time

import numpy as np

from .anomaly import anomaly_enabled, describe_anomaly
from .errors import fail
from .kernels import train as _train
from .kernels._jit import native_entry
from .kernels.movement import load_indices
from .opcodes import Op
from .ops import fmt
from .scan import check_memory
from .tape import Tape
from .tensor import FLOAT_DTYPES, Tensor, get_default_dtype, placeholder

log = logging.getLogger("fastgrad")
_EMPTY_F = {dt: np.zeros((0, 1), dt) for dt in FLOAT_DTYPES}
_EMPTY_I = np.zeros(0, np.int64)


class Program:
    """One traced signature: the tape, its input slots, and where parameters live in it."""

    def __init__(self, fn, inputs, optimizer, params, dtype):
        self.tape = tape = Tape(dtype)
        slots = [placeholder(tape, x, label=f"input {i}") for i, x in enumerate(inputs)]
        out = fn(*slots)
        if not isinstance(out, Tensor) or out.size != 1:
            raise fail("compile", "the function must return a one-element loss tensor, got "
                       + (f"shape {fmt(out.shape)}" if isinstance(out, Tensor) else repr(out)),
                       "return a scalar loss (.mean() / .sum())")
        if not out.requires_grad:
            raise fail("compile", "the loss does not depend on any parameter that requires grad",
                       "use model parameters (fg.nn.Parameter) inside the function")
        # Merges may have moved the graph onto a user's eager tape (or theirs onto ours): the
        # program rewrites its tape below, so it works on a copy and theirs stays as recorded.
        tape = self.tape = out.tape.copy()
        self.slot_nodes = [s.node for s in slots]
        self.loss_node = out.node
        self.loss_off = int(tape.node_off.a[self.loss_node])
        self.params = list(params) if params is not None else list(
            {id(leaf): leaf for leaf, _ in tape.leaves}.values())
        index = {id(p): i for i, p in enumerate(self.params)}
        flat_off = np.concatenate([[0], np.cumsum([p.size for p in self.params])])
        self.flat_size = int(flat_off[-1])
        # Parameter nodes move into the flat parameter buffer (kind 2): replay reads and writes
        # the optimizer's memory directly. Leaves that are not parameters stay copies (frozen).
        modes = tape.grad_modes()
        seen = {}
        self.frozen = []
        for leaf, v in tape.leaves:
            if id(leaf) in index:
                tape.node_kind.a[v] = 2
                tape.node_off.a[v] = flat_off[index[id(leaf)]]
                seen.setdefault(id(leaf), []).append(v)
            else:
                self.frozen.append((leaf, v))
        # The first input is read in place from the caller's array (kind 3): no copy per step
        # (a 1024 x 784 float64 batch: 0.4 ms of each 9 ms step was that copy).
        self.external = self._external_slot(inputs)
        if self.external is not None:
            tape.node_kind.a[self.slot_nodes[self.external]] = 3
        for r, name, ins, out in tape.rows():  # a RESHAPE output shares its input's slot
            if tape.ops.a[r] == Op.RESHAPE and tape.node_kind.a[ins[0]] in (2, 3):
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
        # the memory guard (fg.set_memory_limit): refuse before allocating gradients + scratch
        check_memory("compile", (tape.values.a.size + int(tape.node_size.view.max(initial=1)))
                     * tape.dtype.itemsize, f"the program traced for inputs "
                     f"{[fmt(x.shape) for x in inputs]} needs a gradient buffer as large as its "
                     "values; use a smaller batch, or checkpoint= in fg.scan for long loops")
        tape.grads = np.zeros(tape.values.a.size, tape.dtype)
        self.arrays = tape.arrays()
        self.scratch = tape.scratch()
        self.logits_off, self.ncls = self._find_logits()
        self.slot_views = [None if i == self.external else tape.node_values(v)
                           for i, v in enumerate(self.slot_nodes)]
        # Integer inputs that a kernel indexes with are loaded and range-checked natively
        # (load_indices): (input, slot, lo, hi). Every other input is copied into its slot.
        self.index_slots = [(i, self.slot_views[i].reshape(-1), *tape.int_bounds[v])
                            for i, v in enumerate(self.slot_nodes)
                            if tape.node_kind.a[v] == 1 and v in tape.int_bounds]
        indexed = {i for i, *_ in self.index_slots}
        self.copy_slots = [(i, view) for i, view in enumerate(self.slot_views)
                           if view is not None and i not in indexed]
        # the tape's buffers, fixed from here on: built once, not per step
        self.kernel_args = (tape.values.a, tape.ivalues.a, tape.grads, self.modes,
                            self.scratch, self.zero_spans, self.loss_off)
        self.signature = None  # the caller's (shape, dtype) per input, set by Compiled.program
        self._entry = None  # train_step's native entry and the optimizer buffers it was typed for

    def _external_slot(self, inputs):
        """0 when the first input (x, by convention; ``fit`` gathers its batches) is read in
        place, else None: it must be a non-empty float input that no scan loop takes as its
        sequence or initial carry, directly or through reshapes (the scan kernels address
        those by offset in the value arena)."""
        tape = self.tape
        if not self.slot_nodes or inputs[0].size == 0:
            return None
        x = self.slot_nodes[0]
        if tape.node_kind.a[x] != 0:
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
        clear = np.ones(self.flat_size, bool)
        for v in np.flatnonzero((kinds == 2) & overwritten):
            clear[tape.node_off.a[v] : tape.node_off.a[v] + tape.node_size.a[v]] = False
        edges = np.flatnonzero(np.diff(np.concatenate([[0], clear.view(np.int8), [0]])))
        spans += [(1, int(a), int(b - a)) for a, b in zip(edges[::2], edges[1::2])]
        return np.array(spans, np.int64).reshape(-1, 3)

    def _find_logits(self):
        """Logits node of the cross-entropy row the loss comes from (for accuracy), if any."""
        tape = self.tape
        for r, name, ins, out in tape.rows():
            if Op(int(tape.ops.a[r])) == Op.CROSS_ENTROPY:
                return int(tape.node_off.a[ins[0]]), tape.shapes[ins[0]][1]
        return 0, 0

    def load_inputs(self, inputs):
        """Copy new input arrays into their slots (casting floats to the tape dtype); the
        external input is taken as it is when it has the tape's dtype, is C-contiguous and
        writeable and aligned (a Numba signature of its own otherwise), else as a copy."""
        for i, view in self.copy_slots:
            np.copyto(view, inputs[i], casting="unsafe")
        for i, slot, lo, hi in self.index_slots:
            if not load_indices(slot, inputs[i], lo, hi):
                raise fail("compile", f"input {i} holds indices outside [{lo}, {hi})",
                           "check labels/indices against the class count or axis size")
        if self.external is not None:
            x = inputs[self.external]
            flags = x.flags
            # exactly an ndarray: a subclass's reshape(-1) may stay 2-D (np.matrix), and the
            # native entry point trusts the 1-D type it was compiled for
            if not (type(x) is np.ndarray and x.dtype == self.tape.dtype and flags.c_contiguous
                    and flags.writeable and flags.aligned):
                x = np.array(x, dtype=self.tape.dtype, order="C")
            self.tape.external = x.reshape(-1)
        for leaf, v in self.frozen:
            self.tape.node_values(v)[...] = leaf.numpy()

    def run(self, flat, flat_grad, kind, state, hyper, t, max_norm, max_value, reuse=True):
        """One native train_step over the loaded inputs. With ``reuse`` (an optimizer's own
        buffers, the same every step) the kernel's entry point is kept and called directly
        while the buffers are the same objects: every other argument is this program's (fixed
        types; load_inputs makes the external input a C-contiguous, aligned, writeable 1-D
        ndarray) or a scalar cast here, so the types cannot change under it. (Without the
        casts an int max_norm seen once would type the entry int64 and truncate a later 0.5.)"""
        tape = self.tape
        tape.param_arena, tape.param_grads = flat, flat_grad
        arrays = self.arrays if self.external is None else self.arrays[:11] + (tape.external,)
        args = (arrays, *self.kernel_args, flat, flat_grad, int(kind), state[0], state[1],
                state[2], hyper, int(t), float(max_norm), float(max_value), anomaly_enabled())
        e = self._entry
        if (e is not None and e[1] is flat and e[2] is flat_grad and e[3] is state[0]
                and e[4] is state[1] and e[5] is state[2] and e[6] is hyper):
            loss, norm, bad, direction = e[0](*args)
        else:
            loss, norm, bad, direction = _train.train_step(*args)
            entry = native_entry(_train.train_step, args) if reuse else None
            self._entry = None if entry is None else (entry, flat, flat_grad, *state[:3], hyper)
        if bad >= 0:
            raise describe_anomaly(tape, bad, "backward" if direction else "forward")
        return loss, norm  # Python floats (Numba boxes float32 as float too)


class Compiled:
    """A traced training step (with an optimizer) or value-and-grad function (without).

    Call it with arrays: with an optimizer it returns the loss (a float) after updating the
    parameters; without, it returns ``(loss, [gradient per parameter])`` as NumPy arrays.
    """

    def __init__(self, fn, optimizer=None, params=None, clip_grad_norm=None,
                 clip_grad_value=None):
        self.fn = fn
        self.optimizer = optimizer
        self.params = optimizer.params if optimizer is not None else params
        self.max_norm = float(clip_grad_norm or 0.0)
        self.max_value = float(clip_grad_value or 0.0)
        self.programs: dict = {}
        self.last_grad_norm = 0.0
        self._scratch = None
        self._last = None  # the program of the last call

    def _dtype(self, inputs):
        if self.optimizer is not None:
            return self.optimizer.dtype
        if self.params:
            return self.params[0].dtype
        floats = [x.dtype for x in inputs if x.dtype.kind == "f"]
        return floats[0] if floats and floats[0] in FLOAT_DTYPES else get_default_dtype()

    def program(self, *inputs) -> tuple[Program, list]:
        """The traced program for these inputs' shapes and dtypes (tracing if new), and the
        inputs as arrays."""
        arrays = [x.numpy() if isinstance(x, Tensor) else np.asarray(x) for x in inputs]
        sig = tuple((a.shape, a.dtype) for a in arrays)
        prog = self.programs.get(sig)
        if prog is None:
            dtype = self._dtype(arrays)
            cast = [a.astype(np.int64) if a.dtype.kind in "iu" else a.astype(dtype)
                    for a in arrays]
            if self.programs:
                log.info("fastgrad.compile: tracing again for new input signature %s "
                         "(previous: %s)", [(a.shape, a.dtype.name) for a in arrays],
                         [[(s, d.name) for s, d in k] for k in self.programs])
            prog = Program(self.fn, cast, self.optimizer, self.params, dtype)
            prog.signature = sig
            self.programs[sig] = prog
        return prog, arrays

    def __call__(self, *inputs):
        prog = self._last
        if prog is not None and _same_signature(prog.signature, inputs):
            arrays = inputs  # the per-step fast path: arrays of the last call's signature
        else:
            prog, arrays = self.program(*inputs)
            self._last = prog
        prog.load_inputs(arrays)
        opt = self.optimizer
        if opt is not None:
            opt.t += 1
            loss, self.last_grad_norm = prog.run(opt.flat, opt.flat_grad, opt.kind, opt.state,
                                                 opt.hyper(), opt.t, self.max_norm,
                                                 self.max_value)
            return loss
        flat = np.concatenate([p.numpy().ravel() for p in prog.params]) if prog.params else \
            np.zeros(0, prog.tape.dtype)
        flat_grad = np.zeros_like(flat)
        state = [flat_grad] * 3
        loss, self.last_grad_norm = prog.run(flat, flat_grad, -1, state, np.zeros(8), 1,
                                             self.max_norm, self.max_value, reuse=False)
        offs = np.concatenate([[0], np.cumsum([p.size for p in prog.params])])
        grads = [flat_grad[a:b].reshape(p.shape).copy()
                 for p, a, b in zip(prog.params, offs[:-1], offs[1:])]
        return loss, grads

    @property
    def parameters(self):
        return self.params


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
        if tape.iparams.a[tape.ip_ptr.a[r] + 3] == 1:  # one product (nbatch == 1)
            for v in tape.in_idx.a[tape.in_ptr.a[r] : tape.in_ptr.a[r + 1]]:
                out[v] |= modes[v] == 2
    return out


def compile(fn, optimizer=None, params=None, clip_grad_norm=None, clip_grad_value=None):  # noqa: A001
    """Trace ``fn(*inputs) -> scalar loss`` once per input signature and replay it natively.

    With ``optimizer``: each call runs forward, backward, optional clipping (``clip_grad_value``
    then ``clip_grad_norm``, PyTorch's rules) and the optimizer update in one native call and
    returns the loss. Without: returns ``(loss, grads)``, the gradients of ``params`` (default:
    every parameter the function uses, in order of first use).
    """
    return Compiled(fn, optimizer, params, clip_grad_norm, clip_grad_value)


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


def fit(step: Compiled, X, Y, epochs=1, batch_size=32, shuffle=True, seed=0, drop_last=False,
        scheduler=None, progress=True):
    """Train ``step`` (a compiled step with an optimizer) over minibatches of (X, Y).

    Each epoch of full batches is ONE native call (kernels/train.fit_epoch): minibatch
    gathering, forward, backward, clipping and updates, with no Python per batch. A final
    partial batch (unless ``drop_last``) is one more compiled call, traced once. Shuffling is
    seeded. Returns a History with per-epoch ``loss`` and, when Y holds integer classes and the
    loss is a cross-entropy, ``accuracy``.

    X: (N, ...) inputs; Y: (N,) integer labels or (N, ...) float targets.
    """
    if not isinstance(step, Compiled) or step.optimizer is None:
        raise fail("fit", "needs a compiled step with an optimizer",
                   "step = fg.compile(loss_fn, optimizer=opt)")
    X = X.numpy() if isinstance(X, Tensor) else np.asarray(X)
    Y = Y.numpy() if isinstance(Y, Tensor) else np.asarray(Y)
    n = X.shape[0]
    if Y.shape[0] != n:
        raise fail("fit", f"X has {n} rows but Y has {Y.shape[0]}", "pass matching X and Y")
    if batch_size <= 0 or batch_size > n:
        raise fail("fit", f"batch_size {batch_size} for {n} samples", f"use 1..{n}")
    opt = step.optimizer
    dtype = opt.dtype
    Xc = np.ascontiguousarray(X, dtype=dtype)
    int_labels = Y.dtype.kind in "iu"
    Yc = np.ascontiguousarray(Y, dtype=np.int64 if int_labels else dtype)
    prog, _ = step.program(Xc[:batch_size], Yc[:batch_size])
    x_off = int(prog.tape.node_off.a[prog.slot_nodes[0]])
    # the minibatch is gathered where the kernels read x: its own buffer when x is external
    arrays = prog.arrays if prog.external != 0 else prog.arrays[:11] + (
        np.empty(Xc[:batch_size].size, dtype),)
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
    rng = np.random.default_rng(seed)
    history = History(loss=[], accuracy=[], seconds=[], lr=[])
    bar = _progress(epochs, progress)
    for epoch in range(epochs):
        start = time.perf_counter()
        perm = rng.permutation(n) if shuffle else np.arange(n)
        for leaf, v in prog.frozen:
            prog.tape.node_values(v)[...] = leaf.numpy()
        total, correct = _train.fit_epoch(
            arrays, prog.tape.values.a, prog.tape.ivalues.a, prog.tape.grads, prog.modes,
            prog.scratch, prog.zero_spans, prog.loss_off, opt.flat, opt.flat_grad,
            opt.kind, opt.state[0], opt.state[1], opt.state[2], opt.hyper(), opt.t + 1, step.max_norm, step.max_value,
            X2, x_off, prog.external == 0, Yf, Yi, y_off, perm, batch_size, nfull,
            prog.logits_off, ncls, False)
        opt.t += nfull
        seen = nfull * batch_size
        total *= batch_size
        if rest:
            idx = perm[seen:]
            total += step(Xc[idx], Yc[idx]) * rest
            if ncls:
                logits = _logits_of(step, Xc[idx], Yc[idx])
                correct += int((logits.argmax(axis=1) == Yc[idx]).sum())
            seen += rest
        if not np.isfinite(total):
            log.warning("fastgrad.fit: loss is not finite at epoch %d; rerun inside "
                        "fg.detect_anomaly() to find the op", epoch + 1)
        history["loss"].append(total / seen)
        if ncls:
            history["accuracy"].append(correct / seen)
        history["seconds"].append(time.perf_counter() - start)
        history["lr"].append(opt.lr)
        if scheduler is not None:
            scheduler.step()
        _report(bar, epoch, epochs, history)
    if bar is not None and not isinstance(bar, str):
        bar.close()
    if not history["accuracy"]:
        del history["accuracy"]
    return history


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
