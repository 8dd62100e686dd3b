"""Files fastgrad can trust: what fg.load accepts is what fg.save wrote, and nothing else reaches a
kernel or the memory.

- An edited fg.scan tape (a body node relabelled as a leaf, its counts adjusted to match) is
  refused: the labels that decide which body nodes fg.scan saves per step must agree with the
  rows.
- The tape validator is overflow-proof: an offset of 2**63-1 (digest recomputed) is refused, and
  extreme integers (0, -1, 2**31, 2**32, 2**63-1, -2**63) in every integer field of a saved tape
  are refused or give a tape that replays safely.
- A zip bomb is refused from its declared sizes, before anything is decompressed.
- fg.load refuses FIFOs, directories and devices without opening them for reading; fg.save
  writes through a symlink to its target; a temporary file left by a killed fg.save is removed
  by the next save into that directory.
- fg.save / fg.load take binary file objects (io.BytesIO, open files), as np.savez does.
- Fuzzed: several integers of a saved tape edited at once, and saved files with bytes
  overwritten or cut short: refused with FastgradError, or loaded and replayed safely.
"""

import functools
import io
import json
import os
import signal
import subprocess
import sys
import threading
import tracemalloc
import zipfile
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastgrad as fg
import fastgrad.io
from fastgrad import FastgradError
from fastgrad.io import HEADER
from fastgrad.io.tapes import tape_from_arrays as _tape_from, tape_to_arrays as _tape_to
from fastgrad.runtime.tape import Tape
from fastgrad.kernels.scan import HEADER as H
from fastgrad.ops import Op
from fastgrad.reference import Reference
from test_save import _rewrite  # a saved file edited with its digest recomputed


def raises(match):
    return pytest.raises(FastgradError, match=match)


def _saved(tape):
    """The tape as fg.save stores it: (doc, arrays) with doc naming arrays by key."""
    arrays = {}

    def put(a):
        arrays[f"a{len(arrays)}"] = np.array(a, copy=True)
        return f"a{len(arrays) - 1}"

    return _tape_to(tape, put), arrays


def _scan_loss(checkpoint=None):
    """A loop of T=6 steps over xs (6, 3), carry (h (3,), s ()), h stacked; the loss reads the
    stacked output and both final carries; backward has run."""
    rng = np.random.default_rng(5)
    w = fg.tensor(rng.standard_normal((3, 3)) * 0.5, requires_grad=True)
    b = fg.tensor(rng.standard_normal(3), requires_grad=True)
    xs = fg.tensor(rng.standard_normal((6, 3)))

    def step(carry, x):
        h, s = carry
        h = (h @ w + x + b).tanh()
        return h, s + (h * h).sum()

    hs, (h, s) = fg.scan(step, (fg.zeros(3), fg.zeros(())), xs, checkpoint=checkpoint,
                         stack=True)
    loss = hs.sum() * 0.5 + s + h.sum()
    loss.backward()
    return loss, (w, b)


# ----------------------------------------------------------------------------- item 6
def _scan_row(doc, arrays):
    ops = arrays[doc["ops"]]
    return int(np.flatnonzero(ops == Op.SCAN)[0])


def _relabel_consistently(doc, arrays, v, label):
    """Label node ``v`` as ``label`` (None: no label) and rewrite the SCAN row's own-node list,
    n_own and reg_size to what fg.scan would record for those labels, shifting ip_ptr to
    match: a multi-field edit that keeps every count consistent."""
    labels = {int(n): s for n, s in doc["labels"]}
    if label is None:
        labels.pop(v, None)
    else:
        labels[v] = label
    doc["labels"] = [[n, s] for n, s in labels.items()]
    r = _scan_row(doc, arrays)
    ip_ptr, iparams = arrays[doc["ip_ptr"]], arrays[doc["iparams"]]
    ip = [int(x) for x in iparams[ip_ptr[r] : ip_ptr[r + 1]]]
    begin, nc, ns, store = ip[1], ip[4], ip[5], ip[10]
    first = int(arrays[doc["outs"]][begin]) + 1
    view = {name: SimpleNamespace(view=arrays[doc[name]])
            for name in ("node_kind", "node_size", "ops", "outs", "in_ptr", "in_idx")}
    own, _ = Tape.body_nodes(SimpleNamespace(labels=labels, **view), first, store, ip[2], ip[3])
    sizes = arrays[doc["node_size"]]
    new = ip[:14] + [int(sum(int(sizes[n]) for n in own)), len(own)] + \
        ip[H : H + 4 * nc + 2 * ns] + own
    arrays[doc["iparams"]] = np.concatenate(
        [iparams[: ip_ptr[r]], np.array(new, np.int64), iparams[ip_ptr[r + 1] :]])
    shifted = ip_ptr.copy()
    shifted[r + 1 :] += len(new) - len(ip)
    arrays[doc["ip_ptr"]] = shifted


