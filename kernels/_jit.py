"""The one decorator that owns every Numba option used by fastgrad's kernels.

Why a digest-keyed cache directory: Numba keys a cached function on its *own* file, so a kernel
that calls a helper in another file keeps serving the old machine code after that helper changes.
Keying the cache directory on a digest of every kernel source (and the op registry's modules,
fastgrad/ops/, whose codes are frozen into the kernels as constants) makes any edit start a fresh
cache.

Why a checked cache (``CheckedFunctionCache``): Numba unpickles its index and data files as they
are, so one damaged file (a truncated or bit-flipped data file, an empty one, a garbled index)
raised a raw ``UnpicklingError``/``EOFError``/LLVM ``RuntimeError`` on every run until the user
deleted the cache, and a full disk raised ``OSError``. Every cache file now carries a SHA-256
of its contents, checked before anything is unpickled; any fault in reading or writing the
cache logs one warning on the ``fastgrad`` logger naming the directory, and the kernel is
compiled (and the damaged entry rewritten, or kept in memory when the directory cannot take
files) instead.
"""

import hashlib
import logging
import os
import pathlib
import pickle
import tempfile
import threading

import numba
from numba.core import caching
from numba.core.registry import CPUDispatcher

__all__ = ["CACHE_DIR", "CACHE_ENABLED", "CacheDamaged", "CheckedFunctionCache", "OPTIONS",
           "REDUCE_OPTIONS", "jit", "jit_entry", "jit_inline", "jit_reduce", "native_entry",
           "njit_with",
           "per_code", "registry_files", "unwritable_dirs"]

log = logging.getLogger("fastgrad")

_HERE = pathlib.Path(__file__).resolve().parent


def registry_files(here: pathlib.Path = _HERE) -> list:
    """The op registry's modules (fastgrad/ops/*.py), whose op codes and family numbers the
    kernels freeze in as constants: an editable install has kernels/ beside fastgrad/, a wheel
    has it as fastgrad/kernels/."""
    for package in (here.parent / "fastgrad" / "ops", here.parent / "ops"):
        if (package / "__init__.py").is_file():
            return sorted(package.glob("*.py"))
    return []


def _source_digest(here: pathlib.Path = _HERE) -> str:
    h = hashlib.sha256(numba.__version__.encode())
    for path in sorted(here.glob("*.py")) + registry_files(here):
        h.update(f"{path.parent.name}/{path.name}".encode())
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
    for i, cand in enumerate(candidates):
        if _writable(cand):
            if i > 0 and os.environ.get("FASTGRAD_CACHE_DIR"):
                # the user asked for a place: say that it was not usable, and where we went
                log.warning(
                    "fastgrad: FASTGRAD_CACHE_DIR=%s cannot hold the kernel cache (not a "
                    "writable directory); using %s", os.environ["FASTGRAD_CACHE_DIR"], cand)
            return cand, True
    return None, False  # nowhere writable: compile every session rather than fail


CACHE_DIR, CACHE_ENABLED = _choose_cache_dir()
if CACHE_ENABLED:
    numba.config.CACHE_DIR = str(CACHE_DIR)


# ----------------------------------------------------------------------------- checked cache
_SEAL = b"fastgrad-kernel-cache 1\n"  # then 32 bytes of SHA-256, then the pickled payload
_faults_lock = threading.Lock()
_warned_dirs: set = set()  # one warning per directory and process
unwritable_dirs: set = set()  # a write failed there: keep later kernels in memory


class CacheDamaged(Exception):
    """A cache file whose seal or digest does not match its contents."""


def _cache_fault(directory, action, exc, *, unwritable=False) -> None:
    """Record a cache fault in ``directory``: warn once per directory, and after a failed
    write stop writing there for the rest of the process."""
    directory = str(directory)
    with _faults_lock:
        if unwritable:
            unwritable_dirs.add(directory)
        if directory in _warned_dirs:
            return
        _warned_dirs.add(directory)
    # one message for every fault: later faults in this directory are not logged
    log.warning("fastgrad: the kernel cache in %s could not be %s (%s: %s); compiling the "
                "kernels instead (a damaged entry is rewritten; if the directory cannot take "
                "files, the kernels stay in memory for this session)", directory, action,
                type(exc).__name__, exc)


