"""The kernel cache from the user's side: a first call that compiles says so, and where the
cache lives (docs/kernel-cache.md; ``fastgrad warmup`` compiles ahead: fastgrad/warmup.py).

What a user sees on a cache miss (no machine code cached for a kernel and its argument types in
the digest-keyed directory that ``kernels/_jit.py`` chose), on stderr unless they configured
logging::

    fastgrad: compiling kernels for float32 (once; cached in ~/.cache/fastgrad/1a2b3c4d5e6f7a8b)
    fastgrad: still compiling (10 s; replay_backward float32)
    fastgrad: compiled replay_backward float32 in 41 s

The first line comes once per dtype and process; a progress line every ``PROGRESS_SECONDS``
while one entry kernel compiles (from a daemon thread that stops when the compilation ends),
then the closing line if a progress line was shown. A warm start prints nothing.

How: Numba announces each compilation that missed its cache with a "numba:compile" event (the
dispatcher tried ``_cache.load_overload`` first, so a cache hit sends none); a listener
registered at import reacts to the events of fastgrad's own kernels. Kernels a kernel calls
compile inside its compilation (nested events): the outermost one is the entry the user called.
Each kernel is written to the cache as soon as it is compiled (Numba saves a callee before the
caller's compilation goes on), so a Ctrl-C loses only the kernel being compiled.

Op kernels missing from the cache may compile in forked worker processes (kernels/workers.py):
this process announces the dtype before they start, each child says what it compiles on the
same stderr (progress lines included, no second "compiling kernels" line), and sends the
records of what it compiled back, so ``REPORTER.compiled`` lists the children's kernels too.

Why this module lives in ``fastgrad/`` and not ``kernels/``: the cache key hashes every file of
``kernels/``, so reporting code there would make each of its edits recompile every kernel.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

import numpy as np
from numba.core import event as _numba_event
from numba.core import types as _nbtypes

from ..kernels import _jit
from ..kernels import workers as _workers

__all__ = ["Compilation", "PROGRESS_SECONDS", "REPORTER", "cache_status", "install",
           "shorten_home"]

log = logging.getLogger("fastgrad")

PROGRESS_SECONDS = 5.0  # a "still compiling" line this often while one entry kernel compiles
_KERNELS_PACKAGE = "fastgrad.kernels"


# ----------------------------------------------------------------------------- the default handler
class _StderrUnlessConfigured(logging.Handler):
    """Print fastgrad's records on stderr while no other handler would show them.

    Python prints an unhandled WARNING itself (``logging.lastResort``) but drops INFO; this
    handler, on the "fastgrad" logger, stands in for it so that the compile line is shown by
    default. As soon as the user configures logging (``logging.basicConfig``, a handler on
    "fastgrad" or any parent it propagates to) their handlers alone show fastgrad's records:
    nothing is printed twice. Checked per record, so configuring after import works.
    """

    def __init__(self):
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record):
        if _user_handlers():
            return
        stream = sys.stderr  # looked up per record: redirect_stderr and pytest's capture work
        if stream is None:  # pythonw: no console
            return
        try:
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # noqa: BLE001 - logging's own rule: a failed emit never raises
            self.handleError(record)


def _user_handlers() -> bool:
    """Whether a handler other than fastgrad's default one would receive a fastgrad record."""
    logger = log
    while logger is not None:
        if any(not isinstance(h, _StderrUnlessConfigured) for h in logger.handlers):
            return True
        if not logger.propagate:
            return False
        logger = logger.parent
    return False


def _say(message, *args):
    """Log ``message`` at INFO on the "fastgrad" logger, and show it when the user configured
    no logging (the default levels would drop INFO). A user who set levels or handlers gets
    exactly what they configured: ``logging.getLogger("fastgrad").setLevel(logging.WARNING)``
    silences the compile lines."""
    if log.isEnabledFor(logging.INFO):
        log.info(message, *args)
    elif (log.level == logging.NOTSET and log.manager.disable < logging.INFO
          and not _user_handlers()):
        log.handle(log.makeRecord(log.name, logging.INFO, __file__, 0, message, args, None))


