"""Saving work: ``fg.save(obj, path)`` and ``fg.load(path)``, and the check a loaded tape passes.

What can be saved: NumPy arrays and scalars, Python numbers, strings, booleans and None, tensors,
dicts / lists / tuples of these, a ``Module`` (stored as its ``state_dict()``), an ``Optimizer``
(its ``state_dict()``) and a recorded ``Tape``. ``load`` gives back the same structure, with
modules and optimizers as their state dicts (pass them to ``load_state_dict``) and tapes as
``Tape`` objects.

Invariants:
- The file is a NumPy ``.npz`` read with ``allow_pickle=False``: a JSON header (structure, format
  version, a SHA-256 digest of the header and every array) plus one array per leaf. Loading never
  runs code from the file.
- Writing goes to a temporary file in the target's directory, which is flushed, fsynced and then
  renamed over the target: a crash leaves the old file or the new one, never half of one. A
  symlink is followed (its target is replaced, as ``open()`` would write it); the temporary
  name carries the host and pid, and a save removes those whose process is gone.
- ``path`` may also be a binary file object (``io.BytesIO``, an open file), as with np.savez.
- ``load`` reads only regular files (a FIFO, directory or device is refused unopened) and reads
  no array before every member's declared size passed: stored uncompressed, inside the file,
  equal to its .npy header's shape and dtype, all of them under the memory guard.
- Round trips are bit-exact, dtypes included.
- A truncated or modified file raises ``FastgradError``; a loaded tape is checked row by row
  (``validate_tape``) before any kernel can see it, because the replay kernels trust the tape.
  That includes tapes holding ``fg.scan`` loops: each loop's SCAN header is checked against the
  layout ``fg.scan`` records (``_check_scan``).

>>> import fastgrad as fg, numpy as np, os, tempfile
>>> model = fg.nn.Linear(3, 2, seed=0)
>>> path = os.path.join(tempfile.mkdtemp(), "ckpt.npz")
>>> fg.save({"model": model, "epoch": 3}, path)
>>> ck = fg.load(path)
>>> ck["epoch"], list(ck["model"])
(3, ['weight', 'bias'])
>>> model.load_state_dict(ck["model"])
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import re
import socket
import stat
import tempfile
import zipfile
from collections import OrderedDict
from typing import NamedTuple

import numpy as np

from ..core.errors import FastgradError, fail
from ..kernels.scan import binomial_advance
from ..ops import CONTROL, MAX_NDIM, TABLE, Op, fmt
from ..ops.control import SCAN_LAYOUT
from ..ops.nodes import FLOAT_NODE, FUSED_LABEL, INDEX_NODE, PARAM_NODE
from ..runtime.tape import Tape, GrowingArray

__all__ = ["FORMAT", "HEADER", "VERSION", "atomic_write", "load", "save", "validate_tape"]

FORMAT, VERSION = "fastgrad", 1
HEADER = "__fastgrad__"
_FIX_DAMAGED = "the file is truncated or was modified; load an earlier copy or save it again"


# ----------------------------------------------------------------------------- save
def save(obj, path) -> None:
    """Write ``obj`` to ``path`` (an ``.npz`` file) atomically: temp file, fsync, rename.

    ``obj``: an array, number, string, tensor, Module, Optimizer, scheduler (``StepLR``, ...),
    Tape, or a dict/list/tuple of these. ``path``: a file name (written exactly there, no
    suffix added; a symlink is followed, as ``open()`` does, and its target replaced) or a
    binary file object open for writing (``io.BytesIO``, ``open(name, "wb")``), written from
    its current position as ``np.savez`` writes one (not atomic: the caller owns that file).

    >>> import fastgrad as fg, io, numpy as np
    >>> buf = io.BytesIO()
    >>> fg.save({"w": np.ones(2)}, buf)
    >>> _ = buf.seek(0)
    >>> fg.load(buf)["w"]
    array([1., 1.])
    """
    from ..training.nn import Module
    from ..training.optim import LRScheduler, Optimizer
    from ..frontend.tensor import Tensor

    target = _save_target(path)
    arrays: dict[str, np.ndarray] = {}

    def put(a) -> str:
        a = np.asarray(a)
        if a.dtype.hasobject or a.dtype.kind == "V":
            raise fail("save", f"cannot save an array of dtype {a.dtype}",
                       "save numeric, boolean or string arrays (no Python objects)")
        key = f"a{len(arrays)}"
        arrays[key] = a
        return key

    def enc(x, depth=0):
        if depth > 100:
            raise fail("save", "the object is nested more than 100 levels deep",
                       "save a flatter structure")
        if isinstance(x, np.ndarray):
            return {"$array": put(x)}
        if isinstance(x, np.generic):  # before float: np.float64 is a float subclass
            return {"$scalar": put(x)}
        if x is None or isinstance(x, (bool, str, int, float)):
            return x
        if isinstance(x, Tensor):
            return {"$tensor": put(np.array(x.numpy())), "requires_grad": bool(x.requires_grad)}
        if isinstance(x, Module):
            return enc(x.state_dict(), depth + 1)
        if isinstance(x, (Optimizer, LRScheduler)):
            return enc(x.state_dict(), depth + 1)
        if isinstance(x, Tape):
            return {"$tape": _tape_to(x, put)}
        if isinstance(x, dict):
            tag = "$odict" if isinstance(x, OrderedDict) else "$dict"
            return {tag: [[enc(k, depth + 1), enc(v, depth + 1)] for k, v in x.items()]}
        if isinstance(x, (list, tuple)):
            return {"$list" if isinstance(x, list) else "$tuple": [enc(v, depth + 1) for v in x]}
        raise fail("save", f"cannot save an object of type {type(x).__name__}",
                   "save arrays, numbers, strings, tensors, a Module, an Optimizer, a "
                   "scheduler, a Tape, or dicts/lists/tuples of these")

    tree = enc(obj)
    header = {"format": FORMAT, "version": VERSION, "tree": tree,
              "digest": _digest(tree, arrays)}
    text = json.dumps(header, allow_nan=True).encode()
    members = {HEADER: np.frombuffer(text, np.uint8), **arrays}
    if isinstance(target, str):
        atomic_write(target, lambda f: np.savez(f, **members))
    else:
        np.savez(target, **members)


def _file_name(op, path, purpose) -> str:
    """``path`` (a str, bytes or os.PathLike) as a str, else FastgradError naming its type."""
    try:
        return os.fsdecode(os.fspath(path))
    except TypeError:
        raise fail(op, f"path must be a file name or a binary file object, got "
                   f"{type(path).__name__}", "pass a str or pathlib.Path, or a file object "
                   f"open for {purpose} in binary mode") from None


def _save_target(path):
    """``path`` as save writes it: a binary file object as given, a path as a str, resolved
    through symlinks (open() writes a link's target; replacing the link would break it)."""
    if hasattr(path, "write"):
        mode = getattr(path, "mode", "b")
        if isinstance(path, io.TextIOBase) or (isinstance(mode, str) and "b" not in mode):
            raise fail("save", f"the file object {_name(path)} is open in text mode",
                       "open it in binary mode (open(name, 'wb')) or pass io.BytesIO()")
        return path
    name = _file_name("save", path, "writing")
    real = os.path.realpath(name)
    with contextlib.suppress(FileNotFoundError):
        mode = os.stat(real).st_mode
        if not stat.S_ISREG(mode):
            raise fail("save", f"{name} is {_file_kind(mode)}, not a regular file",
                       "save to a file name (a new one, or a file fg.save wrote)")
    folder = os.path.dirname(real)
    if not os.path.isdir(folder):  # else a raw error naming the hidden temporary file
        raise fail("save", f"the folder of {name} does not exist ({folder})",
                   "create it first (os.makedirs(folder, exist_ok=True)) or save elsewhere")
    return real


def atomic_write(path: str, write) -> None:
    """Write a file through ``write(f)`` (``f`` a binary file) into a temporary file beside
    ``path``, fsync it and rename it over ``path``: a crash leaves the old file or the new one,
    never half of one. The temporary name carries this host and process id, so the next write
    into the folder removes one that a killed process left (``_remove_stale_temps``).

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "a.bin")
    >>> atomic_write(path, lambda f: f.write(b"ok")); open(path, "rb").read()
    b'ok'
    """
    directory = os.path.dirname(os.path.abspath(path))
    mode = os.stat(path).st_mode & 0o777 if os.path.exists(path) else 0o644
    _remove_stale_temps(directory)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.{_TEMP_TAG}-{_HOST}-"
                               f"{os.getpid()}-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable (POSIX)
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


# .<name>.fgsave-<host>-<pid>-<random>.tmp; the host hash keeps a shared (network) directory's
# temporary files of live processes on other machines, whose pids mean nothing here
_TEMP_TAG = "fgsave"
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_TEMP_NAME = re.compile(r"^\..*\." + _TEMP_TAG + r"-([0-9a-f]{8})-([0-9]{1,12})-[^./]*\.tmp$")


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True  # another thread of this process is saving
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # a live process of another user
    except (OSError, OverflowError, ValueError):
        return False  # no such pid can exist
    return True


def _remove_stale_temps(directory: str) -> None:
    """Delete the temporary files that fg.save processes of this host left in ``directory``
    when they were killed mid-write (their pid is gone). Best effort: errors are ignored."""
    with contextlib.suppress(OSError), os.scandir(directory) as entries:
        for entry in entries:
            m = _TEMP_NAME.match(entry.name)
            if m is None or m[1] != _HOST or _process_alive(int(m[2])):
                continue
            with contextlib.suppress(OSError):
                if entry.is_file(follow_symlinks=False):
                    os.unlink(entry.path)


def _digest(tree, arrays) -> str:
    h = hashlib.sha256(json.dumps(tree, sort_keys=True, allow_nan=True).encode())
    for key in sorted(arrays):
        a = arrays[key]
        h.update(f"{key}|{a.dtype.str}|{a.shape}|".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _name(f) -> str:
    name = getattr(f, "name", None)
    return os.fsdecode(name) if isinstance(name, (str, bytes)) else f"<{type(f).__name__}>"


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return kind
    return "not a regular file"


# ----------------------------------------------------------------------------- load
def load(path):
    """Read what ``save`` wrote. Modules and optimizers come back as their state dicts,
    tapes as validated ``Tape`` objects. A damaged file raises ``FastgradError``.

    ``path``: a file name (a regular file; a FIFO, directory or device is refused without
    reading it) or a binary file object positioned at the start of the saved data.
    Before any array is read, each archive member's declared size is checked against its own
    .npy header, the file's length and the memory guard (``fg.set_memory_limit``); members
    must be stored uncompressed, as ``save`` writes them, so reading costs what the file holds.
    """
    if hasattr(path, "read"):
        return _load_from(path, _name(path))
    name = _file_name("load", path, "reading")
    _refuse_special(name, os.stat(name).st_mode)  # FileNotFoundError etc. as open() raises them
    # O_NONBLOCK: should a FIFO replace the file after the stat, opening it does not block
    fd = os.open(name, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        _refuse_special(name, os.fstat(fd).st_mode)
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        return _load_from(f, name)


def _refuse_special(name, mode):
    if not stat.S_ISREG(mode):
        raise fail("load", f"{name} is {_file_kind(mode)}, not a regular file",
                   "pass the path of a file written by fg.save (or a file object)")


def _load_from(f, name):
    if isinstance(f, io.TextIOBase):
        raise fail("load", f"the file object {name} is open in text mode",
                   "open it in binary mode (open(name, 'rb'))")
    try:
        start = f.tell()
        magic = f.read(len(np.lib.format.MAGIC_PREFIX))
        f.seek(start)
    except Exception as e:  # noqa: BLE001 - an unseekable or closed file object
        raise fail("load", f"cannot read {name} ({type(e).__name__}: {e})",
                   "pass a readable, seekable binary file object, or a file name") from None
    if magic == np.lib.format.MAGIC_PREFIX:
        raise fail("load", f"{name} is a single .npy array, not a fastgrad file",
                   "load it with np.load, or save with fg.save")
    try:
        zf = zipfile.ZipFile(f)
    except Exception as e:  # noqa: BLE001 - any parse failure of a damaged file
        raise fail("load", f"{name} is not a readable .npz file ({type(e).__name__}: {e})",
                   _FIX_DAMAGED) from None
    try:
        with zf:
            arrays = _read_members(zf, f, name)
            if HEADER not in arrays:
                raise fail("load", f"{name} has no fastgrad header",
                           "this .npz was not written by fg.save; read it with np.load")
            header = json.loads(arrays.pop(HEADER).tobytes().decode())
    except FastgradError:
        raise
    except Exception as e:  # noqa: BLE001 - truncated members, bad CRC, bad JSON, ...
        raise fail("load", f"{name} is damaged ({type(e).__name__}: {e})",
                   _FIX_DAMAGED) from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise fail("load", f"{name} has no fastgrad header", _FIX_DAMAGED)
    if header.get("version") != VERSION:
        raise fail("load", f"{name} has format version {header.get('version')!r}; "
                   f"this fastgrad reads version {VERSION}", "upgrade fastgrad")
    tree = header.get("tree")
    if header.get("digest") != _digest(tree, arrays):
        raise fail("load", f"{name}: checksum mismatch, the contents were changed "
                   "after saving", _FIX_DAMAGED)
    try:
        return _decode(tree, arrays)
    except FastgradError:
        raise
    except Exception as e:  # noqa: BLE001 - a structure that passes the digest but not decode
        raise fail("load", f"{name} has a malformed structure "
                   f"({type(e).__name__}: {e})", _FIX_DAMAGED) from None


def _read_members(zf: zipfile.ZipFile, f, name) -> dict:
    """The archive's arrays by key, read only after every size the archive declares passed:
    each member stored uncompressed (as np.savez writes it), its size inside the file, all of
    them together under the memory guard, and each one exactly its .npy header plus the data
    that header's shape and dtype make. So a small file can never expand into a large load."""
    from ..core.memory import guard_memory

    end = f.seek(0, os.SEEK_END)
    infos = zf.infolist()
    keys = [i.filename[:-4] for i in infos]
    for info in infos:
        if not info.filename.endswith(".npy"):
            raise fail("load", f"{name}: member {info.filename!r} is not a .npy array",
                       _FIX_DAMAGED)
        if info.compress_type != zipfile.ZIP_STORED:
            raise fail("load", f"{name}: member {info.filename!r} is compressed; fg.save stores "
                       "arrays uncompressed, and a compressed member could expand without bound",
                       "load a file written by fg.save (or re-save the data with fg.save)")
        if info.file_size != info.compress_size or info.file_size > end:
            raise fail("load", f"{name}: member {info.filename!r} declares {info.file_size} "
                       f"bytes, but stores {info.compress_size} in a file of {end}",
                       _FIX_DAMAGED)
    if len(set(keys)) != len(keys):
        raise fail("load", f"{name} holds two members of one name", _FIX_DAMAGED)
    total = sum(i.file_size for i in infos)
    if total > end:  # members overlapping one another: never written by np.savez
        raise fail("load", f"{name}: its members declare {total} bytes in all, more than the "
                   f"{end} bytes of the file", _FIX_DAMAGED)
    guard_memory("load", total, "free memory or raise fg.set_memory_limit to load this file")
    arrays = {}
    for key, info in zip(keys, infos):
        with zf.open(info) as m:
            version = np.lib.format.read_magic(m)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f"member {info.filename!r} has .npy format version {version}")
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0) else
                           np.lib.format.read_array_header_2_0)
            shape, _, dtype = read_header(m)
            if dtype.hasobject:
                raise ValueError("Object arrays cannot be loaded when allow_pickle=False")
            data = math.prod(shape) * dtype.itemsize  # Python ints: no wrap
            if m.tell() + data != info.file_size:
                raise fail("load", f"{name}: member {info.filename!r} declares "
                           f"{info.file_size} bytes, but its header describes "
                           f"{m.tell() + data} (shape {shape}, dtype {dtype})", _FIX_DAMAGED)
            m.seek(0)
            arrays[key] = np.lib.format.read_array(m, allow_pickle=False)
    return arrays


