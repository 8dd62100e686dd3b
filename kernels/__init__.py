"""Numba kernels of fastgrad, installed as ``fastgrad.kernels``.

Pure Numba over plain arrays: nothing here knows about tensors or Python objects. The replay
loops (``replay_forward`` / ``replay_backward``) walk a tape given as flat integer arrays and
dispatch on the op code to one forward and one vector-Jacobian-product kernel per op.
"""

from ._jit import CACHE_DIR, CACHE_ENABLED
from .replay import replay_backward, replay_forward

__all__ = ["replay_forward", "replay_backward", "CACHE_DIR", "CACHE_ENABLED"]
