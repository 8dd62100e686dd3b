"""The op codes as plain module-level ints (``ADD``, ``TANH``, ...), for the kernels' branches.

Why not ``Op.ADD``: an op's row kernel is a closure over its code (dispatch.py), and the
functions it calls are inlined into it (``jit_inline``), so every ``if code == ADD`` compares
two constants. Numba prunes such a branch before it types the calls inside, so an op's kernel
compiles that op's code alone, but only when it can read both sides as constants: an int
global or a closure's int, not an attribute of the enum (``Op.ADD`` is a lookup at run time).
"""

from ..ops import Op

globals().update({name: int(op) for name, op in Op.__members__.items()})
__all__ = list(Op.__members__)
