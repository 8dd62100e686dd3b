"""BLAS gemm with an accumulating beta, callable from the kernels, from SciPy's BLAS or MKL.

Why not np.dot: Numba's np.dot always overwrites its output (beta = 0), so a gradient that
accumulates (+=) needed the product in scratch and then a pass adding it in: two extra sweeps
over the result per VJP. gemm does C = alpha op(A) op(B) + beta C in one.

Why two providers: SciPy's BLAS (OpenBLAS in its wheels) is always there, and is what Numba's
own np.dot calls. Intel's MKL, when installed (``pip install "fastgrad[mkl]"``), runs the large
products of a training step faster on Intel CPUs: on a 2-core Cascade Lake Xeon, 1024x784 @
784x128 took 1.0 ms in MKL against 1.1 ms in OpenBLAS in float32 and 2.1 against 2.9 ms in
float64; that layer's float32 weight gradient 1.0 against 1.5 ms. PyTorch's CPU wheels use MKL.
Products of up to OPENBLAS_ONE_THREAD_MAX_WORK multiply-adds stay in SciPy's BLAS (see there).
``FASTGRAD_BLAS`` chooses: ``auto`` (the default: MKL when installed in this environment,
else SciPy), ``mkl`` (MKL also from the user's or the system's libraries; an error when not
found) or ``scipy``. ``PROVIDER`` says which one this process uses.

Why named symbols: the kernels call ``fastgrad_sgemm`` / ``fastgrad_dgemm`` (SciPy's) and
``fastgrad_sgemm_large`` / ``fastgrad_dgemm_large`` (the provider's), bound when this module is
imported to the libraries' Fortran gemm (the same signature in both). A name
resolved when code is loaded keeps the kernels cacheable, and the cached code serves either
provider; a ctypes function pointer would be an address frozen into the code, not cacheable.
"""

import ctypes
import ctypes.util
import fnmatch
import glob
import importlib.metadata
import os
import site
import sys

from llvmlite import binding as llvm
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .workers import usable_cpus

__all__ = ["OPENBLAS_ONE_THREAD_MAX_WORK", "PROVIDER", "THREADS_SETTABLE", "describe_provider",
           "gemm", "set_threads", "threads"]

_I8 = ir.IntType(8)
_I32 = ir.IntType(32)
_VOIDP = _I8.as_pointer()
_SYMBOLS = {"s": "fastgrad_sgemm", "d": "fastgrad_dgemm"}  # SciPy's BLAS
_LARGE_SYMBOLS = {"s": "fastgrad_sgemm_large", "d": "fastgrad_dgemm_large"}  # the provider's

# Only products of more than this many multiply-adds (m n k) go to MKL; smaller ones stay in
# SciPy's BLAS. Why there: OpenBLAS runs a product of up to 262,144 multiply-adds on the calling
# thread alone, and larger ones on its own thread pool. After a call, each library's threads
# spin for a while waiting for more work, and two spinning pools fight over the cores: the
# 784-128-10 batch-64 float32 step took 980 us with MKL, against 433 us for the Numba step with
# OpenBLAS, when the two alternated in one process (2-core VM; 260 vs 320 us each alone). Above
# the line, every product that would wake OpenBLAS's pool goes to MKL instead. Each call
# alone, OpenBLAS vs MKL, float32 / float64 us, on a 2-core Cascade Lake Xeon: below the line,
# a few us either way (64x128x10 5.1 vs 8.0 / 7.2 vs 9.1; 32x64x64 7.4 vs 5.3 / 11.2 vs 9.9);
# above it MKL wins (1024x128x10 43 vs 28 / 95 vs 39; 64x784x128 101 vs 68 / 234 vs 133).
OPENBLAS_ONE_THREAD_MAX_WORK = 1 << 18
_CHOICES = ("auto", "mkl", "scipy")