def test_a_scan_body_node_relabelled_as_a_leaf_with_its_counts_adjusted_is_refused(
        tmp_path, monkeypatch):
    """The issue's edit: a node the body computes (tanh's output) labelled 'leaf', dropped from
    the loop's own nodes, n_own and reg_size lowered to match, the digest recomputed. fg.scan
    would no longer save and restore it per step, so the gradient comes out wrong; fg.load
    refuses the file, naming the node and the row that computes it."""
    loss, _ = _scan_loss()
    path = tmp_path / "scan.npz"
    fg.save(loss.tape, path)
    tanh = int(loss.tape.outs.a[np.flatnonzero(loss.tape.ops.view == Op.TANH)[0]])

    def edit(arrays, header):
        doc = header["tree"]["$tape"]
        _relabel_consistently(doc, arrays, tanh, "leaf")

    _rewrite(path, edit)
    with raises(rf"^load: invalid tape: row \d+ \(scan\): body node %{tanh} is labelled 'leaf' "
                r"but is computed by row \d+"):
        fg.load(path)

    # what the check prevents: the same file, unchecked, replays to a wrong gradient
    monkeypatch.setattr(fastgrad.io.tapes, "validate_tape", lambda tape, what="": None)
    edited = fg.load(path)
    edited.n_done = 0
    edited.flush()
    got = edited.backward(loss.node, np.ones(()))[: edited.values.n]
    want = loss.tape.grads[: loss.tape.values.n]
    assert not np.allclose(got, want)


@pytest.mark.parametrize("checkpoint", [None, "sqrt", fg.Binomial(2)],
                         ids=["store-all", "sqrt", "binomial"])
def test_every_relabelling_of_a_body_node_with_consistent_counts_is_refused(checkpoint):
    """Every node of the loop body (carry and x slots, computed nodes, reshapes, leaves and
    constants imported in the body) given every other label of {'leaf', 'const', none}, with
    the own-node list, n_own and reg_size rewritten to agree: each edit is refused by name, and
    the unedited tape loads."""
    loss, _ = _scan_loss(checkpoint)
    doc, arrays = _saved(loss.tape)
    _tape_from(doc, arrays.__getitem__)  # the honest tape loads
    labels = dict(loss.tape.labels)
    r = _scan_row(doc, arrays)
    ip = loss.tape.iparams.view[loss.tape.ip_ptr.view[r] : loss.tape.ip_ptr.view[r + 1]]
    first, store = int(loss.tape.outs.a[ip[1]]) + 1, int(ip[10])
    tried = 0
    for v in range(first, store):
        if loss.tape.node_kind.a[v] != 0:
            continue  # integer nodes are captured whatever their label
        for label in ("leaf", "const", None):
            if (label in ("leaf", "const")) == (labels.get(v) in ("leaf", "const")):
                continue  # the same role: 'leaf' and 'const' both mean an imported input
            doc2, arrays2 = json.loads(json.dumps(doc)), {k: a.copy() for k, a in arrays.items()}
            _relabel_consistently(doc2, arrays2, v, label)
            with raises(rf"^load: invalid tape: .*body node %{v} "):
                _tape_from(doc2, arrays2.__getitem__)
            tried += 1
    assert tried >= 10


def test_a_leaf_label_on_a_computed_node_is_refused_outside_loops_too():
    """Outside fg.scan a label is only shown in printouts, but a leaf is an input by
    definition: a node some row writes labelled 'leaf' is not a tape the recorder makes."""
    x = fg.tensor(np.arange(3.0), requires_grad=True)
    y = (x * 2).sum()
    doc, arrays = _saved(y.tape)
    doc["labels"].append([y.node, "leaf"])
    with raises(rf"node %{y.node} is labelled 'leaf' but row \d+ computes it"):
        _tape_from(doc, arrays.__getitem__)
    doc["labels"][-1] = [10**6, "leaf"]
    with raises(r"a node label names node 1000000, not a node of the tape"):
        _tape_from(doc, arrays.__getitem__)