def _decode(tree, arrays):
    used = set()

    def get(key):
        if not isinstance(key, str) or key not in arrays:
            raise fail("load", f"the header names a missing array {key!r}", _FIX_DAMAGED)
        used.add(key)
        return arrays[key]

    def dec(x):
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        if isinstance(x, dict) and len(x) >= 1:
            tag = next(iter(x))
            if tag == "$array":
                return get(x[tag])
            if tag == "$scalar":
                a = get(x[tag])
                if a.shape != ():
                    raise fail("load", "a saved scalar is not 0-d", _FIX_DAMAGED)
                return a[()]
            if tag == "$tensor":
                from ..frontend.tensor import Tensor

                return Tensor(get(x[tag]), requires_grad=bool(x.get("requires_grad", False)))
            if tag in ("$dict", "$odict"):
                d = OrderedDict() if tag == "$odict" else {}
                for k, v in x[tag]:
                    d[dec(k)] = dec(v)
                return d
            if tag == "$list":
                return [dec(v) for v in x[tag]]
            if tag == "$tuple":
                return tuple(dec(v) for v in x[tag])
            if tag == "$tape":
                return _tape_from(x[tag], get)
        raise fail("load", f"unknown entry {str(x)[:60]!r} in the header", _FIX_DAMAGED)

    out = dec(tree)
    if used != set(arrays):
        raise fail("load", f"arrays {sorted(set(arrays) - used)} are not named by the header",
                   _FIX_DAMAGED)
    return out