def _scipy_gemm():
    """Addresses of SciPy's sgemm and dgemm (scipy.linalg.cython_blas, the BLAS SciPy ships)."""
    from scipy.linalg import cython_blas

    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype = ctypes.c_void_p
    get_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
    capsules = cython_blas.__pyx_capi__
    return {k: get_pointer(capsules[k + "gemm"], get_name(capsules[k + "gemm"])) for k in "sd"}


def _mkl_candidates(wide=True):
    """Paths where MKL's single dynamic library (mkl_rt) may be: the files of the installed
    ``mkl`` distribution and this environment's lib folder; ``wide`` adds the user's lib folder
    and the loader's path (only for FASTGRAD_BLAS=mkl: ``auto`` takes the MKL of this
    environment, not one another program installed)."""
    names = ("libmkl_rt.so*", "libmkl_rt*.dylib", "mkl_rt*.dll")
    try:
        for f in importlib.metadata.files("mkl") or ():
            if any(fnmatch.fnmatch(f.name, n) for n in names):
                yield str(f.locate())
    except importlib.metadata.PackageNotFoundError:
        pass
    for base in (sys.prefix, site.getuserbase()) if wide else (sys.prefix,):
        for sub in ("lib", os.path.join("Library", "bin")):
            for n in names:
                yield from sorted(glob.glob(os.path.join(base, sub, n)), reverse=True)
    found = ctypes.util.find_library("mkl_rt") if wide else None
    if found:
        yield found


def _mkl_gemm(wide=True):
    """(addresses of MKL's sgemm_ and dgemm_, a description), or None when MKL is not found.

    The 32-bit integer interface (LP64) is requested, as SciPy's BLAS and the kernels use; an
    MKL already set to 64-bit integers by its host process is not used."""
    for path in _mkl_candidates(wide):
        try:
            lib = ctypes.CDLL(path)
            set_layer = lib.MKL_Set_Interface_Layer
        except (OSError, AttributeError):
            continue
        set_layer.restype, set_layer.argtypes = ctypes.c_int, [ctypes.c_int]
        if set_layer(0) != 0:  # 0: MKL_INTERFACE_LP64
            continue
        buf = ctypes.create_string_buffer(256)
        version = "mkl"
        try:
            lib.mkl_get_version_string(buf, len(buf))
            words = buf.value.decode(errors="replace").split()
            version += " " + words[words.index("Version") + 1].split("-")[0]
        except (AttributeError, ValueError, IndexError):
            pass
        addresses = {k: ctypes.cast(getattr(lib, k + "gemm_"), ctypes.c_void_p).value
                     for k in "sd"}
        addresses["threads"] = _address_of(lib, "MKL_Set_Num_Threads_Local")
        _LOADED.append(lib)
        return addresses, version
    return None


def _address_of(lib, name):
    """The address of the function ``name`` in ``lib``, or None."""
    try:
        return ctypes.cast(getattr(lib, name), ctypes.c_void_p).value
    except AttributeError:
        return None


def _openblas_threads_setter():
    """The address of openblas_set_num_threads_local in SciPy's OpenBLAS (scipy.libs in SciPy's
    wheels), or None for a SciPy built on another BLAS."""
    try:
        import scipy
    except ImportError:
        return None
    libs = os.path.join(os.path.dirname(scipy.__file__), os.pardir, "scipy.libs")
    for path in sorted(glob.glob(os.path.join(libs, "libscipy_openblas*"))):
        try:
            found = _address_of(ctypes.CDLL(path), "openblas_set_num_threads_local")
        except OSError:
            continue
        if found:
            return found
    return None


_LOADED = []  # the MKL library, kept referenced for the life of the process


