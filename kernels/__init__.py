"""Numba kernels of fastgrad, installed as ``fastgrad.kernels``.

Pure Numba over plain arrays: nothing here knows about tensors or Python objects. The replay
loops (``replay_forward`` / ``replay_backward``) walk a tape given as flat integer arrays and
call each row's forward or vector-Jacobian-product kernel through the dispatch table
(``dispatch.py``), which compiles an op's kernels when a tape first uses it.
"""

from . import _codegen

_codegen.install()  # before any kernel compiles: helpers get no machine code of their own

from ._jit import CACHE_DIR, CACHE_ENABLED  # noqa: E402
from .replay import replay_backward, replay_forward

__all__ = ["replay_forward", "replay_backward", "CACHE_DIR", "CACHE_ENABLED"]
