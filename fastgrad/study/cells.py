"""A sweep's cell file: a study's result written without pickle (JSON and .npy members in a zip),
read back only into the result classes of fastgrad.study."""

from __future__ import annotations

import io
import json
import math
import pathlib
import zipfile

import numpy as np

from ..core.errors import FastgradError, fail
from ..core.memory import guard_memory
from .results import StudyResult, public_name, write_file

__all__ = ["CELL_FORMAT", "CELL_VERSION", "CellFileError", "cell_error", "decode_cell_value",
           "encode_cell_value", "read_cell_file", "write_cell_file"]


# A sweep's finished cells are kept in its output folder so that a rerun resumes. That folder is
# a predictable place anyone may write to, so a cell file is data only: a zip (as NumPy's .npz)
# holding a JSON header and one .npy member per array, read with allow_pickle=False. Nothing in
# the file can name code to run: a study result's class is looked up among the StudyResult
# subclasses already defined in this process, never imported.
CELL_FORMAT, CELL_VERSION = "fastgrad-sweep-cell", 1
_CELL_HEADER = "header.json"
_CELL_HEADER_MAX = 64 << 20  # bytes of JSON; a cell's rows are far smaller
_CELL_DEPTH_MAX = 64  # nesting of lists / dicts / results in one cell
_CELL_DTYPE_KINDS = "biufcU"  # bool, ints, floats, complex, unicode: never object or void
_NPY_HEADER_MAX = 4096  # bytes of a .npy member's own header (the writer's is under 128)


class CellFileError(FastgradError):
    """A sweep cell file that cannot be used: truncated, corrupted, foreign or edited."""


_CELL_FIX = "delete the file; a sweep computes the cell again and rewrites its file"


def cell_error(path, problem):
    return CellFileError(f"sweep: cell file {pathlib.Path(path).name}: {problem}. Fix: "
                         f"{_CELL_FIX}")


def _result_classes():
    """Every StudyResult subclass defined in this process, by "module.qualname"."""
    found, todo = {}, [StudyResult]
    while todo:
        cls = todo.pop()
        found[public_name(cls)] = cls
        todo += cls.__subclasses__()
    return found


def encode_cell_value(value):
    """(JSON-able tree, list of arrays) for a cell's value; ``decode_cell_value`` inverts it.

    Holds exactly: None, bool, int, str, float (bit-exact, NaN and infinities included), NumPy
    arrays (bool, int, float, complex, unicode) and scalars, lists, tuples, dicts (any keys of
    these types) and StudyResult objects (their attributes). Anything else raises FastgradError.

    >>> tree, arrays = encode_cell_value({"loss": 0.5, "runs": (1, None)})
    >>> decode_cell_value(tree, arrays)
    {'loss': 0.5, 'runs': (1, None)}
    """
    arrays = []

    def put(a):
        arrays.append(a)
        return len(arrays) - 1

    def enc(v, depth):
        if depth > _CELL_DEPTH_MAX:
            raise fail("sweep", f"a cell's result is nested deeper than {_CELL_DEPTH_MAX} levels",
                       "return flatter results (rows of numbers, arrays)")
        if isinstance(v, (np.ndarray, np.generic)):  # first: np.float64 is also a float
            a = np.asarray(v)
            if a.dtype.kind not in _CELL_DTYPE_KINDS or a.dtype.hasobject:
                raise fail("sweep", f"cannot save an array of dtype {a.dtype} in a cell file",
                           "return numeric arrays")
            return {"scalar" if isinstance(v, np.generic) else "array": put(a)}
        if v is None or isinstance(v, (bool, str)):
            return v
        if isinstance(v, int):
            return int(v)
        if isinstance(v, float):
            return {"float": float(v).hex()}  # hex: bit-exact, and JSON has no NaN
        if isinstance(v, list):
            return {"list": [enc(x, depth + 1) for x in v]}
        if isinstance(v, tuple):
            return {"tuple": [enc(x, depth + 1) for x in v]}
        if isinstance(v, dict):
            return {"dict": [[enc(k, depth + 1), enc(x, depth + 1)] for k, x in v.items()]}
        if isinstance(v, StudyResult):
            cls = type(v)
            return {"result": public_name(cls),
                    "attrs": [[k, enc(x, depth + 1)] for k, x in vars(v).items()]}
        raise fail("sweep", f"cannot save a {type(v).__name__} in a cell file",
                   "return a study result, numbers, strings, arrays, or lists / dicts of them")

    return enc(value, 0), arrays