def _bind_gemm():
    """Bind the kernels' gemm symbols to the provider FASTGRAD_BLAS asks for; return its name."""
    choice = os.environ.get("FASTGRAD_BLAS", "auto").strip().lower() or "auto"
    if choice not in _CHOICES:
        raise ValueError(f"FASTGRAD_BLAS={os.environ['FASTGRAD_BLAS']!r}: expected one of "
                         f"{', '.join(_CHOICES)} (auto: MKL when installed, else SciPy's BLAS)")
    mkl = _mkl_gemm(wide=choice == "mkl") if choice != "scipy" else None
    if choice == "mkl" and mkl is None:
        raise ImportError("FASTGRAD_BLAS=mkl but MKL's runtime library (mkl_rt) was not found, "
                          "or is set to 64-bit integers (MKL_INTERFACE_LAYER): install it with  "
                          "pip install \"fastgrad[mkl]\"  or unset FASTGRAD_BLAS")
    scipy = _scipy_gemm()
    large, provider = mkl if mkl is not None else (scipy, "scipy")
    for kind in "sd":
        llvm.add_symbol(_SYMBOLS[kind], scipy[kind])
        llvm.add_symbol(_LARGE_SYMBOLS[kind], large[kind])
    setter = large.get("threads") if mkl is not None else _openblas_threads_setter()
    # without a thread-local setter, C's abs stands in: int(int), changes nothing
    llvm.add_symbol(_SET_THREADS_SYMBOL, setter or _address_of(ctypes.CDLL(None), "abs"))
    llvm.add_symbol(_THREADS_SYMBOL, ctypes.addressof(_THREADS))
    return provider, setter is not None


# ----------------------------------------------------------------------------- threads
# A product above OPENBLAS_ONE_THREAD_MAX_WORK runs on the BLAS's thread pool. On a machine
# that another process keeps busy, a pool with a thread per core waits at every product for
# the thread that shares its core with that process (a new user measured a 784-128-10 step at
# 7-46 ms against 1.4 ms with one thread). So every large product runs with ``threads()``
# threads, set through the library's own thread-local setter (OpenBLAS's
# openblas_set_num_threads_local, MKL's MKL_Set_Num_Threads_Local) around the call and
# restored after it: another thread's products, and the user's own NumPy, keep their count.
# fastgrad/runtime/blas_threads.py chooses the count: never more than the cores that other processes
# leave free. The kernels read it from _THREADS (a symbol, so the cached code serves any
# process).
_THREADS_SYMBOL = "fastgrad_blas_threads"
_SET_THREADS_SYMBOL = "fastgrad_blas_set_threads_local"
_THREADS = ctypes.c_int32(usable_cpus())

PROVIDER, THREADS_SETTABLE = _bind_gemm()


def threads() -> int:
    """How many threads a large product (more than OPENBLAS_ONE_THREAD_MAX_WORK multiply-adds)
    runs on: the count the kernels pass to the BLAS's thread-local setter."""
    return _THREADS.value


def set_threads(n: int) -> None:
    """Run every large product on ``n`` threads from now on (n >= 1); without a thread-local
    setter in the bound BLAS (THREADS_SETTABLE False) the library's own count stays."""
    _THREADS.value = max(1, int(n))


def describe_provider() -> str:
    """PROVIDER with the library behind it, e.g. 'mkl 2026.2' or 'scipy (scipy-openblas 0.3.30)'.

    >>> describe_provider().startswith(("mkl", "scipy"))
    True
    """
    if PROVIDER != "scipy":
        return PROVIDER
    try:
        import scipy

        blas = scipy.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"scipy ({blas['name']} {blas['version']})"
    except Exception:  # an older SciPy without the dict form: the name alone
        return "scipy"


