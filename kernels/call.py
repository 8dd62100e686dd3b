"""Calling an op's row kernel through its address: the one link between the small entry kernels
(replay, train step, fit, scan) and the per-op kernels, which are compiled apart, on demand.

Why addresses: Numba links every callee's code into each caller and re-optimises the whole tree
there, so a replay loop that called every op directly compiled all of them, again in every entry
and dtype (73-109 s before a first result). A call through an address is not linked: the entry
compiles once, small, whatever ops exist, and each op compiles alone when a tape first uses it
(kernels/dispatch.py fills the table). docs/benchmarks.md, "Dispatch prototype", measures it.

A row kernel has one of two signatures per float dtype F (the tape tuple below, then):

    forward(tape, values, ivalues, params, r, check) -> int64
    vjp(tape, values, ivalues, params, grads, pgrads, need, scratch, r, lr, check) -> int64

returning -1, or an anomaly report (kernels/rows.py, STEP_CODE) for a scan row. The call uses
Numba's own calling convention, so an exception raised in a row kernel reaches the caller as it
would through a direct call. ``call_forward`` / ``call_vjp`` refuse at compile time any argument
whose type differs from the signature the table's kernels were compiled for: a mismatch cannot
reach a kernel.

The tape tuple (fastgrad/tape.py ``Tape.arrays``) is
    (ops, outs, in_ptr, in_idx, ip_ptr, iparams, fp_ptr, fparams, node_off, node_size, node_kind,
     external, table)
where ``table`` is the dispatch table of the tape's dtype: ``table[code]`` the address of op
``code``'s forward row kernel, ``table[SLOTS + code]`` of its VJP.
"""

from numba import types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic

SLOTS = 1024  # op codes are below this (100 * family + index, families 0-7)

_I64 = types.Array(types.int64, 1, "C")
_KIND = types.Array(types.int8, 1, "C")


def _farray(dtype):
    return types.Array(dtype, 1, "C")


def tape_type(dtype):
    """The Numba type of the tape tuple for float type ``dtype`` (types.float32 / float64)."""
    F = _farray(dtype)
    return types.Tuple((_I64, _I64, _I64, _I64, _I64, _I64, _I64, F, _I64, _I64, _KIND, F, _I64))


def forward_signature(dtype):
    F = _farray(dtype)
    return types.int64(tape_type(dtype), F, _I64, F, types.int64, types.boolean)


def vjp_signature(dtype):
    F = _farray(dtype)
    return types.int64(tape_type(dtype), F, _I64, F, F, F, _KIND, F, types.int64, types.float64,
                       types.boolean)


def _check_types(name, expected, given):
    """Raise a TypingError when an array or tuple argument differs from the row signature;
    scalars are cast to it."""
    for i, (want, got) in enumerate(zip(expected, given)):
        if isinstance(want, (types.Array, types.BaseTuple)) and want != got:
            raise TypingError(f"{name}: argument {i} is {got}, the row kernels take {want}")


def _dtype_of(tape):
    if not isinstance(tape, types.BaseTuple) or len(tape) != 13:
        raise TypingError(f"the tape must be the 13-array tuple of kernels/call.py, got {tape}")
    return tape[7].dtype


def _call(context, builder, sig, args, row_sig):
    """Cast the scalar arguments to ``row_sig``'s, call the function at address args[0] with
    Numba's calling convention, and propagate an exception it raised."""
    values = [context.cast(builder, v, t, want)
              for v, t, want in zip(args[1:], sig.args[1:], row_sig.args)]
    fnty = context.call_conv.get_function_type(row_sig.return_type, row_sig.args)
    fn = builder.inttoptr(args[0], fnty.as_pointer())
    status, out = context.call_conv.call_function(builder, fn, row_sig.return_type,
                                                  row_sig.args, values)
    with cgutils.if_unlikely(builder, status.is_error):
        context.call_conv.return_status_propagate(builder, status)
    return out


@intrinsic
def call_forward(typingctx, addr, tape, values, ivalues, params, r, check):
    """``forward(tape, values, ivalues, params, r, check)`` of the row kernel at ``addr``."""
    row_sig = forward_signature(_dtype_of(tape))
    given = (tape, values, ivalues, params, r, check)
    _check_types("call_forward", row_sig.args, given)
    sig = types.int64(types.int64, *given)

    def codegen(context, builder, signature, args):
        return _call(context, builder, signature, args, row_sig)

    return sig, codegen


@intrinsic
def call_vjp(typingctx, addr, tape, values, ivalues, params, grads, pgrads, need, scratch, r,
             lr, check):
    """``vjp(tape, values, ..., r, lr, check)`` of the row kernel at ``addr``."""
    row_sig = vjp_signature(_dtype_of(tape))
    given = (tape, values, ivalues, params, grads, pgrads, need, scratch, r, lr, check)
    _check_types("call_vjp", row_sig.args, given)
    sig = types.int64(types.int64, *given)

    def codegen(context, builder, signature, args):
        return _call(context, builder, signature, args, row_sig)

    return sig, codegen


__all__ = ["SLOTS", "call_forward", "call_vjp", "forward_signature", "tape_type",
           "vjp_signature"]