def _seal(payload: bytes) -> bytes:
    return _SEAL + hashlib.sha256(payload).digest() + payload


def _unseal(blob: bytes, path) -> bytes:
    head = len(_SEAL) + 32
    if len(blob) < head or not blob.startswith(_SEAL):
        raise CacheDamaged(f"{path}: not a fastgrad cache file ({len(blob)} bytes)")
    payload = blob[head:]
    if hashlib.sha256(payload).digest() != blob[len(_SEAL):head]:
        raise CacheDamaged(f"{path}: contents do not match their digest (truncated or changed)")
    return payload


class _CheckedCacheFile(caching.IndexDataCacheFile):
    """Numba's index (.nbi) and data (.nbc) files, each sealed with a SHA-256 of its payload
    (so nothing is unpickled before its digest matches). A damaged index reads as an empty
    one, as Numba treats a stale one: the next save rewrites it."""

    def _save_index(self, overloads):
        payload = self._dump((self._version, self._source_stamp, overloads))
        with self._open_for_write(self._index_path) as f:
            f.write(_seal(payload))

    def _load_index(self):
        try:
            with open(self._index_path, "rb") as f:
                blob = f.read()
        except FileNotFoundError:
            return {}
        try:
            version, stamp, overloads = pickle.loads(_unseal(blob, self._index_path))
            if not isinstance(overloads, dict):
                raise CacheDamaged(f"{self._index_path}: the index is not a mapping")
        except Exception as exc:  # noqa: BLE001 - any damage: rebuild the index
            _cache_fault(self._cache_path, "read", exc)
            return {}
        if version != self._version or stamp != self._source_stamp:
            return {}  # another Numba or source: stale, as Numba's own rule
        return overloads

    def _save_data(self, name, data):
        payload = self._dump(data)
        with self._open_for_write(self._data_path(name)) as f:
            f.write(_seal(payload))

    def _load_data(self, name):
        path = self._data_path(name)
        with open(path, "rb") as f:
            blob = f.read()
        return pickle.loads(_unseal(blob, path))


class _DigestDirCacheImpl(caching.CompileResultCacheImpl):
    """Numba's compile-result cache, located only in the digest-keyed directory: Numba's
    fallbacks (``__pycache__`` beside the source, ...) key on the function's own file, so they
    could serve stale machine code after a helper in another file changes."""

    _locator_classes = [caching.UserProvidedCacheLocator]


class CheckedFunctionCache(caching.FunctionCache):
    """Numba's per-function cache with sealed files, and no exception out of a load or a save:
    a fault is logged once (``_cache_fault``) and the function compiled instead. ``entry``:
    the function is compiled with its Python wrapper (``jit_entry``); it is part of the key,
    which Numba's own does not cover (a wrapperless compile loaded for a Python call would
    jump through a wrapper that is not there)."""

    _impl_class = _DigestDirCacheImpl

    def __init__(self, py_func, entry=True, addressed=False):
        super().__init__(py_func)
        # a helper's entry holds IR only (_codegen.py's LINK_ONLY, spelled here: this module
        # loads without the package), never loaded where code must run
        self._role = "entry" if entry else ("kernel" if addressed else "linkonly")
        self._link_only = self._role == "linkonly"
        self._cache_file = _CheckedCacheFile(
            cache_path=self._cache_path, filename_base=self._impl.filename_base,
            source_stamp=self._impl.locator.get_source_stamp())

    def _index_key(self, sig, codegen):
        return (*super()._index_key(sig, codegen), self._role)

    def load_overload(self, sig, target_context):
        try:
            return super().load_overload(sig, target_context)
        except Exception as exc:  # noqa: BLE001 - damaged data, LLVM refusing it, I/O: compile
            _cache_fault(self._cache_path, "read", exc)
            return None

    def save_overload(self, sig, data):
        if str(self._cache_path) in unwritable_dirs:
            return
        # a helper's library is saved without machine code (_codegen.py); an entry's or a row
        # kernel's with it, so that loading one runs no compiler (emitted here, so that a
        # compiler fault is not taken for a cache fault)
        data.library.link_only_allowed = self._link_only
        if not self._link_only and hasattr(data.library, "emit"):
            data.library.emit()
        try:
            super().save_overload(sig, data)
        except Exception as exc:  # noqa: BLE001 - disk full, read-only, ...: stay in memory
            _cache_fault(self._cache_path, "written", exc, unwritable=True)

    def flush(self):
        try:
            super().flush()
        except Exception as exc:  # noqa: BLE001
            _cache_fault(self._cache_path, "written", exc, unwritable=True)


