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
  That includes tapes holding ``fg.scan`` loops (validate.py). Writing is tapes.py and
  atomic.py.

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
import stat
import zipfile
from collections import OrderedDict

import numpy as np

from ..core.errors import FastgradError, fail
from ..runtime.tape import Tape
from ..training.nn import Module
from ..training.optim import LRScheduler, Optimizer
from ..frontend.tensor import Tensor
from ..core.memory import guard_memory
from .atomic import atomic_write
from .tapes import tape_from_arrays, tape_to_arrays
from .validate import FIX_DAMAGED

__all__ = ["FORMAT", "HEADER", "VERSION", "load", "save"]


FORMAT, VERSION = "fastgrad", 1
HEADER = "__fastgrad__"


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
            return {"$tape": tape_to_arrays(x, put)}
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
                   FIX_DAMAGED) from None
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
                   FIX_DAMAGED) from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise fail("load", f"{name} has no fastgrad header", FIX_DAMAGED)
    if header.get("version") != VERSION:
        raise fail("load", f"{name} has format version {header.get('version')!r}; "
                   f"this fastgrad reads version {VERSION}", "upgrade fastgrad")
    tree = header.get("tree")
    if header.get("digest") != _digest(tree, arrays):
        raise fail("load", f"{name}: checksum mismatch, the contents were changed "
                   "after saving", FIX_DAMAGED)
    try:
        return _decode(tree, arrays)
    except FastgradError:
        raise
    except Exception as e:  # noqa: BLE001 - a structure that passes the digest but not decode
        raise fail("load", f"{name} has a malformed structure "
                   f"({type(e).__name__}: {e})", FIX_DAMAGED) from None


def _read_members(zf: zipfile.ZipFile, f, name) -> dict:
    """The archive's arrays by key, read only after every size the archive declares passed:
    each member stored uncompressed (as np.savez writes it), its size inside the file, all of
    them together under the memory guard, and each one exactly its .npy header plus the data
    that header's shape and dtype make. So a small file can never expand into a large load."""

    end = f.seek(0, os.SEEK_END)
    infos = zf.infolist()
    keys = [i.filename[:-4] for i in infos]
    for info in infos:
        if not info.filename.endswith(".npy"):
            raise fail("load", f"{name}: member {info.filename!r} is not a .npy array",
                       FIX_DAMAGED)
        if info.compress_type != zipfile.ZIP_STORED:
            raise fail("load", f"{name}: member {info.filename!r} is compressed; fg.save stores "
                       "arrays uncompressed, and a compressed member could expand without bound",
                       "load a file written by fg.save (or re-save the data with fg.save)")
        if info.file_size != info.compress_size or info.file_size > end:
            raise fail("load", f"{name}: member {info.filename!r} declares {info.file_size} "
                       f"bytes, but stores {info.compress_size} in a file of {end}",
                       FIX_DAMAGED)
    if len(set(keys)) != len(keys):
        raise fail("load", f"{name} holds two members of one name", FIX_DAMAGED)
    total = sum(i.file_size for i in infos)
    if total > end:  # members overlapping one another: never written by np.savez
        raise fail("load", f"{name}: its members declare {total} bytes in all, more than the "
                   f"{end} bytes of the file", FIX_DAMAGED)
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
                           f"{m.tell() + data} (shape {shape}, dtype {dtype})", FIX_DAMAGED)
            m.seek(0)
            arrays[key] = np.lib.format.read_array(m, allow_pickle=False)
    return arrays


def _decode(tree, arrays):
    used = set()

    def get(key):
        if not isinstance(key, str) or key not in arrays:
            raise fail("load", f"the header names a missing array {key!r}", FIX_DAMAGED)
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
                    raise fail("load", "a saved scalar is not 0-d", FIX_DAMAGED)
                return a[()]
            if tag == "$tensor":

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
                return tape_from_arrays(x[tag], get)
        raise fail("load", f"unknown entry {str(x)[:60]!r} in the header", FIX_DAMAGED)

    out = dec(tree)
    if used != set(arrays):
        raise fail("load", f"arrays {sorted(set(arrays) - used)} are not named by the header",
                   FIX_DAMAGED)
    return out
