"""Files fastgrad can trust: what fg.load accepts is what fg.save wrote, and nothing else reaches a
kernel.

- An edited fg.scan tape (a body node relabelled as a leaf, its counts adjusted to match) is
  refused: the labels that decide which body nodes fg.scan saves per step must agree with the
  rows.
- The tape validator is overflow-proof: an offset of 2**63-1 (digest recomputed) is refused, and
  extreme integers (0, -1, 2**31, 2**32, 2**63-1, -2**63) in every integer field of a saved tape
  are refused or give a tape that replays safely.
"""

import json
import os
from types import SimpleNamespace

import numpy as np
import pytest

import fastgrad as fg
import fastgrad.io
from fastgrad import FastgradError
from fastgrad.io import HEADER, _body_own, _digest, _tape_from, _tape_to, validate_tape
from fastgrad.kernels.scan import HEADER as H
from fastgrad.opcodes import Op
from fastgrad.reference import Reference


def raises(match):
    return pytest.raises(FastgradError, match=match)


def _rewrite(path, change):
    """Apply ``change(arrays, header)`` to a saved file and write it back with the digest
    recomputed, as anyone editing a file on purpose can."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(arrays.pop(HEADER).tobytes())
    change(arrays, header)
    header["digest"] = _digest(header["tree"], arrays)
    arrays[HEADER] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


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
    own = _body_own(SimpleNamespace(labels=labels, **view), first, store, ip[2], ip[3])
    sizes = arrays[doc["node_size"]]
    new = ip[:14] + [int(sum(int(sizes[n]) for n in own)), len(own)] + \
        ip[H : H + 4 * nc + 2 * ns] + own
    arrays[doc["iparams"]] = np.concatenate(
        [iparams[: ip_ptr[r]], np.array(new, np.int64), iparams[ip_ptr[r + 1] :]])
    shifted = ip_ptr.copy()
    shifted[r + 1 :] += len(new) - len(ip)
    arrays[doc["ip_ptr"]] = shifted
    return ip[2], ip[3], first, store


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
    monkeypatch.setattr(fastgrad.io, "validate_tape", lambda tape, what="": None)
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


def _replays_safely(loaded, honest):
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
        _replays_safely(loaded, y.tape)

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
