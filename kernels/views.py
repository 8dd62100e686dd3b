"""Where a tape row's operands, output and attributes live: views into the arenas.

The tape tuple is described in kernels/call.py and fastgrad/runtime/tape.py. Node v lives in one of
four places by its kind: the value arena ``values`` (0), the integer arena ``ivalues`` (1,
indices and labels), the optimizer's flat parameter buffer ``params`` (2, a compiled
program's parameters; their gradients in ``pgrads``) or the caller's input array ``external``
(3, read in place). Row r's operands are in_idx[in_ptr[r]:in_ptr[r+1]], its integer
attributes iparams[ip_ptr[r]:ip_ptr[r+1]], its float attributes fparams[fp_ptr[r]:].

A node's gradient target is its mode in ``need`` (fastgrad/runtime/tape.py ``grad_modes``): 0 none,
ACCUMULATE (its gradient slot += the VJP), OVERWRITE (this row is its only writer: slot = the
VJP, so nobody clears the slot first) or INTO_VALUE (the target is the node's own value, with
the sweep's ``value_alpha``: value += value_alpha * VJP, as gemm's C = alpha A B + beta C with
C the value and beta 1). VJP kernels only follow the target they are given; a compiled
training step is what marks a weight INTO_VALUE with value_alpha = -lr (kernels/train.py), so
that a plain-SGD update happens inside the weight gradient's own product.

The row accessors are inlined (``jit_inline``): each is called with constant operand numbers,
and a constant argument would otherwise compile a copy of the function per constant.
"""

from ..ops.nodes import EXTERNAL_NODE, PARAM_NODE
from ._jit import jit, jit_inline

__all__ = ["ACCUMULATE", "INTO_VALUE", "OVERWRITE", "add_scaled", "fattr", "grad_view", "iattrs",
           "ioperand", "n_operands", "needs", "operand", "operand_grad", "output", "output_grad",
           "view"]

ACCUMULATE, OVERWRITE, INTO_VALUE = 1, 2, 3  # gradient targets, the modes in ``need``


@jit
def add_scaled(dest, alpha, g):
    """dest += alpha * g, elementwise, with alpha rounded to dest's dtype (as PyTorch's
    ``p.add_(g, alpha=a)``): how a VJP writes into an INTO_VALUE target."""
    a = dest.dtype.type(alpha)
    for i in range(dest.size):
        dest[i] += a * g[i]


@jit
def view(v, values, param_arena, node_kind, node_off, node_size, external):
    """Node v's values: its slice of ``values``, of ``param_arena`` for parameter nodes (kind
    2), or the caller's input array ``external`` (kind 3, fg.compile reads it in place)."""
    o = node_off[v]
    kind = node_kind[v]
    if kind == PARAM_NODE:
        return param_arena[o : o + node_size[v]]
    if kind == EXTERNAL_NODE:
        return external[: node_size[v]]
    return values[o : o + node_size[v]]


@jit
def grad_view(v, grads, param_grads, node_kind, node_off, node_size):
    """Node v's gradient: in ``param_grads`` for parameter nodes (kind 2), else its slice of
    ``grads`` (an external input, kind 3, keeps its value-arena offset there; it needs none)."""
    o = node_off[v]
    if node_kind[v] == PARAM_NODE:
        return param_grads[o : o + node_size[v]]
    return grads[o : o + node_size[v]]


@jit_inline
def operand(tape, values, params, r, t):
    """The values of row r's t-th operand."""
    return view(tape[3][tape[2][r] + t], values, params, tape[10], tape[8], tape[9], tape[11])


@jit_inline
def operand_grad(tape, grads, pgrads, r, t):
    """The gradient of row r's t-th operand."""
    return grad_view(tape[3][tape[2][r] + t], grads, pgrads, tape[10], tape[8], tape[9])


@jit_inline
def ioperand(tape, ivalues, r, t):
    """The integer values (indices, labels) of row r's t-th operand."""
    v = tape[3][tape[2][r] + t]
    return ivalues[tape[8][v] : tape[8][v] + tape[9][v]]


@jit_inline
def needs(tape, need, r, t):
    """Whether row r's t-th operand wants a gradient (its mode in ``need``)."""
    return need[tape[3][tape[2][r] + t]]


@jit_inline
def n_operands(tape, r):
    return tape[2][r + 1] - tape[2][r]


@jit_inline
def output(tape, values, params, r):
    """Row r's output values."""
    return view(tape[1][r], values, params, tape[10], tape[8], tape[9], tape[11])


@jit_inline
def output_grad(tape, grads, pgrads, r):
    """The gradient of row r's output."""
    return grad_view(tape[1][r], grads, pgrads, tape[10], tape[8], tape[9])


@jit_inline
def iattrs(tape, r):
    """Row r's integer attributes."""
    return tape[5][tape[4][r] : tape[4][r + 1]]


@jit_inline
def fattr(tape, r, k):
    """Row r's k-th float attribute."""
    return tape[7][tape[6][r] + k]
