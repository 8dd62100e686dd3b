"""Compiling row kernels on several cores: forked worker processes fill the kernel cache.

Numba compiles one function at a time in a process (under its global compiler lock), and a
program's first run compiles a forward and a VJP kernel for each op it uses, each in about a
second. ``compile_units`` splits the kernels that the cache does not hold yet between this
process and ``workers() - 1`` forked children: each child compiles its share, which Numba
writes to the kernel cache, and exits; this process compiles its own share meanwhile, waits,
then loads the children's kernels from the cache. A child that fails leaves its share to this
process, which compiles whatever the cache still lacks: the result never depends on the
children, only the time does.

Used only where it is safe and useful: on Linux (fork; macOS's system libraries are not
fork-safe), with a writable kernel cache (the children hand their work over through it), and
for at least two kernels not yet cached. ``FASTGRAD_COMPILE_WORKERS`` sets the number of
processes (1: compile in this process only); the default is the number of CPUs this process
may run on, at most 8.
"""

import json
import os
import sys

from numba.core.compiler_lock import global_compiler_lock
from numba.core.dispatcher import Dispatcher

from ._jit import CACHE_ENABLED, OPTIONS, CheckedFunctionCache, njit_with, unwritable_dirs

MAX_WORKERS = 8


class Reporting:
    """How the children's compilations reach this process's compile report (the Python side,
    fastgrad/runtime/kernel_cache.py, installs its own; the kernels know nothing of logging)."""

    def announce(self, dtype):
        """Called before forking: say once that kernels of ``dtype`` are being compiled."""

    def in_child(self):
        """Called first in a child: report only its own compilations from now on."""

    def child_records(self) -> list:
        """In a child: its compilations, as JSON-able rows, for the parent."""
        return []

    def add_records(self, rows):
        """In the parent: add a child's rows to the report."""


REPORTING = Reporting()


def workers() -> int:
    """How many processes compile kernels at once (FASTGRAD_COMPILE_WORKERS, else the CPUs
    this process may use, at most MAX_WORKERS)."""
    given = os.environ.get("FASTGRAD_COMPILE_WORKERS", "").strip()
    if given:
        try:
            return max(1, int(given))
        except ValueError:
            return 1
    return max(1, min(usable_cpus(), MAX_WORKERS))


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def compiled(py_func, signature):
    """``py_func`` compiled (or loaded from the checked cache) for ``signature``: the
    dispatcher, which owns the machine code, and the address of the compiled function."""
    dispatcher = njit_with(py_func, OPTIONS, addressed=True)
    dispatcher.compile(signature)
    cres = dispatcher.overloads[signature.args]
    address = cres.library.get_pointer_to_function(cres.fndesc.llvm_func_name)
    if not address:
        raise RuntimeError(f"fastgrad internal error: no address for {py_func.__qualname__}")
    return dispatcher, address


def is_cached(target, signature) -> bool:
    """Whether ``target`` (a row kernel's Python function, or an entry kernel's dispatcher)
    is compiled in this process or in the kernel cache (its index lists ``signature``; the
    data is checked when it is loaded)."""
    if isinstance(target, Dispatcher):
        if tuple(signature) in target.overloads:
            return True
        dispatcher = target
    else:
        dispatcher = njit_with(target, OPTIONS, addressed=True)
    cache = getattr(dispatcher, "_cache", None)
    if not isinstance(cache, CheckedFunctionCache):
        return False
    try:
        key = cache._index_key(signature, dispatcher.targetctx.codegen())
        return key in cache._cache_file._load_index()
    except Exception:  # noqa: BLE001 - unreadable: treat as missing, compiling decides
        return False


def _can_fork() -> bool:
    return (sys.platform.startswith("linux") and hasattr(os, "fork") and CACHE_ENABLED
            and not unwritable_dirs)


def _compile_unit(target, signature):
    if isinstance(target, Dispatcher):  # an entry kernel: its own dispatcher keeps the code
        target.compile(signature)
        return None
    return compiled(target, signature)


def compile_units(units, dtype):
    """Compile the kernels ``units`` on several cores where that helps (see above): rows
    (target, signature, group, weight), the target a row kernel's Python function (its
    signature a Numba Signature) or an entry kernel's dispatcher (the tuple of its argument
    types: a call with those types then finds it in the cache). Units of one ``group`` link
    the same helpers, so one process compiles them all (the helpers once); ``weight`` is a
    rough cost, to balance the processes. Returns {py_func: (dispatcher, address)} for the
    row kernels compiled in this process; the rest are in the kernel cache, for ``compiled``
    to load."""
    if len(units) < 2 or not _can_fork():
        return {}
    missing = [u for u in units if not is_cached(u[0], u[1])]
    if all(isinstance(u[0], Dispatcher) for u in missing):
        return {}  # entry kernels alone: the call that needs them compiles them
    shares = _balanced(missing, workers())
    if len(shares) < 2:
        return {}
    REPORTING.announce(dtype)
    children = []
    try:
        with global_compiler_lock:  # no other thread is inside Numba while the children fork
            for share in shares[1:]:
                try:
                    children.append(_fork(share))
                except OSError:  # no memory or process slots for a child: compile it here
                    break
        done = {target: _compile_unit(target, sig) for target, sig in shares[0]}
    finally:
        for pid, read_end in children:
            _collect(pid, read_end)
    return {target: result for target, result in done.items() if result is not None}


def _balanced(units, n):
    """``units`` in at most ``n`` shares of [(target, signature)]: whole groups, the heaviest
    first, each to the lightest share so far (the longest-processing-time rule). The first
    share, which this process compiles, is the one with the entry kernels when any."""
    groups = {}
    for target, sig, group, weight in units:
        members, total = groups.get(group, ([], 0.0))
        groups[group] = (members + [(target, sig)], total + weight)
    n = max(1, min(n, len(groups)))
    shares, loads = [[] for _ in range(n)], [0.0] * n
    for members, total in sorted(groups.values(), key=lambda g: -g[1]):
        i = loads.index(min(loads))
        shares[i] += members
        loads[i] += total
    shares.sort(key=lambda s: not any(isinstance(t, Dispatcher) for t, _ in s))
    return [s for s in shares if s]


def _fork(share):
    """Start a child that compiles ``share`` into the cache; returns (pid, pipe to read)."""
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        os.close(write_end)
        return pid, read_end
    status = 1
    try:  # the child: never returns into the caller's code
        os.close(read_end)
        REPORTING.in_child()
        for target, sig in share:
            _compile_unit(target, sig)
        status = 0
    except BaseException:  # noqa: BLE001 - Ctrl-C or a failure: the parent compiles the rest
        pass
    finally:
        try:
            with os.fdopen(write_end, "w") as out:
                json.dump(REPORTING.child_records(), out)
            sys.stderr.flush()
        finally:
            os._exit(status)


def _collect(pid, read_end):
    """Wait for child ``pid`` and add what it compiled to the report. A child still running
    when this process is interrupted is stopped, not left behind."""
    try:
        with os.fdopen(read_end) as pipe:
            text = pipe.read()
        os.waitpid(pid, 0)
    except BaseException:
        try:
            os.kill(pid, 15)
            os.waitpid(pid, 0)
        except OSError:
            pass
        raise
    try:
        rows = json.loads(text) if text else []
    except ValueError:
        rows = []
    REPORTING.add_records(rows)


__all__ = ["MAX_WORKERS", "REPORTING", "Reporting", "compile_units", "compiled", "is_cached",
           "workers"]