# ----------------------------------------------------------------------------- tapes
_TAPE_INTS = ("ops", "outs", "in_ptr", "in_idx", "ip_ptr", "iparams", "fp_ptr", "node_off",
              "node_size")


def _tape_to(tape: Tape, put) -> dict:
    if tape.merged_into is not None:
        raise fail("save", "this tape was merged into another one",
                   "save the tape of the result (tensor.tape)")
    if tape.recording_scan:
        raise fail("save", "an fg.scan body is being recorded on this tape",
                   "save the tape after fg.scan returns")
    tape.flush()
    validate_tape(tape, "save")  # never write a file that load would refuse
    shapes = tape.shapes
    doc = {"dtype": tape.dtype.name, "n_done": int(tape.n_done),
           "labels": [[int(v), s] for v, s in tape.labels.items()],
           "int_bounds": [[int(v), int(lo), int(hi)] for v, (lo, hi) in tape.int_bounds.items()],
           "shape_ptr": put(np.cumsum([0] + [len(s) for s in shapes]).astype(np.int64)),
           "shape_dims": put(np.array([d for s in shapes for d in s], np.int64)),
           "fparams": put(tape.fparams.view.copy()),
           "node_kind": put(tape.node_kind.view.copy()),
           "node_need": put(tape.node_need.view.copy()),
           "values": put(tape.values.view.copy()),
           "ivalues": put(tape.ivalues.view.copy()),
           "param_arena": put(np.array(tape.param_arena, copy=True))}
    for name in _TAPE_INTS:
        doc[name] = put(getattr(tape, name).view.copy())
    return doc