# ----------------------------------------------------------------------------- where the cache is
def shorten_home(path) -> str:
    """``path`` with the home directory written as ``~``.

    >>> import os
    >>> shorten_home(os.path.join(os.path.expanduser("~"), ".cache", "fastgrad"))
    '~/.cache/fastgrad'
    """
    path, home = str(path), os.path.expanduser("~")
    if home not in ("", os.sep) and (path == home or path.startswith(home + os.sep)):
        return "~" + path[len(home):]
    return path


def cache_status() -> tuple:
    """(directory or None, how long compiled kernels last): ``(dir, "once; cached in
    ~/...")`` when kernels are written to the cache, else ``(None, "once per process: <why
    nothing is cached>")``; the second part is what the compile line shows in parentheses."""
    if os.environ.get("FASTGRAD_DISABLE_CACHE"):
        return None, "once per process: FASTGRAD_DISABLE_CACHE is set"
    if not _jit.CACHE_ENABLED:
        return None, "once per process: no writable cache"
    root = str(_jit.CACHE_DIR)
    if any(d == root or d.startswith(root + os.sep) for d in list(_jit.unwritable_dirs)):
        return None, f"once per process: the cache in {shorten_home(root)} cannot be written"
    return _jit.CACHE_DIR, f"once; cached in {shorten_home(root)}"


# ----------------------------------------------------------------------------- compile events
def _float_dtype(args):
    """The dtype name of the first float array among the Numba types ``args``, or None.

    Top-level arrays first: the replay kernels take the tape as a tuple whose float
    attributes are float64 whatever the dtype, then the values arena in the tape's dtype."""
    arrays = [a for a in args if isinstance(a, _nbtypes.Array)]
    arrays += [t for a in args if isinstance(a, _nbtypes.BaseTuple) for t in a
               if isinstance(t, _nbtypes.Array)]
    for a in arrays:
        if isinstance(a.dtype, _nbtypes.Float):
            return str(a.dtype)
    return None