# ----------------------------------------------------------------------------- item 9
def _small_tape():
    """Leaves, a matmul, an index gather (integer node), a view and a cross-entropy."""
    x = fg.tensor(np.linspace(-1, 1, 12).reshape(3, 4), requires_grad=True)
    w = fg.tensor(np.linspace(0.5, 1.5, 8).reshape(4, 2), requires_grad=True)
    y = fg.cross_entropy(x[np.array([2, 0, 1])] @ w, np.array([0, 1, 1])) + x[1:, ::2].sum()
    y.backward()
    return y


def test_a_node_offset_of_2_63_minus_1_is_refused_before_any_replay(tmp_path):
    """The issue's crafted file: one node's offset set to 2**63-1 and the digest recomputed.
    offset + size wraps negative in int64, which passed 'inside its arena'; the check now
    compares the size with what is left of the arena after the offset."""
    y = _small_tape()
    path = tmp_path / "tape.npz"
    fg.save(y.tape, path)
    leaf = 0  # x, 12 values
    _rewrite(path, lambda arrays, header: arrays[header["tree"]["$tape"]["node_off"]]
             .__setitem__(leaf, 2**63 - 1))
    with raises(rf"^load: invalid tape: node %{leaf} \(offset 9223372036854775807, size 12, "
                r"kind 0\) lies outside its arena"):
        fg.load(path)


def test_pointer_arrays_that_wrap_in_int64_are_refused():
    """in_ptr 0, 2**63-1, -2**62, ...: every difference is positive once int64 wraps, so a
    check by np.diff saw a non-decreasing array; compared pairwise it is refused."""
    y = _small_tape()
    doc, arrays = _saved(y.tape)
    ptr = arrays[doc["in_ptr"]]
    ptr[1], ptr[2] = 2**63 - 1, -(2**62)
    assert np.all(np.diff(ptr) >= 0)  # what the wrapped check saw
    with raises(r"^load: invalid tape: in_ptr does not partition its array"):
        _tape_from(doc, arrays.__getitem__)


EXTREMES = (0, -1, 2**31, 2**32, 2**63 - 1, -(2**63))
INT_FIELDS = ("ops", "outs", "in_ptr", "in_idx", "ip_ptr", "iparams", "fp_ptr", "node_off",
              "node_size", "shape_ptr", "shape_dims", "ivalues", "node_kind", "node_need")


def _replays_safely(loaded):
    """A tape that passed validation replays forward and backward without a crash; a tape
    without loops matches the NumPy reference interpreter."""
    loaded.n_done = 0
    loaded.flush()
    if not loaded.scan_rows:
        ref = Reference(loaded)
        with np.errstate(all="ignore"):
            ref.forward()
        for _, _, _, o in loaded.rows():
            np.testing.assert_allclose(loaded.node_values(o), ref.node(o), rtol=1e-9, atol=1e-9,
                                       equal_nan=True)
    last = int(loaded.outs.a[loaded.n_rows - 1])
    if loaded.node_need.a[last] and loaded.node_kind.a[last] == 0:
        with np.errstate(all="ignore"):
            loaded.backward(last, np.ones(loaded.shapes[last]))


@pytest.mark.parametrize("which", ["plain", "scan-binomial"])
def test_extreme_integers_in_every_integer_field_are_refused_or_replay_safely(which):
    """Each position of each integer array of a saved tape (ops, operand and output ids,
    pointers, attributes, offsets, sizes, shapes, index values, kinds, gradient flags), and the
    header's integers (n_done, label and index-range node ids), set to each of 0, -1, 2**31,
    2**32, 2**63-1 and -2**63 (int8 arrays: their wrap): loading raises FastgradError, or the
    tape is valid and replays forward and backward without a crash."""
    y = _small_tape() if which == "plain" else _scan_loss(fg.Binomial(2))[0]
    doc, arrays = _saved(y.tape)
    outcomes = {"refused": 0, "accepted": 0}

    def attempt(doc2, arrays2):
        try:
            loaded = _tape_from(doc2, arrays2.__getitem__)
        except FastgradError as e:
            assert str(e).startswith("load: "), e
            outcomes["refused"] += 1
            return
        outcomes["accepted"] += 1
        _replays_safely(loaded)

    for name in INT_FIELDS:
        a = arrays[doc[name]]
        values = (0, -1, 1, 2, 3, 127, -128) if a.dtype == np.int8 else EXTREMES
        for i in range(a.size):
            for new in values:
                if new == a[i]:
                    continue
                arrays2 = dict(arrays)
                arrays2[doc[name]] = a.copy()
                arrays2[doc[name]][i] = new
                attempt(doc, arrays2)
    for new in EXTREMES:
        attempt({**doc, "n_done": new}, arrays)
        attempt({**doc, "labels": doc["labels"] + [[new, "leaf"]]}, arrays)
        attempt({**doc, "int_bounds": [[new, 0, 2]]}, arrays)
    assert outcomes["refused"] > 900 and outcomes["accepted"] > 0, outcomes


