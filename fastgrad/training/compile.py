"""Trace once, replay natively: ``fg.compile`` (``fg.fit`` runs its steps over epochs: fit.py).

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
import threading
import weakref

import numpy as np

from ..runtime import blas_threads as _blas_threads
from ..core.errors import FastgradError, fail
from ..ops import fmt
from .optim import Optimizer
from ..frontend.modes import FLOAT_DTYPES, get_default_dtype
from ..frontend.inputs import input_dtype_problem
from ..frontend.tensor import Tensor, input_array
from .program import Program

__all__ = ["Compiled", "compile", "step_lock"]

log = logging.getLogger("fastgrad")


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
        (``frontend.inputs.input_dtype_problem``), as in eager ops: a signature is traced, and
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
                log.info("fastgrad.compile: tracing again for new input signature %s "
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


def _same_signature(signature, inputs) -> bool:
    if len(signature) != len(inputs):
        return False
    for (shape, dtype), x in zip(signature, inputs):
        if type(x) is not np.ndarray or x.shape != shape or x.dtype != dtype:
            return False
    return True


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