# A kernel that only other kernels call is compiled without Numba's CPython and C wrappers:
# a wrapper unboxes every argument from its Python object, which for the tape's tuple of
# thirteen arrays is a large piece of code to compile (about 0.1 s of each helper's compile
# measured; a compiled RNN step compiles dozens of helpers). Only the entry kernels, which
# Python calls, keep it (``jit_entry``).
_NO_WRAPPERS = dict(no_cpython_wrapper=True, no_cfunc_wrapper=True)


class _KernelOnlyDispatcher(CPUDispatcher):
    """A dispatcher whose compiled code has no Python entry: called from Python it raises,
    where Numba would jump through the missing wrapper (a crash)."""

    def __call__(self, *args, **kwargs):
        raise TypeError(f"fastgrad internal error: the kernel {self.py_func.__qualname__} is "
                        "called from Python, but only kernels call it (decorate it with "
                        "jit_entry to call it from Python, or call its .py_func)")


def njit_with(fn, options, entry=False, addressed=False):
    """``numba.njit`` with ``options``, caching through ``CheckedFunctionCache``; without
    Python wrappers unless ``entry`` (or inlined, where there is nothing to wrap).
    ``addressed``: called through its address (a row kernel), so cached with machine code."""
    options = dict(options)
    cache = options.pop("cache", False)
    wrapped = entry or options.get("inline") == "always"
    if wrapped:
        dispatcher = numba.njit(**options)(fn)
    else:
        dispatcher = _KernelOnlyDispatcher(py_func=fn, locals={},
                                           targetoptions=dict(options, nopython=True,
                                                              **_NO_WRAPPERS))
    if cache:
        # what numba.njit(cache=True) does (Dispatcher.enable_caching), with the checked cache
        try:
            dispatcher._cache = CheckedFunctionCache(
                dispatcher.py_func, entry=wrapped, addressed=addressed)
        except Exception as exc:  # noqa: BLE001 - no usable directory: compile in memory
            _cache_fault(CACHE_DIR, "used", exc, unwritable=True)
    if options.get("inline") != "always":
        _one_specialisation_per_type(dispatcher)
    return dispatcher


def _one_specialisation_per_type(dispatcher):
    """Type a kernel's calls to ``dispatcher`` by their arguments' plain types, not their
    literal values: Numba would compile a separate copy for a call passing ``0`` or ``True``
    beside one passing an int64 or bool variable (measured: three copies of the single-cell
    loop, a second each). The kernels prune nothing on an argument's value across a call
    (inlined helpers and closures over an op code do, and keep their literals)."""
    from numba.core import types

    get_call_template = dispatcher.get_call_template

    def plain_call_template(args, kws):
        return get_call_template([types.unliteral(a) for a in args],
                                 {k: types.unliteral(v) for k, v in kws.items()})

    dispatcher.get_call_template = plain_call_template

# error_model="numpy": no zero-division check per "/" (it blocks vectorisation); IEEE inf/nan
# results instead, which detect_anomaly reports. No fastmath: gradients must match finite
# differences and NumPy to rounding.
OPTIONS = dict(cache=CACHE_ENABLED, nogil=True, error_model="numpy", fastmath=False)