def test_index_ranges_of_a_loaded_tape_stay_inside_what_its_rows_read():
    """int_bounds (the range a compiled step checks each batch's indices against) must name
    an integer node and lie inside the range every row reading that node allows."""
    y = _small_tape()
    doc, arrays = _saved(y.tape)
    kinds = arrays[doc["node_kind"]]
    idx = int(np.flatnonzero(kinds == 1)[0])
    _tape_from({**doc, "int_bounds": [[idx, 0, 3]]}, arrays.__getitem__)  # gather over 3 rows
    with raises(rf"integer node %{idx} has index range \[0, 4\), not inside \[0, 3\)"):
        _tape_from({**doc, "int_bounds": [[idx, 0, 4]]}, arrays.__getitem__)
    with raises(r"an index range names node 0, not an integer node"):
        _tape_from({**doc, "int_bounds": [[0, 0, 1]]}, arrays.__getitem__)


# ----------------------------------------------------------------------------- item 12
def _npy_header(shape, dtype=np.float64):
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
              "shape": shape})
    return buf.getvalue()


def test_a_zip_bomb_is_refused_from_its_declared_sizes_before_decompressing(tmp_path):
    """A fastgrad header beside a deflated member of 200 MiB of zeros (a file of about 200 KB):
    refused because fg.save never compresses a member, without decompressing it; the load's
    peak memory stays a small multiple of the file's size, far below the 200 MiB that
    decompressing it took."""
    path = tmp_path / "bomb.npz"
    fg.save({"w": np.ones(3)}, path)
    with np.load(path) as z:
        header = z[HEADER]
    n = 50 << 19  # float64 zeros: 200 MiB, 50 chunks of 4 MiB
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(HEADER + ".npy", _npy_header(header.shape, np.uint8) + header.tobytes(),
                    compress_type=zipfile.ZIP_STORED)
        with zf.open("a0.npy", "w", force_zip64=True) as m:
            m.write(_npy_header((n,)))
            chunk = bytes(1 << 22)
            for _ in range(n * 8 // len(chunk)):
                m.write(chunk)
    size = path.stat().st_size
    assert size < 2_000_000
    tracemalloc.start()
    try:
        with raises(r"^load: .*bomb\.npz: member 'a0\.npy' is compressed"):
            fg.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * size + (4 << 20), peak


def test_the_memory_guard_refuses_a_file_larger_than_the_limit_before_reading_it(tmp_path):
    """The members' declared sizes pass fg.set_memory_limit's guard before any is read."""
    path = tmp_path / "big.npz"
    fg.save({"w": np.zeros(1 << 18)}, path)  # 2 MiB
    fg.set_memory_limit(1 << 20)
    try:
        with raises(r"^load: needs 0\.00 GiB of buffers but only 0\.00 GiB are allowed"):
            fg.load(path)
    finally:
        fg.set_memory_limit(None)
    assert fg.load(path)["w"].shape == (1 << 18,)


def test_a_member_whose_npy_header_disagrees_with_its_declared_size_is_refused(tmp_path):
    """A stored member whose .npy header claims 10**12 values in 48 bytes: refused from the
    sizes, before numpy allocates the claimed array."""
    path = tmp_path / "liar.npz"
    fg.save({"w": np.ones(3)}, path)
    with np.load(path) as z:
        header = z[HEADER]
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(HEADER + ".npy", _npy_header(header.shape, np.uint8) + header.tobytes())
        zf.writestr("a0.npy", _npy_header((10**12,)) + bytes(48))
    with raises(r"member 'a0\.npy' declares \d+ bytes, but its header describes "
                r"8000000000128 \(shape \(1000000000000,\), dtype float64\)"):
        fg.load(path)


# ----------------------------------------------------------------------------- item 15
def test_load_refuses_a_fifo_without_blocking_on_it(tmp_path):
    """Opening a FIFO for reading blocks until a writer comes: fg.load refuses it from its
    type instead. (The writer thread here only exists so that a load that did open the FIFO
    would fail the test rather than hang it.)"""
    fifo = tmp_path / "pipe.npz"
    os.mkfifo(fifo)

    def writer():
        with open(fifo, "wb") as f:  # blocks until a reader opens the FIFO
            f.write(b"not a zip file")

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        with raises(r"^load: .*pipe\.npz is a FIFO \(named pipe\), not a regular file"):
            fg.load(fifo)
    finally:
        fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # release the writer
        t.join()
        os.close(fd)


def test_load_refuses_directories_and_devices_by_name(tmp_path):
    with raises(r"^load: .* is a directory, not a regular file"):
        fg.load(tmp_path)
    with raises(r"^load: /dev/null is a character device, not a regular file"):
        fg.load("/dev/null")
    with pytest.raises(FileNotFoundError):  # as open() raises it
        fg.load(tmp_path / "missing.npz")


def test_save_through_a_symlink_writes_its_target_and_keeps_the_link(tmp_path):
    """As open(link, 'wb') does: the link stays a link, its target gets the new contents;
    a dangling link creates its target."""
    target = tmp_path / "data" / "ckpt.npz"
    target.parent.mkdir()
    fg.save({"epoch": 1}, target)
    link = tmp_path / "latest.npz"
    link.symlink_to(target)
    fg.save({"epoch": 2}, link)
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert fg.load(target)["epoch"] == 2 and fg.load(link)["epoch"] == 2
    dangling = tmp_path / "next.npz"
    dangling.symlink_to(tmp_path / "data" / "new.npz")
    fg.save({"epoch": 3}, dangling)
    assert dangling.is_symlink() and fg.load(tmp_path / "data" / "new.npz")["epoch"] == 3
    assert sorted(p.name for p in target.parent.iterdir()) == ["ckpt.npz", "new.npz"]


def test_save_refuses_to_replace_a_directory_or_a_fifo(tmp_path):
    (tmp_path / "d.npz").mkdir()
    with raises(r"^save: .*d\.npz is a directory, not a regular file"):
        fg.save({"epoch": 1}, tmp_path / "d.npz")
    os.mkfifo(tmp_path / "p.npz")
    with raises(r"^save: .*p\.npz is a FIFO \(named pipe\), not a regular file"):
        fg.save({"epoch": 1}, tmp_path / "p.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npz", "p.npz"]


_KILLED_SAVE = """
import os, signal, sys
import numpy as np
import fastgrad as fg

def killed(f, **arrays):  # half the file written, then the process is killed
    f.write(b"PK" + bytes(1 << 20))
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)

np.savez = killed
fg.save({"w": np.ones(3)}, sys.argv[1])
"""


def test_a_temporary_file_left_by_a_killed_save_is_removed_by_the_next_save(tmp_path):
    """A process killed inside fg.save leaves its temporary file; its name carries the host
    and the pid, so the next fg.save into that directory sees the process is gone and removes
    it. Temporary files of live processes (here this one's parent), of other hosts, and other
    files are left alone."""
    path = tmp_path / "ckpt.npz"
    child = subprocess.run([sys.executable, "-c", _KILLED_SAVE, str(path)],
                           capture_output=True, text=True)
    assert child.returncode == -signal.SIGKILL, child.stderr
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".ckpt.npz.") and left[0].endswith(".tmp")
    assert (tmp_path / left[0]).stat().st_size >= 1 << 20
    host = fastgrad.io.atomic._HOST
    live = tmp_path / f".other.npz.fgsave-{host}-{os.getppid()}-abc.tmp"
    remote = tmp_path / ".other.npz.fgsave-00000000-1-abc.tmp"
    mine = tmp_path / "notes.tmp"
    for p in (live, remote, mine):
        p.write_bytes(b"x")
    fg.save({"w": np.zeros(2)}, tmp_path / "other.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [live.name, remote.name, mine.name, "other.npz"])


# ----------------------------------------------------------------------------- file objects
def test_save_and_load_take_binary_file_objects_as_np_savez_does(tmp_path):
    """io.BytesIO and open binary files, with a module, plain values and a tape holding a
    loop: the same round trip as through a path."""
    model = fg.nn.Linear(3, 2, seed=0)
    loss, _ = _scan_loss("sqrt")
    buf = io.BytesIO()
    fg.save({"model": model, "epoch": 3, "tape": loss.tape}, buf)
    buf.seek(0)
    back = fg.load(buf)
    assert back["epoch"] == 3 and str(back["tape"]) == str(loss.tape)
    assert back["model"]["weight"].tobytes() == model.weight.numpy().tobytes()
    with open(tmp_path / "f.npz", "wb") as f:
        fg.save({"epoch": 4}, f)
    with open(tmp_path / "f.npz", "rb") as f:
        assert fg.load(f)["epoch"] == 4
    assert fg.load(tmp_path / "f.npz")["epoch"] == 4


def test_file_objects_and_paths_of_the_wrong_kind_are_refused_by_name(tmp_path):
    with open(tmp_path / "t.txt", "w") as f, raises(r"^save: the file object .*t\.txt is open "
                                                     r"in text mode\. Fix: open it in binary"):
        fg.save({"epoch": 1}, f)
    (tmp_path / "t.txt").write_text("hello")
    with open(tmp_path / "t.txt") as f, raises(r"^load: the file object .*t\.txt is open in "
                                               r"text mode"):
        fg.load(f)
    with raises(r"^save: path must be a file name or a binary file object, got int"):
        fg.save({"epoch": 1}, 3)
    with raises(r"^load: path must be a file name or a binary file object, got NoneType"):
        fg.load(None)
    with raises(r"^load: <BytesIO> is not a readable \.npz file"):
        fg.load(io.BytesIO(b"junk"))


# ----------------------------------------------------------------------------- fuzzing
_FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                 suppress_health_check=list(HealthCheck))