def _grow(a, dtype):
    g = GrowingArray(dtype, max(1, a.size))
    g.a[: a.size] = a
    g.n = a.size
    return g


def _tape_from(doc, get) -> Tape:
    dtype = np.dtype(doc["dtype"])
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise fail("load", f"tape dtype {dtype} is not float32 or float64", _FIX_DAMAGED)

    def arr(name, want):
        a = get(doc[name])
        if a.ndim != 1 or a.dtype != want:
            raise fail("load", f"tape array {name} is {a.dtype}{list(a.shape)}, expected a 1-D "
                       f"{np.dtype(want)} array", _FIX_DAMAGED)
        return a

    tape = Tape(dtype)
    for name in _TAPE_INTS:
        setattr(tape, name, _grow(arr(name, np.int64), np.int64))
    tape.fparams = _grow(arr("fparams", dtype), dtype)
    tape.node_kind = _grow(arr("node_kind", np.int8), np.int8)
    tape.node_need = _grow(arr("node_need", np.int8), np.int8)
    tape.values = _grow(arr("values", dtype), dtype)
    tape.ivalues = _grow(arr("ivalues", np.int64), np.int64)
    tape.param_arena = np.array(arr("param_arena", dtype), copy=True)
    tape.param_grads = np.zeros_like(tape.param_arena)
    ptr, dims = arr("shape_ptr", np.int64), arr("shape_dims", np.int64)
    n = tape.node_off.n
    if ptr.size != n + 1 or not _partitions(ptr, dims.size):
        raise fail("load", "the tape's shape table is inconsistent", _FIX_DAMAGED)
    tape.shapes = [tuple(int(d) for d in dims[ptr[v] : ptr[v + 1]]) for v in range(n)]
    tape.labels = {int(v): str(s) for v, s in doc["labels"]}
    tape.int_bounds = {int(v): (int(lo), int(hi)) for v, lo, hi in doc["int_bounds"]}
    tape.producer = {int(o): r for r, o in enumerate(tape.outs.view)}
    validate_tape(tape, "load")
    n_done = doc["n_done"]
    tape.n_done = n_done if isinstance(n_done, int) and 0 <= n_done <= tape.n_rows else 0
    tape.scan_rows = [int(r) for r in np.flatnonzero(tape.ops.view == Op.SCAN)]
    for r in tape.scan_rows:  # as fg.scan leaves them: its results are the SCAN row's
        ip = _ints(tape.iparams.view[tape.ip_ptr.view[r] : tape.ip_ptr.view[r + 1]])
        for v in _scan_results(ip):
            tape.producer[v] = r
        begin = ip[SCAN_LAYOUT.index("begin_row")]
        if begin < tape.n_done <= r:  # never half a loop: replay it from its SCAN_BEGIN row
            tape.n_done = begin
    return tape


_INPUT_LABELS = ("leaf", "const")  # how tensors imported into a tape are labelled


def _partitions(ptr, n) -> bool:
    """Whether ``ptr`` (int64) starts at 0, never decreases and ends at ``n``. Compared, not
    subtracted: np.diff wraps in int64 (2**63-1 then -2**62 differs by a positive number)."""
    return bool(ptr.size and ptr[0] == 0 and ptr[-1] == n and np.all(ptr[1:] >= ptr[:-1]))


def _ints(a) -> list[int]:
    return [int(x) for x in a]


def _scan_results(ip) -> list[int]:
    """The nodes a (checked) SCAN row writes for the rows after it: the final carries, then the
    stacked output if any."""
    a = SCAN_LAYOUT.decode(ip, [], "scan")
    return [int(c[3]) for c in a.carries] + [int(s[1]) for s in a.stacked]


def _body_own(tape: Tape, first: int, end: int, b0: int, b1: int) -> list[int]:
    """The body's own nodes as transforms/scan.py picks them from the nodes first..end-1 recorded
    for the body: all but the captured ones (leaves and constants imported in the body, integer
    and parameter nodes, outputs of rows hoisted out of the body or fused away, reshapes of
    those or of outer nodes, which share their slot) and the empty ones."""
    kind, size, labels = tape.node_kind.view, tape.node_size.view, tape.labels
    ops, outs = tape.ops.view, tape.outs.view
    in_ptr, in_idx = tape.in_ptr.view, tape.in_idx.view
    captured = {v for v in range(first, end)
                if labels.get(v) in ("leaf", "const", FUSED_LABEL) or kind[v]}
    captured.update(int(v) for v in outs[: max(b0 - 1, 0)] if first <= v < end)  # hoisted
    for r in range(b0, b1):
        if ops[r] == Op.RESHAPE and in_ptr[r + 1] > in_ptr[r]:
            src = int(in_idx[in_ptr[r]])
            if src < first or src in captured:
                captured.add(int(outs[r]))
    return [v for v in range(first, end) if v not in captured and size[v] > 0]


def _binomial_stores(T: int, slots: int) -> list[int]:
    """The steps whose carries the binomial forward sweep checkpoints (kernels/scan.py,
    ``_binomial_forward``): at most ``slots`` of them, so this never loops T times."""
    steps = []
    t = 0
    while t < T - 1 and len(steps) < slots:
        steps.append(t)
        t += max(1, int(binomial_advance(T - t, slots - len(steps) + 1)))
    return steps


class _Scan(NamedTuple):
    """One checked fg.scan loop, as validate_tape uses it."""

    begin: int  # its SCAN_BEGIN row; the body is rows begin+1 .. row-1
    row: int  # its SCAN row
    results: list  # nodes the SCAN row writes for later rows (final carries, stacked output)
    internal: list  # nodes no row may read: the two markers, store, checkpoints, schedule


def _check_scans(tape: Tape, producer: dict, bad) -> list[_Scan]:
    """Every fg.scan loop of the tape, each checked by ``_check_scan``; every SCAN_BEGIN row
    must start one of them."""
    ops = tape.ops.view
    scans = [_check_scan(tape, int(r), producer, bad) for r in np.flatnonzero(ops == Op.SCAN)]
    begins = {s.begin for s in scans}
    for b in np.flatnonzero(ops == Op.SCAN_BEGIN):
        if int(b) not in begins:
            raise bad(f"row {int(b)} (scan_begin) starts no scan loop")
    return scans


