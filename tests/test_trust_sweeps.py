"""Sweeps keep their work and run nothing from their output folder.

- A sweep's cell files hold data only (a JSON header and NumPy arrays, read without pickle): a
  file planted in the output folder is never unpickled, a damaged, foreign or edited one is
  reported and its cell computed again, and a resumed sweep gives back every value bit for bit.
- A cell whose worker process dies (``os._exit``, a segfault) is recorded in ``result.failed``
  as any failing cell is, on the local process pool as on Dask: the other cells' results are
  kept and written, and a rerun computes only what is missing.
"""

import concurrent.futures as cf
import ctypes
import io
import json
import logging
import os
import pathlib
import pickle
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fastgrad import FastgradError, study
from fastgrad.study.sweep import _cell_key

FUZZ = settings(max_examples=40, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


# ----------------------------------------------------------------------------- cell functions
def marked_cell(x, marks):
    """Counts its calls in the folder ``marks`` (call-<x>-<n>); the cell "die" ends its worker
    process (``os._exit`` or a segfault, as the file ``marks/how`` says) unless ``marks/fixed``
    exists."""
    marks = pathlib.Path(marks)
    (marks / f"call-{x}-{calls(marks, x)}").touch()
    if x == "die" and not (marks / "fixed").exists():
        if (marks / "how").read_text() == "segfault":
            ctypes.string_at(0)  # reads address 0: SIGSEGV
        os._exit(1)
    return {"value": f"done {x}", "vector": np.arange(3.0) * len(x)}


def calls(marks, x):
    return len(list(pathlib.Path(marks).glob(f"call-{x}-*")))


def all_calls(marks, xs):
    return [calls(marks, x) for x in xs]


class Planted:
    """A pickle that, if ever loaded, creates the file ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def marks(tmp_path):
    folder = tmp_path / "marks"
    folder.mkdir()
    (folder / "how").write_text("exit")
    return folder


def cell_file(out, x, marks):
    return out / f"cell-{_cell_key(marked_cell, {'marks': str(marks), 'x': x})}.npz"


def same(a, b):
    """Equal in type and value; arrays in dtype, shape and bytes; floats bit for bit."""
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    if isinstance(a, np.generic):
        return a.dtype == b.dtype and a.tobytes() == b.tobytes()
    if isinstance(a, float):
        return a.hex() == b.hex()
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, study.StudyResult):
        return same(vars(a), vars(b))
    return a == b


# ----------------------------------------------------------------------------- item 10: no pickle
RNN = {"hidden": 3, "T": 30, "nonlinearity": "tanh", "lyapunov_steps": 10}


def test_sweep_cells_are_json_and_npy_data_and_a_resume_gives_back_every_value_bit_for_bit(
        tmp_path):
    out = tmp_path / "out"
    grid = {"spectral_radius": [0.9, 1.1], "seed": [0]}
    first = study.sweep(study.rnn_gradient_norms, grid, executor="serial", out=out, **RNN)
    files = sorted(out.glob("cell-*"))
    assert [f.suffix for f in files] == [".npz", ".npz"]
    for f in files:  # a JSON header and .npy members that load without pickle
        with zipfile.ZipFile(f) as z:
            assert json.loads(z.read("header.json"))["format"] == "fastgrad-sweep-cell"
            for name in z.namelist():
                if name != "header.json":
                    np.lib.format.read_array(io.BytesIO(z.read(name)), allow_pickle=False)
    again = study.sweep(study.rnn_gradient_norms, grid, executor="serial", out=out, **RNN)
    assert again.params["executor"] == "none needed"  # every cell came from its file
    assert not again.failed and again.rows == first.rows
    for a, b in zip(first.results, again.results):
        assert type(b) is study.RNNGradientNorms and same(a, b)
    assert again.seconds == first.seconds
    assert str(again.combined().table()) == str(first.combined().table())


@pytest.mark.parametrize("name", ["cell-{key}.pkl", "cell-{key}.npz"])
def test_a_pickle_planted_in_the_output_folder_is_never_loaded_and_the_cell_is_recomputed(
        tmp_path, marks, caplog, name):
    """The old format's name (cell-<key>.pkl, which sweep used to unpickle) and the new one."""
    out, marker = tmp_path / "out", tmp_path / "PWNED"
    out.mkdir()
    planted = out / name.format(key=cell_file(out, "a", marks).stem[len("cell-"):])
    planted.write_bytes(pickle.dumps(Planted(marker)))
    with caplog.at_level(logging.WARNING, logger="fastgrad"):
        r = study.sweep(marked_cell, {"x": ["a"]}, executor="serial", out=out, marks=str(marks))
    assert not marker.exists()
    assert calls(marks, "a") == 1 and r.rows[0]["value"] == "done a" and not r.failed
    assert planted.name in caplog.text
    study.sweep(marked_cell, {"x": ["a"]}, executor="serial", out=out, marks=str(marks))
    assert calls(marks, "a") == 1  # the recomputed cell was saved in the new format


def _object_member(path, marker):
    """A well-formed cell file whose array member is a pickled object array."""
    with zipfile.ZipFile(path) as z:
        header, members = z.read("header.json"), {n: z.read(n) for n in z.namelist()}
    buf = io.BytesIO()
    np.save(buf, np.array([Planted(marker)], dtype=object), allow_pickle=True)
    members["a0.npy"] = buf.getvalue()
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("header.json", header)
        for n, data in members.items():
            if n != "header.json":
                z.writestr(n, data)


def _edit_header(path, edit):
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    doc = json.loads(members["header.json"])
    edit(doc)
    members["header.json"] = json.dumps(doc).encode()
    with zipfile.ZipFile(path, "w") as z:
        for n, data in members.items():
            z.writestr(n, data)


def _set(doc, **kv):
    doc.update(kv)


DAMAGE = {
    "truncated": lambda p, other, marker: p.write_bytes(p.read_bytes()[:len(p.read_bytes()) // 2]),
    "a flipped byte": lambda p, other, marker: p.write_bytes(
        (lambda b: b[:60] + bytes([b[60] ^ 0xFF]) + b[61:])(p.read_bytes())),
    "empty": lambda p, other, marker: p.write_bytes(b""),
    "not a zip": lambda p, other, marker: p.write_text("hello"),
    "a directory": lambda p, other, marker: (p.unlink(), p.mkdir()),
    "another cell's file": lambda p, other, marker: p.write_bytes(other.read_bytes()),
    "edited parameters": lambda p, other, marker: _edit_header(
        p, lambda d: _set(d, parameters=d["parameters"].replace('"a"', '"z"'))),
    "another function": lambda p, other, marker: _edit_header(p, lambda d: _set(d, fn="os.system")),
    "an unknown result class": lambda p, other, marker: _edit_header(
        p, lambda d: _set(d, value={"result": "os.system", "attrs": []})),
    "a plain JSON float": lambda p, other, marker: _edit_header(p, lambda d: _set(d, value=1.5)),
    "a newer format": lambda p, other, marker: _edit_header(p, lambda d: _set(d, version=2)),
    "a bad seconds": lambda p, other, marker: _edit_header(p, lambda d: _set(d, seconds=[1])),
    "an array of another shape": lambda p, other, marker: _edit_header(
        p, lambda d: d["arrays"][0].update(shape=[4])),
    "an array too big for memory": lambda p, other, marker: _edit_header(
        p, lambda d: d["arrays"][0].update(shape=[2**60])),
    "an object array": lambda p, other, marker: _edit_header(
        p, lambda d: d["arrays"][0].update(dtype="|O")),
    "a pickled member": lambda p, other, marker: _object_member(p, marker),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_or_foreign_cell_file_is_reported_by_name_and_the_cell_recomputed(
        tmp_path, marks, caplog, damage):
    out, marker = tmp_path / "out", tmp_path / "PWNED"
    first = study.sweep(marked_cell, {"x": ["a", "bb"]}, executor="serial", out=out,
                        marks=str(marks))
    path = cell_file(out, "a", marks)
    DAMAGE[damage](path, cell_file(out, "bb", marks), marker)
    with caplog.at_level(logging.WARNING, logger="fastgrad"):
        again = study.sweep(marked_cell, {"x": ["a", "bb"]}, executor="serial", out=out,
                            marks=str(marks))
    assert all_calls(marks, ["a", "bb"]) == [2, 1]  # only the damaged cell ran again
    assert f"cell file {path.name}" in caplog.text and "computes the cell again" in caplog.text
    assert not marker.exists() and not again.failed
    assert same(again.results, first.results)
    if damage != "a directory":
        assert same(study.read_cell_file(path)[1], first.results[0])  # rewritten


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70), st.text(max_size=5),
    st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True),
    st.sampled_from([np.float32(1.5), np.float64(-0.0), np.int64(-7), np.uint8(200),
                     np.bool_(True), np.complex128(1 - 2j), np.float32("nan")]))
arrays = hnp.arrays(st.sampled_from([np.float64, np.float32, np.int64, np.int32, np.uint16,
                                     np.bool_, np.complex64, np.dtype("<U3")]),
                    hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=3))