@functools.cache
def _saved_tape(loop):
    return _saved(_scan_loss(fg.Binomial(2))[0].tape if loop else _small_tape().tape)


@functools.cache
def _saved_file():
    buf = io.BytesIO()
    fg.save({"model": fg.nn.Linear(3, 2, seed=0), "tape": _small_tape().tape, "epoch": 1}, buf)
    return buf.getvalue()


@_FUZZ
@given(st.booleans(), st.data())
def test_several_fields_edited_at_once_are_refused_or_replay_safely(loop, data):
    """Two to five integers of a saved tape changed together, each to an extreme value or a
    neighbour of its old one (edits that agree with each other can pass checks that each one
    alone fails): loading raises FastgradError, or the tape replays safely."""
    doc, arrays = _saved_tape(loop)
    arrays = {k: a.copy() for k, a in arrays.items()}
    for _ in range(data.draw(st.integers(2, 5), "edits")):
        name = data.draw(st.sampled_from(INT_FIELDS), "field")
        a = arrays[doc[name]]
        if a.size == 0:
            continue
        i = data.draw(st.integers(0, a.size - 1), "position")
        old = int(a[i])
        lo, hi = (-128, 127) if a.dtype == np.int8 else (-(2**63), 2**63 - 1)
        new = data.draw(st.sampled_from([*EXTREMES, old - 1, old + 1, old + 2]), "value")
        a[i] = min(max(new, lo), hi)
    try:
        loaded = _tape_from(doc, arrays.__getitem__)
    except FastgradError as e:
        assert str(e).startswith("load: "), e
        return
    _replays_safely(loaded)


