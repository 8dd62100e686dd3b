"""The check every loaded tape passes before a kernel can see it (the replay kernels trust the
tape): each row against its op's registry layout and shape rule, node kinds, offsets and
sizes, and each ``fg.scan`` loop's SCAN header against the layout ``fg.scan`` records
(``_check_scan``)."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ..core.errors import FastgradError, fail
from ..kernels.scan import binomial_advance
from ..ops import CONTROL, MAX_NDIM, TABLE, Op, fmt
from ..ops.control import SCAN_LAYOUT
from ..ops.nodes import FLOAT_NODE, FUSED_LABEL, INDEX_NODE, PARAM_NODE
from ..runtime.tape import Tape, GrowingArray

__all__ = ["FIX_DAMAGED", "int_list", "partitions", "scan_results", "validate_tape"]


FIX_DAMAGED = "the file is truncated or was modified; load an earlier copy or save it again"
_INPUT_LABELS = ("leaf", "const")  # how tensors imported into a tape are labelled


def partitions(ptr, n) -> bool:
    """Whether ``ptr`` (int64) starts at 0, never decreases and ends at ``n``. Compared, not
    subtracted: np.diff wraps in int64 (2**63-1 then -2**62 differs by a positive number)."""
    return bool(ptr.size and ptr[0] == 0 and ptr[-1] == n and np.all(ptr[1:] >= ptr[:-1]))


def int_list(a) -> list[int]:
    return [int(x) for x in a]


def scan_results(ip) -> list[int]:
    """The nodes a (checked) SCAN row writes for the rows after it: the final carries, then the
    stacked output if any."""
    a = SCAN_LAYOUT.decode(ip, [], "scan")
    return [int(c[3]) for c in a.carries] + [int(s[1]) for s in a.stacked]


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
    ip = int_list(iparams[ip_ptr[r] : ip_ptr[r + 1]])
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
    carries = [int_list(c) for c in a.carries]
    inits, cins, couts, finals = (list(col) for col in zip(*carries))
    stack = int_list(a.stacked.reshape(-1))
    own = int_list(a.own)

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
    target = int_list(iparams[ip_ptr[begin] : ip_ptr[begin + 1]])
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
    if int_list(in_idx[in_ptr[begin] : in_ptr[begin + 1]]) != inits[:1]:
        raise bad(f"row {begin} (scan_begin) does not read carry 0's init %{inits[0]}")
    if int_list(in_idx[in_ptr[r] : in_ptr[r + 1]]) != inits + ([xs] if has_x else []):
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
    per_step = set(int_list(outs[b0:b1])) | set(cins) | ({x_slot} if has_x else set())
    for row in range(hoisted, begin):
        if per_step & set(int_list(in_idx[in_ptr[row] : in_ptr[row + 1]])):
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
    want_own, _ = tape.body_nodes(first, tail, b0, b1)
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
        held = int_list(tape.ivalues.view[off : off + 4 + slots])
        if held[0] not in (0, 1):
            raise bad(f"{where}: schedule %{sched} has forward flag {held[0]}, not 0 or 1")
        if held[0]:  # the next backward sweep starts from these checkpoints
            steps = _binomial_stores(T, slots)
            if held[1] != len(steps) or held[4 : 4 + len(steps)] != steps:
                raise bad(f"{where}: schedule %{sched} holds {held[1]} checkpoints at steps "
                          f"{held[4 : 4 + max(0, min(held[1], slots))]}; the binomial forward "
                          f"sweep stores {len(steps)} at {steps}")
        internal.append(sched)
    return _Scan(begin, r, scan_results(ip), internal)


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
        return fail(what, f"invalid tape: {problem}", FIX_DAMAGED if what == "load" else
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
    params = tape.program_arrays.param_arena
    if not isinstance(params, np.ndarray) or params.ndim != 1 or params.dtype != dtype:
        raise bad("the parameter arena is not a 1-D array of the tape dtype")
    R, N = tape.ops.n, tape.node_off.n
    if tape.outs.n != R:
        raise bad(f"{tape.outs.n} output ids for {R} rows")
    for name, target in (("in_ptr", tape.in_idx), ("ip_ptr", tape.iparams),
                         ("fp_ptr", tape.fparams)):
        p = getattr(tape, name).view
        if p.size != R + 1 or not partitions(p, target.n):
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
