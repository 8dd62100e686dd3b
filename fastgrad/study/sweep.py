"""``sweep``: any study over a grid of cells, through a ``concurrent.futures.Executor`` (a local
process pool, or a Dask cluster); each finished cell is written to its file, so that a
sweep resumes where it stopped."""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import logging
import os
import pathlib
import sys
import time

from ..core.errors import FastgradError, fail
from .cells import cell_error, read_cell_file, write_cell_file
from .results import StudyResult, Table, jsonable, public_name

__all__ = ["SweepResult", "grid_cells", "sweep"]

log = logging.getLogger("fastgrad")


def grid_cells(grid):
    """The cells of a grid: a dict of lists (their Cartesian product, last key fastest) or a
    list of dicts (taken as given).

    >>> grid_cells({"radius": [0.9, 1.1], "seed": range(2)})
    [{'radius': 0.9, 'seed': 0}, {'radius': 0.9, 'seed': 1}, {'radius': 1.1, 'seed': 0}, {'radius': 1.1, 'seed': 1}]
    """
    if isinstance(grid, dict):
        cells = [{}]
        for key, values in grid.items():
            values = [values] if isinstance(values, (str, int, float)) else list(values)
            cells = [{**c, key: v} for c in cells for v in values]
        return cells
    cells = [dict(c) for c in grid]
    if not all(isinstance(c, dict) for c in cells):
        raise fail("sweep", "grid must be a dict of lists or a list of dicts",
                   "e.g. {'spectral_radius': [0.9, 1.1], 'seed': range(3)}")
    return cells


def _cell_text(fn, kwargs):
    """The canonical text of one cell's call (function and arguments): its identity."""
    return json.dumps({"fn": public_name(fn), "kwargs": jsonable(kwargs)}, sort_keys=True,
                      default=repr)


def _key_of(text):
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _cell_key(fn, kwargs):
    """The 16 hex digits naming a cell's file in a sweep's folder (cell-<key>.npz)."""
    return _key_of(_cell_text(fn, kwargs))


def _run_cell(fn, kwargs):
    """Runs in a worker: the cell's result and its wall time."""
    t0 = time.perf_counter()
    result = fn(**kwargs)
    return result, time.perf_counter() - t0


def _rows_of(result):
    if isinstance(result, StudyResult):
        return result.rows
    if isinstance(result, dict):
        return [result]
    if isinstance(result, (list, tuple)) and all(isinstance(r, dict) for r in result):
        return list(result)
    return [{"value": result}]


class SweepResult(StudyResult):
    """All cells of a sweep in grid order: ``rows`` (each cell's rows, prefixed by the cell's
    parameters), ``results`` (each cell's study result, None where it failed), ``failed``
    (cell index -> (cell, error text, attempts)) and ``seconds`` per cell."""

    name = "sweep"

    def __init__(self, cells, results, failed, seconds, params=None):
        self.cells, self.results, self.failed = cells, results, failed
        rows = []
        for cell, res in zip(cells, results):
            if res is None:
                continue
            for r in _rows_of(res):
                rows.append({**{k: v for k, v in cell.items() if k not in r}, **r})
        super().__init__(rows, params, seconds)

    def table(self) -> Table:
        text = str(super().table())
        if self.failed:
            text += f"\n\nFAILED cells ({len(self.failed)} of {len(self.cells)}):"
            for i, (cell, err, attempts) in sorted(self.failed.items()):
                text += f"\n  {cell} after {attempts} attempt(s): {err}"
        return Table(text)

    def title(self):
        return (f"{self.params.get('fn')}, {len(self.cells)} cells, {len(self.failed)} failed, "
                f"executor {self.params.get('executor')}")

    def combined(self):
        """The cells' study results merged into one (for its plot), where the study supports it."""
        results = [r for r in self.results if r is not None]
        if results and hasattr(type(results[0]), "combine"):
            return type(results[0]).combine(results)
        raise fail("sweep", "this study's results cannot be merged",
                   "use .rows / .table(), or each cell's .results[i].plot(...)")

    def plot(self, path):
        return self.combined().plot(path)