@_FUZZ
@given(st.data())
def test_damaged_files_raise_fastgrad_error_or_load(data):
    """One to three bytes of a saved file (central directory, member headers, .npy headers,
    JSON header, array data) overwritten, or the file cut short: fg.load raises FastgradError
    (never another exception), or loads what the digest vouches for."""
    blob = bytearray(_saved_file())
    if data.draw(st.booleans(), "cut"):
        blob = blob[: data.draw(st.integers(0, len(blob) - 1), "length")]
    else:
        for _ in range(data.draw(st.integers(1, 3), "bytes")):
            i = data.draw(st.integers(0, len(blob) - 1), "position")
            blob[i] = data.draw(st.integers(0, 255).filter(lambda b, old=blob[i]: b != old),
                                "byte")
    try:
        back = fg.load(io.BytesIO(bytes(blob)))
    except FastgradError as e:
        assert str(e).startswith("load: "), e
        return
    assert back["epoch"] == 1 and list(back["model"]) == ["weight", "bias"]


def test_save_into_a_folder_that_does_not_exist_names_the_folder(tmp_path):
    """Not a raw FileNotFoundError about fg.save's hidden temporary file."""
    missing = tmp_path / "no-such-folder" / "ckpt.npz"
    with raises("folder of .* does not exist"):
        fg.save({"w": np.ones(2)}, missing)
