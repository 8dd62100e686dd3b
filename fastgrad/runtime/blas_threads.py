"""How many threads the large matrix products run on: never more than the cores that other
processes leave free (issue "Long horizons for real", item 4).

A product of more than ``OPENBLAS_ONE_THREAD_MAX_WORK`` multiply-adds runs on the BLAS's thread
pool (kernels/blas.py). On an idle machine a thread per core pays; beside a busy process, a
pool of that size waits at every product for the thread that shares its core, and a training
step slowed 5-30x. So the kernels pass ``kernels.blas.threads()`` to the BLAS's thread-local
setter around each large product, and this module keeps that count at

    min(the CPUs this process may use, a cap the user set, CPUs - other processes' running threads)

at least 1. "Other processes' running threads" is the kernel's count of runnable threads
(/proc/loadavg, Linux) minus this process's own (its threads in state R, which include a BLAS
pool still spinning after a product), the lowest of the last SAMPLES samples: a process that
keeps a core busy shows in every sample, a short-lived one (a shell command) in few, and a
neighbour counts once it has lasted SAMPLES samples. ``refresh()`` samples at
most every ``REFRESH_SECONDS``; the training entry points call it (a compiled step, ``fit``, a
backward), so a loop adapts within about a second when a neighbour starts or stops.

The cap: ``fg.set_blas_threads(n)`` (None: automatic again), else OPENBLAS_NUM_THREADS,
MKL_NUM_THREADS or OMP_NUM_THREADS when set, as the libraries themselves read them.

>>> import fastgrad as fg
>>> fg.set_blas_threads(1); fg.get_blas_threads()
1
>>> fg.set_blas_threads(None)
"""

from __future__ import annotations

import os
import threading
import time

from ..core.errors import fail
from ..kernels import blas as _blas
from ..kernels import workers as _workers

REFRESH_SECONDS = 0.25  # at most one sample per this long
SAMPLES = 3  # the neighbours' count is the lowest of this many recent samples
_ENV_CAPS = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS")

_lock = threading.Lock()
_state = {"user": None, "others": []}
NEXT_SAMPLE = [0.0]  # time.monotonic() of the next sample: a hot loop compares it inline


def cpus() -> int:
    """The CPUs this process may run on."""
    return _workers.usable_cpus()


def env_cap():
    """The first of OPENBLAS_NUM_THREADS, MKL_NUM_THREADS, OMP_NUM_THREADS set to a positive
    integer, else None."""
    for name in _ENV_CAPS:
        value = os.environ.get(name, "").split(",")[0].strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return None


def choose(n_cpus: int, others: int, cap=None) -> int:
    """The thread count for ``n_cpus`` CPUs with ``others`` threads of other processes
    running and an optional ``cap``: at least 1.

    >>> choose(2, 0), choose(2, 1), choose(8, 3), choose(8, 0, cap=4), choose(2, 5)
    (2, 1, 5, 4, 1)
    """
    free = max(1, n_cpus - max(0, others))
    return max(1, min(free, cap) if cap else free)


def _running_system():
    """Runnable threads on the machine now (the 4th field of /proc/loadavg), or None."""
    try:
        with open("/proc/loadavg") as f:
            return int(f.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return None


def _running_own() -> int:
    """This process's threads in state R (running or runnable)."""
    n = 0
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return 1
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                # the state follows the parenthesised command name, which may hold spaces
                if f.read().rpartition(")")[2].split()[0] == "R":
                    n += 1
        except (OSError, IndexError):
            continue
    return max(1, n)


def refresh(now=None) -> int:
    """Sample the machine (at most every REFRESH_SECONDS) and set the large products' thread
    count; returns it. Cheap when called more often: one clock read. A hot loop may compare
    ``time.monotonic()`` with ``NEXT_SAMPLE[0]`` itself and call this when it is due."""
    now = time.monotonic() if now is None else now
    if now < NEXT_SAMPLE[0]:
        return _blas.threads()
    with _lock:
        if now < NEXT_SAMPLE[0]:
            return _blas.threads()
        NEXT_SAMPLE[0] = now + REFRESH_SECONDS
        cap = _state["user"] or env_cap()
        system = _running_system()
        if system is not None:
            recent = (_state["others"] + [system - _running_own()])[-SAMPLES:]
            _state["others"] = recent
            others = min(recent) if len(recent) == SAMPLES else 0  # not yet seen to last
        else:
            others = 0  # no load figures (not Linux): the CPUs, or the cap
        count = _state["user"] or choose(cpus(), others, cap)
        _blas.set_threads(count)
        return count


def set_blas_threads(n=None) -> None:
    """Run fastgrad's large matrix products on ``n`` threads (an int >= 1), or choose from the
    machine's load again (None, the default).

    >>> import fastgrad as fg
    >>> fg.set_blas_threads(2); fg.get_blas_threads()
    2
    >>> fg.set_blas_threads(None)
    """
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise fail("set_blas_threads", f"n must be an int >= 1 or None, got {n!r}",
                   "pass a thread count such as 1, or None to choose from the load")
    with _lock:
        _state["user"], NEXT_SAMPLE[0] = n, 0.0
    if n is not None:
        _blas.set_threads(n)
    else:
        refresh()


def get_blas_threads() -> int:
    """The number of threads fastgrad's large matrix products run on now."""
    return _blas.threads()


__all__ = ["NEXT_SAMPLE", "REFRESH_SECONDS", "choose", "cpus", "env_cap", "get_blas_threads",
           "refresh", "set_blas_threads"]
