"""The memory guard: how much one structure (a tape, a compiled program, a scan's store, an
array) may allocate, checked before it is allocated. ``fg.set_memory_limit`` sets a cap; by
default the machine's available memory is the bound.

The lowest layer beside ``errors``: every module that allocates asks here, none of them owns it.
"""

from __future__ import annotations

import os

import numpy as np

from .errors import fail

_LIMIT = [None]  # user memory limit in bytes for buffers a tape allocates


def set_memory_limit(nbytes):
    """Cap the memory fastgrad allocates for one structure, in bytes (None: the machine's
    available memory, the default).

    The guard counts what is really allocated, before allocating it: a tape's buffers together
    (value and integer arenas at their capacity, the copy made while one grows, gradients and
    scratch), a compiled program's buffers together, a scan's store, one array made by
    ``fg.zeros``/``ones``/``randn``/``arange`` or a layer's weights. ``nbytes`` must be a
    positive int (``1 << 30``, ``int(1e9)``); floats, strings and booleans are refused.

    >>> import fastgrad as fg
    >>> fg.set_memory_limit(1 << 20)        # 1 MiB
    >>> fg.zeros(1 << 20)                   # 8 MiB of float64  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    fastgrad.core.errors.FastgradError: zeros: needs 0.01 GiB of buffers but only 0.00 GiB are ...
    >>> fg.set_memory_limit(None)           # back to the available memory
    """
    if nbytes is not None and (isinstance(nbytes, (bool, np.bool_))
                               or not isinstance(nbytes, (int, np.integer)) or nbytes <= 0):
        raise fail("set_memory_limit", f"nbytes must be a positive int number of bytes or None, "
                   f"got {nbytes!r}", "pass e.g. 1 << 30 for 1 GiB (int(1e9) for a float), "
                   "or None for the available memory")
    _LIMIT[0] = None if nbytes is None else int(nbytes)


def available_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def check_memory(what, nbytes, fix, held=0):
    """Raise before allocating ``nbytes`` for a structure already holding ``held`` bytes: past
    the user limit (which bounds the structure: held + nbytes) or past the available memory
    (which the held bytes are already out of: nbytes)."""
    if _LIMIT[0] is not None:
        nbytes, limit = held + nbytes, _LIMIT[0]
    else:
        limit = available_memory()
    if nbytes > limit:
        raise fail(what, f"needs {nbytes / 2**30:.2f} GiB of buffers but only "
                   f"{limit / 2**30:.2f} GiB are {'allowed' if _LIMIT[0] else 'available'}", fix)


def memory_limit():
    """The cap fg.set_memory_limit set, in bytes, or None (the available memory bounds)."""
    return _LIMIT[0]


_CHECK_FROM = 1 << 26  # below 64 MiB only a user limit (fg.set_memory_limit) is checked


def needs_no_check(nbytes) -> bool:
    """True when ``nbytes`` need no check: no user limit and below _CHECK_FROM."""
    return _LIMIT[0] is None and nbytes < _CHECK_FROM


def guard_memory(what, nbytes, fix, held=0):
    """Raise FastgradError before allocating ``nbytes`` for a structure (a tape, a program, an
    array) that already holds ``held``: past fg.set_memory_limit (held + nbytes) or the
    available memory (nbytes). Small requests skip reading /proc/meminfo."""
    if needs_no_check(nbytes):
        return
    check_memory(what, nbytes, fix, held)


__all__ = ["available_memory", "check_memory", "guard_memory", "memory_limit", "needs_no_check",
           "set_memory_limit"]