def decode_cell_value(tree, arrays, where="cell"):
    """The value ``encode_cell_value`` encoded as (tree, arrays); anything else in ``tree``
    raises CellFileError (a strict grammar: every node is checked, every array used once)."""
    used = set()
    classes = None

    def bad(problem):
        return CellFileError(f"sweep: {where}: {problem}. Fix: {_CELL_FIX}")

    def array(i):
        if type(i) is not int or not 0 <= i < len(arrays) or i in used:
            raise bad(f"bad array reference {i!r}")
        used.add(i)
        return arrays[i]

    def dec(x, depth):
        nonlocal classes
        if depth > _CELL_DEPTH_MAX:
            raise bad(f"nested deeper than {_CELL_DEPTH_MAX} levels")
        if x is None or isinstance(x, (bool, str, int)):
            return x
        if not isinstance(x, dict) or not x:
            raise bad(f"unexpected {type(x).__name__} in the header")
        tag = "result" if "result" in x else next(iter(x))
        body = x[tag]
        if tag == "result":
            pairs = x.get("attrs")
            if set(x) != {"result", "attrs"} or not isinstance(pairs, list):
                raise bad("a study result needs exactly 'result' and 'attrs'")
            classes = classes or _result_classes()
            cls = classes.get(body) if isinstance(body, str) else None
            if cls is None:
                raise bad(f"unknown study result class {body!r}")
            if not all(isinstance(p, list) and len(p) == 2 and isinstance(p[0], str)
                       for p in pairs) or len({p[0] for p in pairs}) != len(pairs):
                raise bad("a study result's attrs must be distinct [name, value] pairs")
            attrs = {k: dec(v, depth + 1) for k, v in pairs}
            _check_result_attrs(attrs, bad)
            obj = object.__new__(cls)  # no constructor or other code runs: data only
            obj.__dict__.update(attrs)
            return obj
        if len(x) != 1:
            raise bad(f"a node with keys {sorted(x)}")
        if tag == "float" and isinstance(body, str):
            try:
                return float.fromhex(body)
            except (ValueError, OverflowError):
                raise bad(f"bad float {body!r}") from None
        if tag in ("array", "scalar"):
            a = array(body)
            if tag == "scalar":
                if a.ndim:
                    raise bad(f"a scalar stored with shape {a.shape}")
                return a[()]
            return a
        if tag in ("list", "tuple") and isinstance(body, list):
            items = [dec(v, depth + 1) for v in body]
            return items if tag == "list" else tuple(items)
        if tag == "dict" and isinstance(body, list):
            out = {}
            for pair in body:
                if not isinstance(pair, list) or len(pair) != 2:
                    raise bad("a dict entry that is not a [key, value] pair")
                k = dec(pair[0], depth + 1)
                try:
                    hash(k)
                except TypeError:
                    raise bad(f"an unhashable dict key of type {type(k).__name__}") from None
                out[k] = dec(pair[1], depth + 1)
            return out
        raise bad(f"unknown node {tag!r}")

    value = dec(tree, 0)
    if len(used) != len(arrays):
        raise bad(f"{len(arrays) - len(used)} array(s) not referenced by the header")
    return value


def _check_result_attrs(attrs, bad):
    """What every StudyResult method relies on: rows (list of dicts), params (dict), seconds."""
    for name in attrs:
        if not name.isidentifier() or name.startswith("__"):
            raise bad(f"bad attribute name {name!r}")
    missing = {"rows", "params", "seconds"} - set(attrs)
    if missing:
        raise bad(f"a study result without {sorted(missing)}")
    rows = attrs["rows"]
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise bad("a study result's rows must be a list of dicts")
    if not isinstance(attrs["params"], dict):
        raise bad("a study result's params must be a dict")
    s = attrs["seconds"]
    if s is not None and not isinstance(s, (int, float, list)):
        raise bad("a study result's seconds must be a number or None")


def write_cell_file(path, header, value):
    """Write one cell (``header``: dict of JSON values; ``value``: the cell's result) atomically:
    a temporary file in the same folder, flushed, fsynced, renamed over ``path``."""
    tree, arrays = encode_cell_value(value)
    doc = {"format": CELL_FORMAT, "version": CELL_VERSION, **header, "value": tree,
           "arrays": [{"dtype": a.dtype.str, "shape": list(a.shape)} for a in arrays]}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(_CELL_HEADER, json.dumps(doc, allow_nan=False, sort_keys=True))
        for i, a in enumerate(arrays):
            member = io.BytesIO()
            np.lib.format.write_array(member, a, allow_pickle=False)
            z.writestr(f"a{i}.npy", member.getvalue())
    write_file(path, buf.getvalue())