def jit(fn):
    """Compile ``fn`` with fastgrad's Numba options (cached, nogil, numpy error model), for
    calls from other kernels only (no Python wrapper: see ``_NO_WRAPPERS``)."""
    return njit_with(fn, OPTIONS)


def jit_entry(fn):
    """``jit`` for a kernel that Python calls (an entry: the replay loops, the training step,
    the optimizer update, ...): compiled with Numba's Python wrapper."""
    return njit_with(fn, OPTIONS, entry=True)


# Reassociation lets LLVM vectorise a dot-product reduction (it must reorder the sum to use
# SIMD lanes). Only the small-matrix loops use it: results are deterministic run to run, but
# rounded differently from a sequential sum (well inside the gradcheck and NumPy tolerances).
# NaN and Inf semantics are kept (no nnan/ninf).
REDUCE_OPTIONS = dict(OPTIONS, fastmath={"reassoc", "nsz", "contract", "arcp"})


def jit_reduce(fn):
    """``jit`` plus floating-point reassociation, for dot-product loops (see above)."""
    return njit_with(fn, REDUCE_OPTIONS)


def jit_inline(fn):
    """``jit`` inlined into each caller at Numba IR level (inline='always'): for accessors
    called with constants (an operand's number, an op code) that a caller's branches prune on.

    Each call site types and lowers the callee's code again, so a function of any size that
    several kernels call is a ``jit`` helper instead: compiled once, linked into each caller
    (without machine code of its own, _codegen.py).
    """
    return njit_with(fn, dict(OPTIONS, inline="always"))


def native_entry(dispatcher, args):
    """The compiled entry point of ``dispatcher`` for the types of ``args`` (a call with those
    types must have compiled or loaded it first), or None.

    Calling the entry point skips the dispatcher's type resolution of every argument on every
    call (for a training step's 25 arrays that was about 1.2 µs of a 25 µs tiny-MLP step).
    The entry point does NOT check types, so the caller must only reuse it for arguments of
    the same types (fastgrad/training/program.py ``Program.fast_step`` says how it ensures that).
    """
    try:
        return dispatcher.overloads[tuple(dispatcher.typeof_pyval(a) for a in args)].entry_point
    except KeyError:
        return None


def per_code(factory):
    """``f(code, *args)`` for Numba-compiled callers, compiled for each constant op ``code`` as
    ``factory(code)(code, *args)``.

    ``factory(op)`` returns a function of ``(code, *args)`` whose branches compare ``op``, a
    closure variable, with op codes (codes.py): Numba drops the branches of the other ops before
    it types them, so each op compiles its own code only (a function that branched on its
    ``code`` argument would compile every branch for every op). ``code`` must be a compile-time
    constant where ``f`` is called: an op's row kernel is a closure over its code (dispatch.py)
    and passes it down. The function is compiled into its caller, the op's row kernel, with
    fastgrad's options; the row kernel is what the cache keeps.
    """
    import inspect

    from numba.core import types
    from numba.core.errors import TypingError
    from numba.extending import overload

    made = {}
    lock = threading.Lock()
    name = factory.__name__.removesuffix("_of").lstrip("_")

    def typed(code, *args):
        if not isinstance(code, types.IntegerLiteral):
            raise TypingError(f"{name}: the op code must be a compile-time constant")
        with lock:
            impl = made.get(code.literal_value)
            if impl is None:
                impl = made[code.literal_value] = factory(code.literal_value)
        return impl

    # Numba wants the function, its typing function and the implementation to take the same
    # parameters: the stub and the typing function are written with the factory's.
    params = ", ".join(inspect.signature(factory(0)).parameters)
    scope = {"typed": typed}
    exec(f"def {name}({params}):\n    raise TypeError('{name}: call it from a Numba-compiled "
         f"function')\n\ndef typed_{name}({params}):\n    return typed({params})\n", scope)
    overload(scope[name], prefer_literal=True,
             jit_options=dict(OPTIONS, cache=False, **_NO_WRAPPERS))(
        scope[f"typed_{name}"])
    return scope[name]