def _closure_dtype(func):
    """The float dtype an op's row kernel is made for: its arguments are only the address of
    a sweep's context and the row (kernels/call.py), its dtype a closure variable."""
    for cell in getattr(func, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        if isinstance(value, type) and issubclass(value, np.floating):
            return np.dtype(value).name
    return None


class Compilation:
    """One fastgrad kernel compiled in this process: ``kernel`` name, ``dtype`` (of its first
    float array argument, or None), ``seconds``, ``depth`` (0: an entry kernel the program
    called; 1 and more: a kernel it calls, compiled within it) and ``failed`` (it raised:
    Ctrl-C, or Numba asking to compile again with other argument types)."""

    __slots__ = ("kernel", "dtype", "seconds", "depth", "failed")

    def __init__(self, kernel, dtype, seconds, depth, failed):
        self.kernel, self.dtype, self.seconds = kernel, dtype, seconds
        self.depth, self.failed = depth, failed

    def __repr__(self):
        return (f"Compilation({self.kernel!r}, {self.dtype!r}, {self.seconds:.2f} s, "
                f"depth={self.depth}{', failed' if self.failed else ''})")


class _Progress:
    """The daemon thread that prints "still compiling" every PROGRESS_SECONDS until stopped."""

    def __init__(self, what):
        self.what, self.start, self.lines = what, time.perf_counter(), 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fastgrad-compile-progress",
                                        daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(PROGRESS_SECONDS):
            self.lines += 1
            _say("fastgrad: still compiling (%.0f s; %s)", time.perf_counter() - self.start,
                 self.what)

    def stop(self):
        """Stop the thread and wait for it: no progress line comes after this returns."""
        self._stop.set()
        self._thread.join()
        return time.perf_counter() - self.start


class _CompileReporter(_numba_event.Listener):
    """Says what is compiling: the compile line, the progress thread, a record per kernel.

    Numba compiles under its global compiler lock, so one thread compiles at a time and a
    kernel's nested events come from the thread that started it; the stack is still kept per
    thread, and the shared state under a lock, so nothing depends on that.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._local = threading.local()
        self._announced = set()  # dtypes whose compile line was shown in this process
        self.compiled: list[Compilation] = []  # every fastgrad kernel compiled, in order

    def _stack(self):
        stack = getattr(self._local, "stack", None)
        if stack is None:
            stack = self._local.stack = []
        return stack

    @staticmethod
    def _kernel(event):
        data = event.data if isinstance(event.data, dict) else {}
        func = getattr(data.get("dispatcher"), "py_func", None)
        module = getattr(func, "__module__", "") or ""
        if module != _KERNELS_PACKAGE and not module.startswith(_KERNELS_PACKAGE + "."):
            return None  # a user's own Numba function, or Numba's: not ours to report
        return func.__name__, _float_dtype(data.get("args", ())) or _closure_dtype(func)

    def on_start(self, event):
        kernel = self._kernel(event)
        if kernel is None:
            return
        stack = self._stack()
        stack.append([kernel, time.perf_counter(), None])
        if len(stack) > 1:
            return
        name, dtype = kernel
        with self._lock:
            first = dtype not in self._announced
            self._announced.add(dtype)
        if first:
            _say("fastgrad: compiling kernels%s (%s)", f" for {dtype}" if dtype else "",
                 cache_status()[1])
        stack[0][2] = _Progress(f"{name} {dtype}" if dtype else name)

    def on_end(self, event):
        kernel = self._kernel(event)
        if kernel is None:
            return
        stack = self._stack()
        if not stack or stack[-1][0] != kernel:
            return  # registered while this kernel was compiling: its start was not seen
        (name, dtype), start, progress = stack.pop()
        # Event.is_failed is inverted in Numba (it tests "is None"): read the details directly
        exc = getattr(event, "_exc_details", None)
        failed = bool(exc) and exc[0] is not None
        interrupted = failed and issubclass(exc[0], KeyboardInterrupt)
        seconds = time.perf_counter() - start
        with self._lock:
            self.compiled.append(Compilation(name, dtype, seconds, len(stack), failed))
            done = sum(1 for c in self.compiled if not c.failed)
        log.debug("fastgrad: kernel %s%s %s in %.2f s", name, f" {dtype}" if dtype else "",
                  "interrupted" if interrupted else "failed" if failed else "compiled",
                  seconds)
        if progress is None:
            return
        progress.stop()
        what = f"{name} {dtype}" if dtype else name
        if interrupted:
            where = cache_status()[0]
            _say("fastgrad: compilation of %s interrupted%s", what,
                 f"; the kernels compiled before it ({done}) stay cached in "
                 f"{shorten_home(where)}" if where is not None else "")
        elif progress.lines and not failed:
            _say("fastgrad: compiled %s in %.0f s", what, seconds)


    def announce(self, dtype):
        """Show the compile line for ``dtype`` unless this process showed it already."""
        with self._lock:
            first = dtype not in self._announced
            self._announced.add(dtype)
        if first:
            _say("fastgrad: compiling kernels for %s (%s)", dtype, cache_status()[1])


class _WorkerReporting(_workers.Reporting):
    """The compile report across forked compile workers (kernels/workers.py)."""

    def announce(self, dtype):
        REPORTER.announce(np.dtype(dtype).name)

    def in_child(self):
        with REPORTER._lock:
            REPORTER._announced.update(("float32", "float64", None))
            REPORTER.compiled = []

    def child_records(self):
        return [[c.kernel, c.dtype, c.seconds, c.depth, c.failed] for c in REPORTER.compiled]

    def add_records(self, rows):
        records = []
        for row in rows:
            if isinstance(row, list) and len(row) == 5:
                kernel, dtype, seconds, depth, failed = row
                records.append(Compilation(str(kernel), dtype, float(seconds), int(depth),
                                           bool(failed)))
        with REPORTER._lock:
            REPORTER.compiled.extend(records)


REPORTER = _CompileReporter()
_installed = False
_install_lock = threading.Lock()


def install():
    """Register the compile reporter with Numba and the default stderr handler on the
    "fastgrad" logger (idempotent; ``import fastgrad`` calls it)."""
    global _installed
    with _install_lock:
        if _installed:
            return
        if not any(isinstance(h, _StderrUnlessConfigured) for h in log.handlers):
            log.addHandler(_StderrUnlessConfigured())
        _numba_event.register("numba:compile", REPORTER)
        _workers.REPORTING = _WorkerReporting()
        _installed = True