def read_cell_file(path):
    """(header dict, value) of a cell file written by ``write_cell_file``. Never unpickles.
    Before anything is decompressed, the arrays' total size passes the memory guard and each
    member's declared size is compared with its header entry. Any damage raises CellFileError
    naming the file.

    >>> import tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "cell.npz"
    >>> write_cell_file(path, {"fn": "demo"}, {"loss": [0.5, float("nan")]})
    >>> read_cell_file(path)
    ({'fn': 'demo', 'format': 'fastgrad-sweep-cell', 'version': 1}, {'loss': [0.5, nan]})
    >>> _ = path.write_bytes(path.read_bytes()[:50])
    >>> read_cell_file(path)
    Traceback (most recent call last):
    ...
    fastgrad.study.cells.CellFileError: sweep: cell file cell.npz: unreadable (BadZipFile: ...
    """
    path = pathlib.Path(path)
    try:
        if not path.is_file():
            raise cell_error(path, "not a regular file")
        with zipfile.ZipFile(path) as z:
            doc = _cell_header(path, z)
            specs = [_cell_array_spec(path, f"a{i}.npy", spec)
                     for i, spec in enumerate(doc["arrays"])]
            guard_memory("sweep", sum(dtype.itemsize * math.prod(shape) for dtype, shape in specs),
                         "free memory, or delete the cell file")
            arrays = [_cell_array(path, z, f"a{i}.npy", dtype, shape)
                      for i, (dtype, shape) in enumerate(specs)]
            extra = set(z.namelist()) - {_CELL_HEADER} - {f"a{i}.npy" for i in range(len(arrays))}
            if extra:
                raise cell_error(path, f"unexpected members {sorted(extra)}")
        value = decode_cell_value(doc["value"], arrays, where=f"cell file {path.name}")
    except CellFileError:
        raise
    except Exception as e:  # noqa: BLE001 - any damage: a clear error, never a raw one
        raise cell_error(path, f"unreadable ({type(e).__name__}: {e})") from e
    return {k: v for k, v in doc.items() if k not in ("value", "arrays")}, value


def _cell_header(path, z):
    info = z.getinfo(_CELL_HEADER)
    if info.file_size > _CELL_HEADER_MAX:
        raise cell_error(path, f"a header of {info.file_size} bytes")
    doc = json.loads(z.read(info).decode("utf-8"), parse_constant=_no_constant)
    if not isinstance(doc, dict) or doc.get("format") != CELL_FORMAT:
        raise cell_error(path, "not a fastgrad sweep cell file")
    if doc.get("version") != CELL_VERSION:
        raise cell_error(path, f"format version {doc.get('version')!r}, this fastgrad reads "
                         f"{CELL_VERSION}")
    specs = doc.get("arrays")
    if not isinstance(specs, list) or "value" not in doc:
        raise cell_error(path, "a header without its value or arrays")
    return doc


def _no_constant(name):
    raise ValueError(f"{name} is not JSON")


def _cell_array_spec(path, member, spec):
    """(dtype, shape) of an array's header entry {"dtype", "shape"}, checked."""
    if not isinstance(spec, dict) or set(spec) != {"dtype", "shape"}:
        raise cell_error(path, f"a bad array entry for {member}")
    shape = spec["shape"]
    if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
        raise cell_error(path, f"a bad shape {shape!r} for {member}")
    dtype = np.dtype(str(spec["dtype"]))
    if dtype.kind not in _CELL_DTYPE_KINDS or dtype.hasobject:
        raise cell_error(path, f"dtype {dtype} for {member}")
    return dtype, shape


def _cell_array(path, z, member, dtype, shape):
    """One array member, checked against its header entry before it is read."""
    nbytes = dtype.itemsize * math.prod(shape)
    info = z.getinfo(member)
    if info.file_size > nbytes + _NPY_HEADER_MAX:  # before decompressing: no zip bomb
        raise cell_error(path, f"{member} declares {info.file_size} bytes for {nbytes} of data")
    with z.open(info) as f:
        # the member's own .npy header is checked against the cell header before any data is
        # read (NumPy would allocate whatever shape it names)
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise cell_error(path, f"{member} has .npy format version {version}")
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        npy_shape, fortran, npy_dtype = read_header(f)
        if npy_dtype != dtype or list(npy_shape) != shape:
            raise cell_error(path, f"{member} holds {npy_dtype} {npy_shape}, its header says "
                             f"{dtype} {tuple(shape)}")
        data = f.read(nbytes)
    if len(data) != nbytes:
        raise cell_error(path, f"{member} is truncated ({len(data)} of {nbytes} bytes)")
    flat = np.frombuffer(data, dtype=dtype).copy()  # a writable array, as the study returned
    return flat.reshape(shape, order="F" if fortran else "C")
