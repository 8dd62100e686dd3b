"""The one decorator that owns every Numba option used by fastgrad's kernels.

Why a digest-keyed cache directory: Numba keys a cached function on its *own* file, so a kernel
that calls a helper in another file keeps serving the old machine code after that helper changes.
Keying the cache directory on a digest of every kernel source (and the op table, whose codes are
frozen into the kernels as constants) makes any edit start a fresh cache.
"""

import hashlib
import os
import pathlib
import tempfile

import numba

_HERE = pathlib.Path(__file__).resolve().parent
_OPCODES = _HERE.parent / "fastgrad" / "opcodes.py"  # editable install: kernels/ sits beside fastgrad/
if not _OPCODES.exists():
    _OPCODES = _HERE.parent / "opcodes.py"  # wheel install: kernels/ is fastgrad/kernels/


def _source_digest() -> str:
    h = hashlib.sha256(numba.__version__.encode())
    for path in sorted(_HERE.glob("*.py")) + ([_OPCODES] if _OPCODES.exists() else []):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _writable(path: pathlib.Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, delete=True)
        probe.close()
        return True
    except OSError:
        return False


def _choose_cache_dir():
    """Return (directory or None, enabled). Honors NUMBA_CACHE_DIR / FASTGRAD_CACHE_DIR."""
    if os.environ.get("FASTGRAD_DISABLE_CACHE"):
        return None, False
    digest = _source_digest()
    candidates = []
    if os.environ.get("FASTGRAD_CACHE_DIR"):
        candidates.append(pathlib.Path(os.environ["FASTGRAD_CACHE_DIR"]) / digest)
    if os.environ.get("NUMBA_CACHE_DIR"):
        candidates.append(pathlib.Path(os.environ["NUMBA_CACHE_DIR"]) / ("fastgrad-" + digest))
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    candidates.append(pathlib.Path(xdg) / "fastgrad" / digest)
    uid = os.getuid() if hasattr(os, "getuid") else 0
    candidates.append(pathlib.Path(tempfile.gettempdir()) / f"fastgrad-cache-{uid}" / digest)
    for cand in candidates:
        if _writable(cand):
            return cand, True
    return None, False  # nowhere writable: compile every session rather than fail


CACHE_DIR, CACHE_ENABLED = _choose_cache_dir()
if CACHE_ENABLED:
    numba.config.CACHE_DIR = str(CACHE_DIR)

# error_model="numpy": no zero-division check per "/" (it blocks vectorisation); IEEE inf/nan
# results instead, which detect_anomaly reports. No fastmath: gradients must match finite
# differences and NumPy to rounding.
OPTIONS = dict(cache=CACHE_ENABLED, nogil=True, error_model="numpy", fastmath=False)


def jit(fn):
    """Compile ``fn`` with fastgrad's Numba options (cached, nogil, numpy error model)."""
    return numba.njit(**OPTIONS)(fn)


# Reassociation lets LLVM vectorise a dot-product reduction (it must reorder the sum to use
# SIMD lanes). Only the small-matrix loops use it: results are deterministic run to run, but
# rounded differently from a sequential sum (well inside the gradcheck and NumPy tolerances).
# NaN and Inf semantics are kept (no nnan/ninf).
REDUCE_OPTIONS = dict(OPTIONS, fastmath={"reassoc", "nsz", "contract", "arcp"})


def jit_reduce(fn):
    """``jit`` plus floating-point reassociation, for dot-product loops (see above)."""
    return numba.njit(**REDUCE_OPTIONS)(fn)


def jit_inline(fn):
    """``jit`` inlined into each caller at Numba IR level (inline='always').

    Why: Numba links every callee's LLVM module into each caller and re-optimises and re-emits
    the whole linked tree there. A function that calls the row dispatchers would cost a full
    copy of that work (about 4 s per layer, measured); inlined, it costs its own few lines.
    """
    return numba.njit(inline="always", **OPTIONS)(fn)


def native_entry(dispatcher, args):
    """The compiled entry point of ``dispatcher`` for the types of ``args`` (a call with those
    types must have compiled or loaded it first), or None.

    Calling the entry point skips the dispatcher's type resolution of every argument on every
    call (for a training step's 25 arrays that was about 1.2 µs of a 25 µs tiny-MLP step).
    The entry point does NOT check types, so the caller must only reuse it for arguments of
    the same types (fastgrad/compile.py ``Program.fast_step`` says how it ensures that).
    """
    try:
        return dispatcher.overloads[tuple(dispatcher.typeof_pyval(a) for a in args)].entry_point
    except KeyError:
        return None