keys = st.one_of(st.text(max_size=4), st.integers(-5, 5), st.floats(allow_nan=False),
                 st.tuples(st.floats(allow_nan=False), st.integers(0, 3)), st.none())
values = st.recursive(
    st.one_of(scalars, arrays),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.tuples(inner, inner),
                            st.dictionaries(keys, inner, max_size=3)),
    max_leaves=12)


@FUZZ
@given(value=values)
def test_every_value_a_cell_can_hold_round_trips_exactly(tmp_path, value):
    path = tmp_path / "cell.npz"
    study.write_cell_file(path, {"fn": "f"}, value)
    header, back = study.read_cell_file(path)
    assert header["fn"] == "f" and same(back, value)


@FUZZ
@given(data=st.data())
def test_any_corruption_of_a_cell_file_is_refused_by_name_or_reads_back_unchanged(tmp_path,
                                                                                   data):
    path = tmp_path / "cell.npz"
    value = {"rows": [{"loss": 0.25, "seed": 3}], "curve": np.linspace(0, 1, 7)}
    study.write_cell_file(path, {"fn": "f"}, value)
    raw = bytearray(path.read_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    raw = raw[:data.draw(st.integers(0, len(raw)))]
    path.write_bytes(bytes(raw))
    try:
        _, back = study.read_cell_file(path)
    except study.CellFileError as e:
        assert str(e).startswith("sweep: cell file cell.npz: ")
    else:
        assert same(back, value)


def test_values_a_cell_cannot_hold_are_refused_by_name_and_the_result_is_still_returned(
        tmp_path, caplog):
    with pytest.raises(FastgradError, match="cannot save a range"):
        study.encode_cell_value({"r": range(3)})
    with pytest.raises(FastgradError, match="dtype object"):
        study.encode_cell_value(np.array([None], dtype=object))
    with caplog.at_level(logging.WARNING, logger="fastgrad"):
        r = study.sweep(study.grid_cells, [{"grid": [{"r": range(3), "f": len}]}],
                        executor="serial", out=tmp_path / "out")
    assert r.results == [[{"r": range(3), "f": len}]] and "not saved" in caplog.text
    assert not list((tmp_path / "out").glob("cell-*"))
    assert json.loads((tmp_path / "out" / "sweep.json").read_text())["rows"][0]["f"] == repr(len)


# ----------------------------------------------------------------------------- item 11: crashes
GRID = {"x": ["a", "die", "bb", "ccc"]}


def _check_kept(r, out, marks, died_error):
    assert sorted(r.failed) == [1]
    cell, error, attempts = r.failed[1]
    assert cell == {"x": "die"} and died_error in error
    assert [row["value"] for row in r.rows] == ["done a", "done bb", "done ccc"]
    assert [r.results[i] is None for i in range(4)] == [False, True, False, False]
    assert all(cell_file(out, x, marks).is_file() for x in ("a", "bb", "ccc"))
    assert not cell_file(out, "die", marks).exists()
    assert (out / "sweep.csv").is_file() and "FAILED cells (1 of 4)" in str(r.table())
    return attempts


def _resume_computes_only_the_failed_cell(out, marks, **kw):
    before = all_calls(marks, GRID["x"])
    (marks / "fixed").touch()
    r = study.sweep(marked_cell, GRID, out=out, marks=str(marks), **kw)
    assert not r.failed and [row["value"] for row in r.rows] == [
        "done a", "done die", "done bb", "done ccc"]
    assert all_calls(marks, GRID["x"]) == [before[0], before[1] + 1, before[2], before[3]]


@pytest.mark.parametrize("how", ["exit", "segfault"])
def test_a_worker_that_dies_on_the_local_pool_fails_its_cell_only_and_keeps_the_rest(
        tmp_path, marks, how):
    (marks / "how").write_text(how)
    out = tmp_path / "out"
    r = study.sweep(marked_cell, GRID, max_workers=2, retries=1, out=out, marks=str(marks))
    attempts = _check_kept(r, out, marks, "the worker process died while running this cell")
    assert attempts == 2  # charged only when it crashed alone: once, then its retry
    assert calls(marks, "die") in (2, 3)  # 3: it first crashed beside another cell
    _resume_computes_only_the_failed_cell(out, marks, max_workers=2)


def test_a_broken_pool_passed_by_the_caller_records_every_cell_instead_of_raising(tmp_path,
                                                                                   marks):
    """sweep cannot replace a pool it does not own: what cannot run is reported, not raised."""
    with cf.ProcessPoolExecutor(1) as pool:
        r = study.sweep(marked_cell, GRID, executor=pool, retries=1, marks=str(marks))
    # the crashing cell and those after it cannot run: each is reported, none is lost
    assert set(r.failed) == {1, 2, 3}
    assert all("BrokenProcessPool" in r.failed[i][1] for i in (1, 2, 3))
    for i in range(4):
        assert (r.results[i] is None) == (i in r.failed)
    assert r.results[0] is not None  # it ran before the crash


def test_a_worker_that_dies_on_dask_is_reported_as_on_the_local_pool(tmp_path, marks):
    distributed = pytest.importorskip("dask.distributed")
    import dask

    out = tmp_path / "out"
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), \
            distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                     dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        r = study.sweep(marked_cell, GRID, executor=client, retries=0, out=out,
                        marks=str(marks))
        assert _check_kept(r, out, marks, "KilledWorker") == 1  # charged once it ran alone
        _resume_computes_only_the_failed_cell(out, marks, executor=client)
    (marks / "fixed").unlink()
    local = study.sweep(marked_cell, GRID, max_workers=2, retries=0, marks=str(marks))
    assert same(local.rows, r.rows) and sorted(local.failed) == sorted(r.failed)
