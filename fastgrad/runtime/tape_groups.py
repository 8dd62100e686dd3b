"""What other layers keep on a tape, each group named for its owner, apart from the tape's own
format (the rows and nodes, runtime/tape.py).

- ``TensorLinks`` (the front end, frontend/recorder.py): which tensors the tape's nodes copy.
- ``BodyRecording`` (``fg.scan``, transforms/scan.py): the loop body being recorded on it.
- ``ProgramArrays`` (``fg.compile``, training/program.py): where the values of a compiled
  program's parameter and input nodes live (node kinds 2 and 3, docs/tape.md).

>>> links = TensorLinks()
>>> links.leaves.append(("w", 3)); links.shifted(10).leaves
[('w', 13)]
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["BodyRecording", "ProgramArrays", "TensorLinks"]


@dataclass
class TensorLinks:
    """The tensors whose values a tape's nodes copy, kept by the recorder.

    - ``leaves``: (leaf tensor, node) pairs that receive gradients at ``backward``;
    - ``imported``: id(tensor) -> (tensor, node of its latest copy), to reuse a copy while the
      tensor still holds the values it copied (``import_tensor``);
    - ``copies``: (leaf tensor, node) for every copy of a leaf's values, checked at backward
      (``Tape.check_saved_leaves``: a saved value the leaf no longer holds is refused);
    - ``index_copies``: (tensor, node, lo, hi, where) for integer arrays a traced function
      captured as constant indices; fg.compile reloads and checks them at each call.
    """

    leaves: list = field(default_factory=list)
    imported: dict = field(default_factory=dict)
    copies: list = field(default_factory=list)
    index_copies: list = field(default_factory=list)

    def shifted(self, nshift: int) -> "TensorLinks":
        """These links with every node moved up by ``nshift`` (a tape merged into another)."""
        return TensorLinks([(t, v + nshift) for t, v in self.leaves],
                           {k: (t, v + nshift) for k, (t, v) in self.imported.items()},
                           [(t, v + nshift) for t, v in self.copies],
                           [(t, v + nshift, *rest) for t, v, *rest in self.index_copies])

    def merge(self, other: "TensorLinks"):
        """Take ``other``'s links too (already shifted); an earlier copy of a tensor wins."""
        self.leaves += other.leaves
        self.copies += other.copies
        self.index_copies += other.index_copies
        for key, item in other.imported.items():
            self.imported.setdefault(key, item)

    def copy(self) -> "TensorLinks":
        return TensorLinks(list(self.leaves), dict(self.imported), list(self.copies),
                           list(self.index_copies))


@dataclass
class BodyRecording:
    """An ``fg.scan`` body being recorded on the tape: while ``active``, no merges and no
    nesting; ``marker`` is the row of its SCAN_BEGIN marker, ``first_node`` the body's first
    node, ``hoisted`` the nodes of rows moved out of it (``Tape.hoist_last_row``).
    ``slot_sources``: (row, slot, source node, first) for carry and x_t slots whose values
    (init's; xs[0]'s with ``first``) wait for the rows before ``row`` to run (-1: the marker
    of the body being recorded; a failed recording leaves its step's rows on the tape, their
    slots waiting so: ``Tape.fill_body_slots``)."""

    active: bool = False
    marker: int = -1
    first_node: int = -1
    hoisted: set = field(default_factory=set)
    slot_sources: list = field(default_factory=list)

    def copy(self) -> "BodyRecording":
        return BodyRecording(self.active, self.marker, self.first_node, set(self.hoisted),
                             list(self.slot_sources))


@dataclass
class ProgramArrays:
    """Where a compiled program's parameter and input nodes live: ``param_arena`` (and
    ``param_grads``) hold kind-2 nodes, the optimizer's flat buffers; ``external`` is the
    caller's array of a kind-3 node at each call (C-contiguous, read through reshape(-1)).
    Empty for eager tapes."""

    param_arena: np.ndarray
    param_grads: np.ndarray
    external: np.ndarray

    @classmethod
    def empty(cls, dtype) -> "ProgramArrays":
        return cls(np.zeros(0, dtype), np.zeros(0, dtype), np.zeros(0, dtype))

    def copy(self) -> "ProgramArrays":
        return ProgramArrays(self.param_arena.copy(), self.param_grads.copy(),
                             self.external.copy())