@intrinsic
def gemm(typingctx, trans_a, trans_b, m, n, k, alpha, A, a_off, B, b_off, beta, C, c_off):
    """C[c_off:] (m, n), row-major = alpha op(A) @ op(B) + beta C, op(A) (m, k), op(B) (k, n).

    A from a_off holds op(A) row-major, or its transpose (k, m) when trans_a; B from b_off
    holds op(B) (k, n), or (n, k) when trans_b. All three arrays share a float dtype and are
    1-D buffers addressed by offset, as the tape's arenas are. With beta = 0, C's old values
    are not read (BLAS's rule: NaN in C does not leak). No bounds are checked, and m, n, k go
    to BLAS as 32-bit integers: the caller passes extents its tape validated (the recorder
    refuses larger sizes, fastgrad/ops.py ``check_blas_dims``).

    Example, inside a jitted kernel: ``gemm(False, True, 2, 3, 4, 1.0, A, 0, W, 0, 1.0, G, 0)``
    adds A (2, 4) @ W^T into G (2, 3), W stored (3, 4) as a Linear layer's weight is.
    """
    arrays = (A, B, C)
    if not all(isinstance(t, types.Array) for t in arrays):
        return None
    dt = C.dtype
    if dt not in (types.float32, types.float64) or A.dtype != dt or B.dtype != dt:
        return None
    kind = "s" if dt == types.float32 else "d"
    ints = (m, n, k, a_off, b_off, c_off)
    if not all(isinstance(t, types.Integer) for t in ints):
        return None
    sig = types.void(trans_a, trans_b, m, n, k, alpha, A, a_off, B, b_off, beta, C, c_off)

    def codegen(context, builder, signature, args):
        ta, tb, m_, n_, k_, alpha_, a, ao, b, bo, beta_, c, co = args
        tys = signature.args

        def as_int32(v, ty):
            return context.cast(builder, v, ty, types.int32)

        def as_flag(v, ty):
            return builder.icmp_unsigned("!=", as_int32(v, ty), ir.Constant(_I32, 0))

        def data(arr, arrty, off, offty):
            ptr = context.make_array(arrty)(context, builder, arr).data
            offset = context.cast(builder, off, offty, types.intp)
            return builder.bitcast(builder.gep(ptr, [offset]), _VOIDP)

        def by_ref(value):  # Fortran passes every argument by address
            return builder.bitcast(cgutils.alloca_once_value(builder, value), _VOIDP)

        m_, n_, k_ = as_int32(m_, tys[2]), as_int32(n_, tys[3]), as_int32(k_, tys[4])
        ta, tb = as_flag(ta, tys[0]), as_flag(tb, tys[1])
        t, nt = ir.Constant(_I8, ord("T")), ir.Constant(_I8, ord("N"))
        # Column-major BLAS sees each row-major matrix transposed: C^T = op(B)^T op(A)^T.
        fnty = ir.FunctionType(ir.VoidType(), [_VOIDP] * 13)
        small = cgutils.get_or_insert_function(builder.module, fnty, _SYMBOLS[kind])
        large = cgutils.get_or_insert_function(builder.module, fnty, _LARGE_SYMBOLS[kind])
        i64 = ir.IntType(64)
        work = builder.mul(builder.mul(builder.sext(m_, i64), builder.sext(n_, i64)),
                           builder.sext(k_, i64))
        is_large = builder.icmp_signed(">", work, ir.Constant(i64, OPENBLAS_ONE_THREAD_MAX_WORK))
        gemm_args = [
            by_ref(builder.select(tb, t, nt)), by_ref(builder.select(ta, t, nt)),
            by_ref(n_), by_ref(m_), by_ref(k_),
            by_ref(context.cast(builder, alpha_, tys[5], dt)),
            data(b, tys[8], bo, tys[9]), by_ref(builder.select(tb, k_, n_)),
            data(a, tys[6], ao, tys[7]), by_ref(builder.select(ta, m_, k_)),
            by_ref(context.cast(builder, beta_, tys[10], dt)),
            data(c, tys[11], co, tys[12]), by_ref(n_),
        ]
        with builder.if_else(is_large) as (then, otherwise):
            with then:  # on threads() threads (see above), the caller's count restored after
                setter = cgutils.get_or_insert_function(
                    builder.module, ir.FunctionType(_I32, [_I32]), _SET_THREADS_SYMBOL)
                count = builder.module.globals.get(_THREADS_SYMBOL)
                if count is None:
                    count = ir.GlobalVariable(builder.module, _I32, _THREADS_SYMBOL)
                before = builder.call(setter, [builder.load(count)])
                builder.call(large, gemm_args)
                builder.call(setter, [before])
            with otherwise:
                builder.call(small, gemm_args)
        return context.get_dummy_value()

    return sig, codegen