def _check_scan(tape: Tape, r: int, producer: dict, bad) -> _Scan:
    """Check the SCAN row ``r`` and its SCAN_BEGIN row against the layout transforms/scan.py
    records; kernels/scan.py indexes arenas with every integer checked here.

    ``producer`` maps each node to the row listed as writing it (node ids and operand lists are
    already known to be in range). Fields: ``SCAN_LAYOUT`` (fastgrad/ops/control.py).
    """
    ops, outs = tape.ops.view, tape.outs.view
    shapes, size, kind = tape.shapes, tape.node_size.view, tape.node_kind.view
    in_ptr, in_idx = tape.in_ptr.view, tape.in_idx.view
    ip_ptr, iparams, fp_ptr = tape.ip_ptr.view, tape.iparams.view, tape.fp_ptr.view
    N = tape.n_nodes
    where = f"row {r} (scan)"
    ip = _ints(iparams[ip_ptr[r] : ip_ptr[r + 1]])
    header = len(SCAN_LAYOUT.ints)
    if len(ip) < header:
        raise bad(f"{where} has {len(ip)} integer attributes, fewer than its {header}-entry "
                  "header")
    h = SCAN_LAYOUT.head(ip)
    T, begin, b0, b1, nc, ns = h.T, h.begin_row, h.body_start, h.body_end, h.n_carry, h.n_stack
    has_x, xs, x_slot, x_step, n_own = h.has_x, h.xs, h.x_slot, h.x_step, h.n_own
    store, k, ckpt, sched, reg = h.store, h.k, h.ckpt, h.schedule, h.reg_size
    if T < 1:
        raise bad(f"{where}: T={T} steps; a scan runs T >= 1")
    if nc < 1 or ns not in (0, 1) or has_x not in (0, 1) or n_own < 0:
        raise bad(f"{where}: n_carry={nc}, n_stack={ns}, has_x={has_x}, n_own={n_own}; fg.scan "
                  "records n_carry >= 1, n_stack and has_x 0 or 1, n_own >= 0")
    want = header + 4 * nc + 2 * ns + n_own
    if len(ip) != want:
        raise bad(f"{where} has {len(ip)} integer attributes; n_carry={nc}, n_stack={ns} and "
                  f"n_own={n_own} make {want}")
    a = SCAN_LAYOUT.decode(ip, [], where)
    carries = [_ints(c) for c in a.carries]
    inits, cins, couts, finals = (list(col) for col in zip(*carries))
    stack = _ints(a.stacked.reshape(-1))
    own = _ints(a.own)

    # node ids: in range, -1 exactly where unused
    if not has_x and (xs, x_slot, x_step) != (-1, -1, 0):
        raise bad(f"{where}: has_x=0 but xs={xs}, x_slot={x_slot}, x_step={x_step} "
                  "(fg.scan records -1, -1, 0)")
    if k >= 0 and sched != -1:
        raise bad(f"{where}: k={k} has no schedule but its schedule node id is {sched}")
    ids = [("store", store), ("ckpt", ckpt)] + ([("schedule", sched)] if k < 0 else []) + \
        ([("xs", xs), ("x_slot", x_slot)] if has_x else []) + \
        [(f"carry {c} {name}", v) for c in range(nc)
         for name, v in zip(("init", "carry_in", "carry_out", "final"), carries[c])] + \
        [(f"stacked {name}", v) for name, v in zip(("body node", "output"), stack)] + \
        [("own", v) for v in own]
    for name, v in ids:
        if not 0 <= v < N:
            raise bad(f"{where}: its {name} node id {v} is out of range [0, {N})")

    # rows: SCAN_BEGIN .. body .. SCAN, pointing at each other, nothing nested
    if not 0 <= begin < r or ops[begin] != Op.SCAN_BEGIN:
        raise bad(f"{where}: begin_row {begin} is not a scan_begin row before it")
    target = _ints(iparams[ip_ptr[begin] : ip_ptr[begin + 1]])
    if target != [r]:
        at = target[0] if len(target) == 1 else target
        raise bad(f"row {begin} (scan_begin) points at row {at}, not at its scan row {r}")
    if b0 != begin + 1:
        raise bad(f"{where}: body_start {b0} is not row {begin + 1}, the row after its scan_begin "
                  f"row {begin}")
    if b1 != r:
        raise bad(f"{where}: body_end {b1} is not row {r}: the body runs up to the scan row")
    inner = np.flatnonzero(ops[b0:b1] // 100 == CONTROL)
    if inner.size:
        raise bad(f"{where}: row {b0 + int(inner[0])} inside its body is a scan control row; "
                  "scans do not nest")
    if fp_ptr[begin + 1] != fp_ptr[begin] or fp_ptr[r + 1] != fp_ptr[r]:
        raise bad(f"{where}: the scan rows carry float attributes")
    if _ints(in_idx[in_ptr[begin] : in_ptr[begin + 1]]) != inits[:1]:
        raise bad(f"row {begin} (scan_begin) does not read carry 0's init %{inits[0]}")
    if _ints(in_idx[in_ptr[r] : in_ptr[r + 1]]) != inits + ([xs] if has_x else []):
        raise bad(f"{where}: its operands are not the carries' inits"
                  + (" and xs" if has_x else ""))

    # nodes in recording order: marker, carry slots, x slot, the body's nodes, then store,
    # checkpoints, schedule, final carries, stacked output and the SCAN row's own output
    M, out = int(outs[begin]), int(outs[r])
    for v, name in ((M, f"row {begin} (scan_begin)"), (out, where)):
        if shapes[v] != (0,) or kind[v] != FLOAT_NODE:
            raise bad(f"{name}: its output %{v} is not an empty marker node")
    first = M + 1
    tail = out - 2 - (k < 0) - nc - ns  # where fg.scan puts the store node
    layout = [("carry_in", cins, list(range(first, first + nc)))]
    if has_x:
        layout.append(("x_slot", [x_slot], [first + nc]))
    layout += [("store", [store], [tail]), ("ckpt", [ckpt], [tail + 1])]
    if k < 0:
        layout.append(("schedule", [sched], [tail + 2]))
    layout.append(("final", finals, list(range(tail + 2 + (k < 0), tail + 2 + (k < 0) + nc))))
    if ns:
        layout.append(("stacked output", stack[1:], [out - 1]))
    for name, got, want_ids in layout:
        if got != want_ids:
            raise bad(f"{where}: its {name} node(s) {', '.join(f'%{v}' for v in got)} are not "
                      f"{', '.join(f'%{v}' for v in want_ids)}, where fg.scan records them")
    if tail < first + nc + has_x:
        raise bad(f"{where}: no room for its slots between %{M} and %{out}")
    body_outs = outs[b0:b1]
    stray = np.flatnonzero((body_outs < first) | (body_outs >= tail))
    if stray.size:
        raise bad(f"row {b0 + int(stray[0])} in the body of {where} writes "
                  f"%{int(body_outs[stray[0]])}, not a node of the body (%{first}..%{tail - 1})")
    # rows hoisted out of the body (they read only what is the same at every step: computed
    # once, Tape.hoist_last_row) sit just before its scan_begin row and write body nodes
    hoisted = begin
    while hoisted > 0 and first <= outs[hoisted - 1] < tail:
        hoisted -= 1
    if np.any(outs[:hoisted] >= M) or np.any(outs[r + 1 :] <= out):
        raise bad(f"a row outside the body of {where} writes one of its nodes %{M}..%{out}")
    per_step = set(_ints(outs[b0:b1])) | set(cins) | ({x_slot} if has_x else set())
    for row in range(hoisted, begin):
        if per_step & set(_ints(in_idx[in_ptr[row] : in_ptr[row + 1]])):
            raise bad(f"row {row}, hoisted out of the body of {where}, reads a node the loop "
                      "writes at every step")

    # fg.scan treats the body's float nodes labelled 'leaf' or 'const' as captured inputs,
    # neither saved nor restored per step, and every other one as the body's own state: so the
    # labelled ones must be exactly those that no row writes and that are not carry or x slots
    slots = set(cins) | ({x_slot} if has_x else set())
    for v in range(first, tail):
        label = tape.labels.get(v)
        unwritten = v not in producer and v not in slots
        if kind[v] != FLOAT_NODE or (label in _INPUT_LABELS) == unwritten \
                or label == FUSED_LABEL:  # checked with every node labelled so, above
            continue
        if label in _INPUT_LABELS:
            role = f"computed by row {producer[v]}" if v in producer else "a carry or x slot"
            raise bad(f"{where}: body node %{v} is labelled {label!r} but is {role}; fg.scan "
                      "labels only the inputs imported into the body so")
        raise bad(f"{where}: body node %{v} is written by no row and is no carry or x slot, "
                  "so it is an input imported into the body, but it is not labelled 'leaf' or "
                  "'const'")

    # carries: init -> carry_in, carry_out -> carry_in / final, all of one shape
    for c, (init, cin, cout, fin) in enumerate(carries):
        if kind[init] == INDEX_NODE or init >= M:
            raise bad(f"{where}: carry {c}'s init %{init} is not a float node recorded before "
                      "the loop")
        for name, v in (("carry_in", cin), ("carry_out", cout), ("final", fin)):
            if shapes[v] != shapes[init] or kind[v] != FLOAT_NODE:
                raise bad(f"{where}: carry {c}'s {name} %{v} is not a float node of its init's "
                          f"shape {fmt(shapes[init])}")
        if cin in producer:
            raise bad(f"{where}: carry {c}'s carry_in %{cin} is written by row {producer[cin]}")
        p = producer.get(cout, -1)
        if not b0 <= p < b1 or ops[p] == Op.RESHAPE:
            raise bad(f"{where}: carry {c}'s carry_out %{cout} is not computed by a body row "
                      "(other than a reshape)")

    # xs: T steps of x_step values each, loaded into the x slot
    if has_x:
        if kind[xs] != FLOAT_NODE or xs >= M:
            raise bad(f"{where}: xs %{xs} is not a float node recorded before the loop")
        xshape = shapes[xs]
        if not xshape or xshape[0] != T:
            raise bad(f"{where}: xs %{xs} of shape {fmt(xshape)} does not hold T={T} steps")
        if shapes[x_slot] != xshape[1:] or kind[x_slot] != FLOAT_NODE or x_slot in producer:
            raise bad(f"{where}: x_slot %{x_slot} is not an input slot of shape {fmt(xshape[1:])}")
        if x_step != size[x_slot]:
            raise bad(f"{where}: x_step {x_step} is not the {int(size[x_slot])} values of one step "
                      f"of xs %{xs}")

    # stacked output: carry 0's carry_out at every step
    if ns:
        v, st = stack
        if v != couts[0]:
            raise bad(f"{where}: the stacked body node %{v} is not carry 0's carry_out "
                      f"%{couts[0]}")
        if shapes[st] != (T, *shapes[v]) or kind[st] != FLOAT_NODE:
            raise bad(f"{where}: the stacked output %{st} has shape {fmt(shapes[st])}, not "
                      f"{fmt((T, *shapes[v]))}")

    # the body's state: the own nodes saved and restored per step, reg_size values in all
    want_own = _body_own(tape, first, tail, b0, b1)
    if own != want_own:
        raise bad(f"{where}: its {n_own} own nodes are not the body's {len(want_own)} "
                  f"(%{first}..%{tail - 1} less captured and empty ones)")
    values = int(sum(int(size[v]) for v in own))
    if reg != values:
        raise bad(f"{where}: reg_size {reg} is not the {values} values of its {n_own} own nodes")

    # checkpointing: what store, checkpoints and schedule hold for k
    csize = int(sum(int(size[v]) for v in cins))
    if k < 0:
        slots = -k
        if slots > max(1, T - 1):
            raise bad(f"{where}: {slots} binomial slots for T={T} steps; fg.scan keeps at most "
                      f"{max(1, T - 1)}")
        n_store, n_ckpt = 0, slots * csize
    elif k > 0:
        n_store, n_ckpt = k * reg, -(-T // k) * csize
    else:
        n_store, n_ckpt = T * reg, 0
    if shapes[ckpt] != (n_ckpt,) or kind[ckpt] != FLOAT_NODE:
        raise bad(f"{where}: its checkpoint node %{ckpt} has shape {fmt(shapes[ckpt])}; k={k} for "
                  f"T={T} steps of carries of {csize} values needs ({n_ckpt},)")
    if shapes[store] != (n_store,) or kind[store] != FLOAT_NODE:
        raise bad(f"{where}: its store node %{store} has shape {fmt(shapes[store])}; k={k} for "
                  f"T={T} steps with reg_size {reg} needs ({n_store},)")
    internal = [M, out, store, ckpt]
    if k < 0:
        if kind[sched] != INDEX_NODE:
            raise bad(f"{where}: its schedule node %{sched} is a "
                      f"{'float' if kind[sched] == FLOAT_NODE else 'parameter'} node, not an "
                      "integer node")
        if shapes[sched] != (4 + slots,):
            raise bad(f"{where}: its schedule node %{sched} has shape {fmt(shapes[sched])}, not "
                      f"({4 + slots},) for {slots} slots")
        off = int(tape.node_off.view[sched])
        held = _ints(tape.ivalues.view[off : off + 4 + slots])
        if held[0] not in (0, 1):
            raise bad(f"{where}: schedule %{sched} has forward flag {held[0]}, not 0 or 1")
        if held[0]:  # the next backward sweep starts from these checkpoints
            steps = _binomial_stores(T, slots)
            if held[1] != len(steps) or held[4 : 4 + len(steps)] != steps:
                raise bad(f"{where}: schedule %{sched} holds {held[1]} checkpoints at steps "
                          f"{held[4 : 4 + max(0, min(held[1], slots))]}; the binomial forward "
                          f"sweep stores {len(steps)} at {steps}")
        internal.append(sched)
    return _Scan(begin, r, _scan_results(ip), internal)


def validate_tape(tape: Tape, what: str = "validate_tape") -> None:
    """Check everything the replay kernels assume of ``tape``; raise ``FastgradError`` naming
    the first violation. Run on every loaded tape.

    Checked: array dtypes and lengths; pointer arrays (start at 0, non-decreasing, end at
    their array's length); op codes are in the op table; operand and output node ids are in
    range, every node is written by at most one row and only read by later rows; node kinds
    (float/integer/parameter) match each operand position; node sizes equal their shapes'
    products and lie inside their arena; written slots do not overlap; each row's integer and
    float attributes and output shape are exactly what the op's shape rule (the recorder's own
    validation) gives for its operand shapes; integer operands (indices, labels) hold values
    inside the range the row reads, and the tape's index ranges (``int_bounds``) lie inside
    them; labels name nodes, and no node a row writes is labelled a leaf or constant. For each
    ``fg.scan`` loop, ``_check_scan``: every node id of its SCAN header in range and of the
    right kind, the row indices (SCAN_BEGIN, body, SCAN) pointing at each other, nothing
    nested, the node layout, the body's leaf/constant labels against its rows, carry/xs/
    stacked/store/checkpoint/schedule sizes against T, k and reg_size, the own nodes, and the
    binomial schedule's checkpoints; body rows read only nodes recorded before them, and no row
    reads a loop's internal nodes. Every comparison is overflow-proof: sizes against what is
    left of an arena, never an int64 sum that could wrap.
    """

    def bad(problem):
        return fail(what, f"invalid tape: {problem}", _FIX_DAMAGED if what == "load" else
                    "this tape was not produced by the recorder; record it again")

    dtype = tape.dtype
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise bad(f"dtype {dtype}")
    grows = {"ops": np.int64, "outs": np.int64, "in_ptr": np.int64, "in_idx": np.int64,
             "ip_ptr": np.int64, "iparams": np.int64, "fp_ptr": np.int64, "fparams": dtype,
             "node_off": np.int64, "node_size": np.int64, "node_kind": np.int8,
             "node_need": np.int8, "values": dtype, "ivalues": np.int64}
    for name, want in grows.items():
        g = getattr(tape, name)
        if not isinstance(g, GrowingArray) or g.a.ndim != 1 or g.a.dtype != want or \
                not 0 <= g.n <= g.a.size:
            raise bad(f"array {name} is not a 1-D {np.dtype(want)} buffer")
    params = tape.param_arena
    if not isinstance(params, np.ndarray) or params.ndim != 1 or params.dtype != dtype:
        raise bad("the parameter arena is not a 1-D array of the tape dtype")
    R, N = tape.ops.n, tape.node_off.n
    if tape.outs.n != R:
        raise bad(f"{tape.outs.n} output ids for {R} rows")
    for name, target in (("in_ptr", tape.in_idx), ("ip_ptr", tape.iparams),
                         ("fp_ptr", tape.fparams)):
        p = getattr(tape, name).view
        if p.size != R + 1 or not _partitions(p, target.n):
            raise bad(f"{name} does not partition its array over {R} rows")
    for name in ("node_size", "node_kind", "node_need"):
        if getattr(tape, name).n != N:
            raise bad(f"{name} has {getattr(tape, name).n} entries for {N} nodes")
    if len(tape.shapes) != N:
        raise bad(f"{len(tape.shapes)} shapes for {N} nodes")

    # nodes: shapes, sizes, kinds, places in their arenas
    off, size = tape.node_off.view, tape.node_size.view
    kind, need = tape.node_kind.view, tape.node_need.view
    if np.any((kind < FLOAT_NODE) | (kind > PARAM_NODE)) or np.any((need != 0) & (need != 1)):
        raise bad("a node kind is not 0/1/2 or a gradient flag is not 0/1")
    if np.any((need == 1) & (kind == INDEX_NODE)):
        raise bad(f"integer node %{int(np.flatnonzero((need == 1) & (kind == INDEX_NODE))[0])} is "
                  "marked as needing a gradient")
    for v, s in enumerate(tape.shapes):
        if not isinstance(s, tuple) or len(s) > MAX_NDIM or \
                any(not isinstance(d, int) or d < 0 for d in s):
            raise bad(f"node %{v} has shape {s!r}")
        if math.prod(s) != int(size[v]):  # Python ints: a product past 2**63 cannot wrap
            raise bad(f"node %{v} of shape {fmt(s)} has size {int(size[v])}")
    # inside its arena: 0 <= off and size <= limit - off, compared without a sum that could
    # wrap (an offset of 2**63-1 plus a size is negative in int64); sizes are >= 0 by now
    limits = np.array([tape.values.n, tape.ivalues.n, params.size], np.int64)[kind.astype(np.int64)]
    outside = (off < 0) | (off > limits) | (size > limits - np.maximum(off, 0))
    if np.any(outside):
        v = int(np.flatnonzero(outside)[0])
        raise bad(f"node %{v} (offset {int(off[v])}, size {int(size[v])}, kind {int(kind[v])}) "
                  "lies outside its arena")

    # rows: codes, operand ids, order, kinds
    ops, outs = tape.ops.view, tape.outs.view
    in_ptr, in_idx = tape.in_ptr.view, tape.in_idx.view
    ip_ptr, iparams = tape.ip_ptr.view, tape.iparams.view
    fp_ptr, fparams = tape.fp_ptr.view, tape.fparams.view
    if np.any((in_idx < 0) | (in_idx >= N)) or np.any((outs < 0) | (outs >= N)):
        raise bad("an operand or output node id is out of range")
    for v, label in tape.labels.items():
        if not isinstance(v, int) or not 0 <= v < N or not isinstance(label, str):
            raise bad(f"a node label names node {v!r}, not a node of the tape")
    producer = {}
    for r in range(R):
        o = int(outs[r])
        if o in producer:
            raise bad(f"node %{o} is written by rows {producer[o]} and {r}")
        producer[o] = r
    # a node labelled 'fused' held an output of a row the fusion pass dropped: no row may
    # write or read it (its values are whatever it held when it was recorded)
    fused = [v for v, label in tape.labels.items() if label == FUSED_LABEL]
    if fused:
        read = set(in_idx.tolist())
        for v in fused:
            if v in producer:
                raise bad(f"node %{v} is labelled 'fused' (its row was fused away), but row "
                          f"{producer[v]} writes it")
            if v in read:
                raise bad(f"node %{v} is labelled 'fused' (its row was fused away), but a row "
                          "reads it")

    # fg.scan loops, before any of their body rows
    in_body = np.zeros(R, bool)
    internal = set()
    for s in _check_scans(tape, producer, bad):
        in_body[s.begin + 1 : s.row] = True
        internal.update(s.internal)
        for v in s.results:
            producer[v] = s.row
    # a leaf or constant is an input, copied in when recorded: no row computes it. (fg.scan
    # treats body nodes labelled so as captured, neither saved nor restored per step.)
    for v, label in tape.labels.items():
        if label in _INPUT_LABELS and v in producer:
            raise bad(f"node %{v} is labelled {label!r} but row {producer[v]} computes it; "
                      "a leaf or constant is an input, written by no row")

    codes = {int(op) for op in TABLE}
    aliases = set()
    read_below = {}  # integer node -> the least bound a row reading it allows
    for r in range(R):
        code = int(ops[r])
        if code not in codes:
            raise bad(f"row {r} has op code {code}, which is not in the op table")
        op = Op(code)
        d = TABLE[op]
        ins = [int(v) for v in in_idx[in_ptr[r] : in_ptr[r + 1]]]
        o = int(outs[r])
        where = f"row {r} ({d.name})"
        if d.family == CONTROL:
            continue  # checked with its loop above
        if (d.arity >= 0 and len(ins) != d.arity) or not ins:
            raise bad(f"{where} has {len(ins)} operands")
        for pos, v in enumerate(ins):
            if producer.get(v, -1) >= r:
                raise bad(f"{where} reads %{v} before row {producer[v]} writes it")
            if v in internal:
                raise bad(f"{where} reads %{v}, a node internal to an fg.scan loop")
            if in_body[r] and v >= o:  # a body row runs T times: it reads what existed before
                raise bad(f"{where} in an fg.scan body reads %{v}, recorded after its output")
            want_int = pos in d.int_inputs
            if (kind[v] == INDEX_NODE) != want_int:
                raise bad(f"{where}: operand {pos} (%{v}) is "
                          f"{'an integer' if kind[v] == INDEX_NODE else 'a float'} node")
        if op == Op.RESHAPE:
            if kind[o] != kind[ins[0]] or off[o] != off[ins[0]]:
                raise bad(f"{where}: the output does not share its input's slot")
            aliases.add(o)
        elif kind[o] != FLOAT_NODE:
            raise bad(f"{where}: the output %{o} is not a float node of the value arena")
        shapes = [tape.shapes[v] for v in ins]
        out_shape = tape.shapes[o]
        ip = [int(x) for x in iparams[ip_ptr[r] : ip_ptr[r + 1]]]
        fp = fparams[fp_ptr[r] : fp_ptr[r + 1]]
        try:  # the row's attributes by name, through its op's layout (fastgrad/ops/)
            fields = d.layout.decode(ip, fp, where)
        except FastgradError:
            raise bad(f"{where} has {len(ip)} integer and {len(fp)} float attributes, which do "
                      f"not fit its layout {d.layout.describe()}") from None
        # the attribute sets it may have been recorded with, each re-run through the shape rule
        candidates = d.recover(shapes, out_shape, fields)
        matched = None
        for attrs in candidates:
            try:
                shape2, ip2, fp2 = d.rule(d.name, shapes, **attrs)
            except FastgradError:
                continue
            if tuple(shape2) == out_shape and [int(x) for x in ip2] == ip and \
                    np.array_equal(np.asarray(fp2, dtype), fp, equal_nan=True):
                matched = attrs
                break
        if matched is None:
            raise bad(f"{where}: operand shapes {', '.join(fmt(s) for s in shapes)}, output "
                      f"{fmt(out_shape)} and attributes {ip} do not agree with the op's "
                      "shape rule")
        for pos in d.int_inputs:
            v = ins[pos]
            _, hi = d.int_bound(shapes, **matched)
            vals = tape.ivalues.view[off[v] : off[v] + size[v]]
            if vals.size and (vals.min() < 0 or vals.max() >= hi):
                raise bad(f"{where}: integer operand %{v} holds values outside [0, {hi})")
            read_below[v] = min(read_below.get(v, hi), hi)

    # the ranges a compiled step checks each batch's indices against: inside what rows read
    for v, bounds in tape.int_bounds.items():
        if not isinstance(v, int) or not 0 <= v < N or kind[v] != INDEX_NODE or len(bounds) != 2:
            raise bad(f"an index range names node {v!r}, not an integer node of the tape")
        lo, hi = bounds
        if not isinstance(lo, (int, np.integer)) or not isinstance(hi, (int, np.integer)) or \
                lo != 0 or not 0 <= hi <= read_below.get(v, hi):
            allowed = f"not inside [0, {read_below[v]}) where rows read it" \
                if v in read_below else "not a range [0, n) with n >= 0"
            raise bad(f"integer node %{v} has index range [{lo}, {hi}), {allowed}")

    # slots that rows write must not overlap anything else in their arena
    for k in (0, 1):
        vs = np.flatnonzero((kind == k) & (size > 0))
        vs = np.array([v for v in vs if v not in aliases], np.int64)
        if vs.size > 1:
            order = vs[np.argsort(off[vs], kind="stable")]
            ends = off[order] + size[order]
            clash = np.flatnonzero(off[order][1:] < ends[:-1])
            if clash.size:
                a, b = int(order[clash[0]]), int(order[clash[0] + 1])
                raise bad(f"nodes %{a} and %{b} overlap in the {'value' if k == 0 else 'index'}"
                          " arena")
