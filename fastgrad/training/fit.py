"""``fg.fit``: epochs of compiled training steps over arrays (shuffled batches, validation data,
callbacks, a progress bar), returning a ``History``."""

from __future__ import annotations

import logging
import numbers
import signal
import sys
import threading
import time

import numpy as np

from ..runtime import blas_threads as _blas_threads
from ..runtime.anomaly import AnomalyError, anomaly_enabled
from ..core.errors import fail
from ..kernels import train as _train
from ..ops import flag, fmt
from ..frontend.modes import FLOAT_DTYPES
from ..frontend.inputs import input_dtype_problem
from ..frontend.tensor import input_array
from .compile import Compiled
from .program import EMPTY_INDEX

__all__ = ["History", "fit"]

log = logging.getLogger("fastgrad")


_EMPTY_F = {dt: np.zeros((0, 1), dt) for dt in FLOAT_DTYPES}


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
    eager ops and compiled steps (``frontend.inputs.input_dtype_problem``). Integer labels are
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
    Yi = Yc if int_labels else EMPTY_INDEX
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
                        arrays_of = tape.program_arrays
                        arrays_of.param_arena, arrays_of.param_grads = opt.flat, opt.flat_grad
                        if prog.external == 0:
                            tape.program_arrays.external = arrays[11]
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