class _Serial(cf.Executor):
    """Runs each call at submit, in this process (executor="serial": debugging, tiny sweeps)."""

    def submit(self, fn, *args, **kwargs):
        f = cf.Future()
        try:
            f.set_result(fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001 - reported through the future
            f.set_exception(e)
        return f


def _executor(executor, max_workers):
    """(executor, what to close when done, a name for the table, a factory of a fresh executor
    or None). The factory is given only for the local process pool, which sweep owns (and shuts
    down): when a worker dies the pool is broken for good, and sweep replaces it."""
    if executor is None or executor == "processes":
        n = max_workers or os.cpu_count() or 1
        return _LocalPool(n), None, f"local process pool ({n} workers)", lambda: _LocalPool(n)
    if executor == "serial":
        return _Serial(), None, "serial (this process)", None
    if isinstance(executor, str):
        try:
            from dask.distributed import Client
        except ImportError as e:
            raise fail("sweep", f"a Dask scheduler address ({executor}) needs dask.distributed",
                       'pip install "fastgrad[sweep]"') from e
        client = Client(executor)
        return client.get_executor(pure=False), client.close, f"dask {executor}", None
    if hasattr(executor, "get_executor") and hasattr(executor, "scheduler_info"):  # dask Client
        return (executor.get_executor(pure=False), None, f"dask {executor.scheduler.address}",
                None)
    if hasattr(executor, "submit"):
        return executor, None, type(executor).__name__, None
    raise fail("sweep", f"unknown executor {executor!r}",
               "pass None (local processes), 'serial', a concurrent.futures.Executor, a "
               "dask.distributed.Client or a scheduler address 'tcp://host:port'")


class _LocalPool(cf.ProcessPoolExecutor):
    """sweep's own process pool; ``workers`` bounds the cells in flight, so that when a worker
    dies only the cells then running are suspects (a queued cell would fail with them)."""

    def __init__(self, workers):
        super().__init__(max_workers=workers)
        self.workers = workers


_DIED = ("the worker process died while running this cell (a crash in the cell: a segfault, "
         "os._exit, the out-of-memory killer)")


class _CellRunner:
    """Runs the cells ``todo`` of a sweep on an executor: retries, failures, dying workers.

    A failing cell is resubmitted up to ``retries`` times, then recorded in ``failed``; every
    finished cell is handed to ``on_done(i, result, seconds)`` at once (e.g. to write it).

    A worker process that dies takes down every cell it was running, and nothing tells which
    one crashed: sweep's own process pool breaks as a whole (BrokenProcessPool on every cell in
    flight; sweep replaces the pool), and Dask fails the cells that were on that worker
    (KilledWorker, once its ``allowed-failures`` are used up). So on either executor a cell
    whose worker died is first a suspect, not charged an attempt: suspects run again one at a
    time, with nothing else in flight, and a cell whose worker dies while it runs alone is the
    one that crashed, charged an attempt like any failing cell.
    """

    def __init__(self, fn, kwargs, cells, retries, ex, renew, on_done):
        self.fn, self.kwargs, self.cells, self.retries = fn, kwargs, cells, retries
        self.ex, self.renew, self.on_done = ex, renew, on_done
        self.attempts, self.failed = {}, {}  # cell index -> runs charged; -> (cell, error, n)
        self.pending = {}  # future -> cell index
        self.queue, self.alone = [], []  # cells to run; cells to run one at a time
        self.solo = None  # the future of the cell running alone, if any

    def run(self, todo):
        self.queue = list(todo)
        self.attempts = dict.fromkeys(todo, 0)
        while self.queue or self.alone or self.pending:
            broke = self._submit_more()
            if not self.pending and not broke:
                continue
            done = set()
            if not broke:
                done, _ = cf.wait(list(self.pending), return_when=cf.FIRST_COMPLETED)
            if broke or (self.renew is not None and any(_broken(f) for f in done)):
                self._pool_died()
                continue
            for fut in done:
                self._finished(fut, self.pending.pop(fut))
        return self.failed

    def _submit_more(self):
        """Submit what may run now; True when our own pool turned out to be broken."""
        if self.alone:
            if self.pending:
                return False
            i = self.alone.pop(0)
            broke = self._submit(i, self.alone)
            self.solo = next((f for f, j in self.pending.items() if j == i), None)
            return broke
        limit = getattr(self.ex, "workers", None)  # None: the executor schedules (e.g. Dask)
        while self.queue and (limit is None or len(self.pending) < limit):
            if self._submit(self.queue.pop(0), self.queue):
                return True
        return False

    def _submit(self, i, came_from):
        try:
            self.pending[self.ex.submit(_run_cell, self.fn, self.kwargs[i])] = i
        except Exception as e:  # noqa: BLE001 - e.g. a broken or shut-down executor of the caller
            if isinstance(e, cf.BrokenExecutor) and self.renew is not None:
                came_from.insert(0, i)  # our pool broke before this cell even started
                return True
            self.attempts[i] += 1
            self._failure(i, f"could not be submitted: {type(e).__name__}: {e}")
        return False

    def _finished(self, fut, i):
        e = fut.exception()
        if e is None:
            self.attempts[i] += 1
            self.on_done(i, *fut.result())
        elif _worker_died(e) and fut is not self.solo:
            self._suspect([i], e)
        else:
            self.attempts[i] += 1
            died = f"{_DIED} ({type(e).__name__}: {e})" if _worker_died(e) else ""
            self._failure(i, died or f"{type(e).__name__}: {e}", alone=bool(died))

    def _suspect(self, cells, e):
        log.warning("sweep: a worker process died while cells %s were running (%s: %s); they "
                    "run again one at a time to find the one that crashed",
                    [self.cells[i] for i in cells], type(e).__name__, e)
        self.alone += cells

    def _failure(self, i, err, alone=False):
        if self.attempts[i] <= self.retries:
            log.warning("sweep: cell %s failed (attempt %d, retrying): %s", self.cells[i],
                        self.attempts[i], err)
            (self.alone if alone else self.queue).append(i)
        else:
            log.error("sweep: cell %s failed after %d attempt(s): %s", self.cells[i],
                      self.attempts[i], err)
            self.failed[i] = (self.cells[i], err, self.attempts[i])

    def _pool_died(self):
        """A worker of our own pool died: keep what finished, replace the pool, sort out the
        cells it failed (charged if it ran alone, else suspects)."""
        cf.wait(list(self.pending))  # a broken pool fails every future it holds, promptly
        running, self.pending = self.pending, {}
        self.ex.shutdown(wait=True)
        self.ex = self.renew()
        suspects = [(f, i) for f, i in running.items() if _broken(f)]
        for fut, i in running.items():
            if not _broken(fut):
                self._finished(fut, i)  # finished before the crash, or failed on its own
        if len(running) == 1 and suspects:  # nothing else was in flight: it crashed
            self.solo = suspects[0][0]
        for fut, i in suspects:
            if fut is self.solo:
                self._finished(fut, i)
        others = [i for f, i in suspects if f is not self.solo]
        if others:
            self._suspect(others, _broken(suspects[0][0]))
        self.solo = None


def _broken(fut):
    """The BrokenExecutor error of a finished future whose executor broke, else None."""
    e = fut.exception()
    return e if isinstance(e, cf.BrokenExecutor) else None


def _worker_died(e):
    """Whether a cell's error says its worker process died rather than the cell failing."""
    if isinstance(e, cf.BrokenExecutor):
        return True
    distributed = sys.modules.get("distributed")  # loaded whenever Dask raised the error
    return distributed is not None and isinstance(e, distributed.KilledWorker)


def sweep(fn, grid, executor=None, out=None, retries=1, max_workers=None, **fixed):
    """Run ``fn(**fixed, **cell)`` for every cell of ``grid`` in parallel; one table of all.

    fn:       a study (any module-level function returning a study result, a dict or a list
              of dicts; it is pickled by reference, so a lambda will not do).
    grid:     dict of lists (Cartesian product) or list of dicts; see :func:`grid_cells`.
    executor: None (a local ``ProcessPoolExecutor``, ``max_workers`` processes), "serial",
              any ``concurrent.futures.Executor``, a ``dask.distributed.Client`` or a Dask
              scheduler address "tcp://host:port" (its ``get_executor()`` is used).
    out:      a folder: each finished cell is saved there at once (cell-<key>.npz: a JSON
              header and NumPy arrays, never a pickle; written atomically) and a rerun with the
              same folder loads those cells instead of running them again (resume). A cell file
              that is damaged, foreign or made for other parameters is reported (a logged
              warning) and the cell computed again. sweep.csv / sweep.json are written at the end.
    retries:  a failing cell is resubmitted up to this many times; a cell that still fails is
              reported in ``result.failed`` and in the table (never silently dropped). A cell
              whose worker process dies (segfault, ``os._exit``) is a failing cell like any
              other, on the local pool as on Dask: the other cells' results are kept.

    Returns a :class:`SweepResult`; cells in grid order whatever the executor, so a sweep gives
    the same table on any executor.

    >>> from fastgrad.study import spectral_radius
    >>> r = sweep(spectral_radius, [{"W": [[0.0, 2.0], [-0.5, 0.0]]}, {"W": [[3.0]]}],
    ...           executor="serial")
    >>> [row["value"] for row in r.rows]
    [1.0, 3.0]
    """
    cells = grid_cells(grid)
    kwargs = [{**fixed, **c} for c in cells]
    fn_name = public_name(fn)
    texts = [_cell_text(fn, k) for k in kwargs]
    keys = [_key_of(t) for t in texts]
    folder = pathlib.Path(out) if out is not None else None
    results, seconds, failed = [None] * len(cells), [None] * len(cells), {}
    todo = list(range(len(cells)))
    if folder is not None:
        todo = [i for i in todo if not _resume_cell(folder, fn_name, keys[i], texts[i], i,
                                                    results, seconds)]

    def done(i, result, secs):
        results[i], seconds[i] = result, secs
        if folder is None:
            return
        try:
            write_cell_file(_cell_path(folder, keys[i]), {
                "fn": fn_name, "key": keys[i], "parameters": texts[i],
                "seconds": float(secs).hex()}, result)
        except (FastgradError, OSError) as e:  # the result is kept; only resuming it is lost
            log.warning("sweep: cell %s is kept in this result but not saved, so a rerun "
                        "computes it again: %s", cells[i], e)

    name = "none needed"
    if todo:
        ex, close, name, renew = _executor(executor, max_workers)
        runner = _CellRunner(fn, kwargs, cells, retries, ex, renew, done)
        try:
            failed = runner.run(todo)
        finally:
            if renew is not None:  # our pool, or the one that replaced it
                runner.ex.shutdown(cancel_futures=True)  # none left unless interrupted
            if close is not None:
                close()
    params = {"fn": fn_name, "executor": name, "cells": len(cells), "retries": retries,
              **{k: v for k, v in fixed.items()}}
    res = SweepResult(cells, results, failed, seconds, params)
    if folder is not None:
        res.to_csv(folder / "sweep.csv")
        res.to_json(folder / "sweep.json")
    return res


def _cell_path(folder, key):
    return folder / f"cell-{key}.npz"


def _resume_cell(folder, fn_name, key, text, i, results, seconds):
    """Load cell i from its file into results/seconds; False when it must be computed."""
    path = _cell_path(folder, key)
    if not path.exists():
        if (folder / f"cell-{key}.pkl").exists():
            log.warning("sweep: %s is a pickle, which sweep never loads (it could run any "
                        "code); the cell is computed again and saved as %s", f"cell-{key}.pkl",
                        path.name)
        return False
    try:
        header, value = read_cell_file(path)
        want = {"fn": fn_name, "key": key, "parameters": text}
        for field, expected in want.items():
            if header.get(field) != expected:
                raise cell_error(path, f"it was written for another cell ({field} "
                                 f"{header.get(field)!r}, expected {expected!r})")
        secs = header.get("seconds")
        try:
            secs = float.fromhex(secs)
        except (TypeError, ValueError, OverflowError):
            raise cell_error(path, f"bad seconds {secs!r}") from None
    except FastgradError as e:
        log.warning("%s (this sweep computes the cell again)", e)
        return False
    results[i], seconds[i] = value, secs
    return True
