"""Calling an op's row kernel through its address: the one link between the small entry kernels
(replay, train step, fit, scan) and the per-op kernels, which are compiled apart, on demand.

Why addresses: Numba links every callee's code into each caller and re-optimises the whole tree
there, so a replay loop that called every op directly compiled all of them, again in every entry
and dtype (73-109 s before a first result). A call through an address is not linked: the entry
compiles once, small, whatever ops exist, and each op compiles alone when a tape first uses it
(kernels/dispatch.py fills the table). docs/benchmarks.md, "Dispatch prototype", measures it.

A row kernel has one of two signatures (FORWARD_SIGNATURE, VJP_SIGNATURE below):

    forward(ctx, r, check) -> int64
    vjp(ctx, r, check) -> int64

``ctx`` is the address of the sweep's context, which a loop writes once per sweep: where the
tape's arrays and the arenas are, and the scale of gradients written into INTO_VALUE targets
(``context``; a row kernel rebuilds the arrays with ``unpack``, reads the scale with
``value_alpha``). A
kernel returns -1, or an anomaly report (kernels/rows.py, STEP_CODE) for a scan row. The call
uses Numba's own calling convention, so an exception raised in a row kernel reaches the caller
as it would through a direct call. A context carries its float dtype, which a kernel of the
other dtype refuses.

The tape tuple (fastgrad/runtime/tape.py ``Tape.arrays``) is
    (ops, outs, in_ptr, in_idx, ip_ptr, iparams, fp_ptr, fparams, node_off, node_size, node_kind,
     external, table)
where ``table`` is the dispatch table of the tape's dtype: ``table[code]`` the address of op
``code``'s forward row kernel, ``table[SLOTS + code]`` of its VJP.
"""

import numpy as np
from numba import carray, types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic

from ..ops import Op
from ._jit import jit, jit_inline
from .vecmath import bits_from_f64, f64_from_bits

SLOTS = 1024  # op codes are below this (100 * family + index, families 0-7)
# Slots past the op codes: the three ways a SCAN row runs (kernels/scan.py), each compiled
# only when a tape has such a scan. Their kernels take the row signature below.
SCAN_CELL, SCAN_STEPS, SCAN_BINOMIAL = 1000, 1001, 1002

_I64 = types.Array(types.int64, 1, "C")
_KIND = types.Array(types.int8, 1, "C")


def _farray(dtype):
    return types.Array(dtype, 1, "C")


def tape_type(dtype):
    """The Numba type of the tape tuple for float type ``dtype`` (types.float32 / float64)."""
    F = _farray(dtype)
    return types.Tuple((_I64, _I64, _I64, _I64, _I64, _I64, _I64, F, _I64, _I64, _KIND, F, _I64))


# A row kernel's signature: the address of the sweep's context (below), the row, ``check``.
# Three machine words per call: the arrays themselves as arguments were 20 array structs per
# row (43 ns of a 1-element row measured; the context costs a few).
FORWARD_SIGNATURE = types.int64(types.int64, types.int64, types.boolean)
VJP_SIGNATURE = FORWARD_SIGNATURE

# The context: (address, length) of each array a row kernel reads, written once per sweep by
# ``context``, then the float itemsize (a kernel of the other dtype refuses it), then the bits
# of the float64 ``value_alpha`` (kernels/views.py, INTO_VALUE).
NARRAYS = 20  # the tape's 13 arrays, values, ivalues, params, grads, pgrads, need, scratch
ITEMSIZE, VALUE_ALPHA = 2 * NARRAYS, 2 * NARRAYS + 1
CONTEXT_SIZE = 2 * NARRAYS + 2


@intrinsic
def _address(typingctx, array):
    """The address of ``array``'s data, as an int64 (``array.ctypes.data`` builds a ctypes
    object first, which took most of the compile time of ``context``)."""
    if not isinstance(array, types.Array):
        raise TypingError(f"_address takes an array, not {array}")

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        return builder.ptrtoint(data, context.get_value_type(types.int64))

    return types.int64(array), codegen


@jit
def context(tape, values, ivalues, params, grads, pgrads, need, scratch, value_alpha):
    """The context of a sweep over ``tape`` (an int64 array whose address the row kernels
    take): it must stay alive, and the arrays unmoved, while they run. A forward sweep may pass
    any arrays of the right types for the gradient arenas it does not use. ``value_alpha``
    scales the gradients written into INTO_VALUE targets (kernels/views.py)."""
    ctx = np.empty(CONTEXT_SIZE, np.int64)
    ctx[0], ctx[1] = _address(tape[0]), tape[0].size
    ctx[2], ctx[3] = _address(tape[1]), tape[1].size
    ctx[4], ctx[5] = _address(tape[2]), tape[2].size
    ctx[6], ctx[7] = _address(tape[3]), tape[3].size
    ctx[8], ctx[9] = _address(tape[4]), tape[4].size
    ctx[10], ctx[11] = _address(tape[5]), tape[5].size
    ctx[12], ctx[13] = _address(tape[6]), tape[6].size
    ctx[14], ctx[15] = _address(tape[7]), tape[7].size
    ctx[16], ctx[17] = _address(tape[8]), tape[8].size
    ctx[18], ctx[19] = _address(tape[9]), tape[9].size
    ctx[20], ctx[21] = _address(tape[10]), tape[10].size
    ctx[22], ctx[23] = _address(tape[11]), tape[11].size
    ctx[24], ctx[25] = _address(tape[12]), tape[12].size
    ctx[26], ctx[27] = _address(values), values.size
    ctx[28], ctx[29] = _address(ivalues), ivalues.size
    ctx[30], ctx[31] = _address(params), params.size
    ctx[32], ctx[33] = _address(grads), grads.size
    ctx[34], ctx[35] = _address(pgrads), pgrads.size
    ctx[36], ctx[37] = _address(need), need.size
    ctx[38], ctx[39] = _address(scratch), scratch.size
    ctx[ITEMSIZE] = values.itemsize
    ctx[VALUE_ALPHA] = bits_from_f64(np.float64(value_alpha))
    return ctx


@jit_inline
def has_kernel(code):
    """Whether a row of op ``code`` runs a kernel: not SCAN_BEGIN (it marks where a loop's
    body starts) nor RESHAPE (its output aliases its input's slot, values and gradients
    alike, so it has nothing to compute either way). dispatch.NO_KERNEL is the same list."""
    return code != Op.SCAN_BEGIN and code != Op.RESHAPE


@jit_inline
def row_kernel(table, slot):
    """The address of the kernel in ``table[slot]``; a slot never filled (0) raises rather
    than skip the row (Tape.arrays fills the slots of a tape's rows before they run)."""
    address = table[slot]
    if address == 0:
        raise RuntimeError("fastgrad internal error: the kernel of a row was not loaded")
    return address


@intrinsic
def _pointer(typingctx, address, dtype):
    """``address`` (an int) as a pointer to ``dtype`` values (a NumPy scalar type)."""
    target = types.CPointer(dtype.dtype)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(target))

    return target(address, dtype), codegen


@jit_inline
def value_alpha(address):
    """The ``value_alpha`` of the context at ``address``."""
    return f64_from_bits(carray(_pointer(address, np.int64), CONTEXT_SIZE)[VALUE_ALPHA])


def _unpacked_type(F):
    """The type ``unpack`` returns for float type ``F``: (tape, values, ivalues, params,
    grads, pgrads, need, scratch)."""
    FA = _farray(F)
    return types.Tuple((tape_type(F), FA, _I64, FA, FA, FA, _KIND, FA))


@intrinsic
def unpack(typingctx, address, dtype, itemsize):
    """The arrays of the context at ``address`` for float type ``dtype`` (a NumPy scalar type
    of ``itemsize`` bytes): (tape, values, ivalues, params, grads, pgrads, need, scratch),
    arrays without an owner (no reference counting). A context of another float dtype raises.

    One intrinsic, not twenty ``carray`` calls: typed once and emitted as loads, it costs a
    row kernel's compilation a few milliseconds where the calls cost about 0.2 s; LLVM drops
    the arrays a kernel does not read."""
    if not isinstance(dtype, types.NumberClass) or not isinstance(dtype.dtype, types.Float):
        raise TypingError(f"unpack takes a float type, not {dtype}")
    result = _unpacked_type(dtype.dtype)

    def codegen(context, builder, signature, args):
        i64 = context.get_value_type(types.int64)
        base = builder.inttoptr(args[0], i64.as_pointer())

        def word(k):
            return builder.load(builder.gep(base, [context.get_constant(types.intp, k)]))

        with cgutils.if_unlikely(builder, builder.icmp_signed(
                "!=", word(ITEMSIZE), context.cast(builder, args[2], signature.args[2],
                                                   types.int64))):
            context.call_conv.return_user_exc(
                builder, RuntimeError,
                ("fastgrad internal error: a row kernel got a sweep of another dtype",))

        def array(arrty, k):
            ary = context.make_array(arrty)(context, builder)
            data = builder.inttoptr(word(2 * k), context.get_value_type(arrty.dtype).as_pointer())
            size = context.get_abi_sizeof(context.get_data_type(arrty.dtype))
            context.populate_array(
                ary, data=data, shape=cgutils.pack_array(builder, [word(2 * k + 1)]),
                strides=cgutils.pack_array(builder, [context.get_constant(types.intp, size)]),
                itemsize=context.get_constant(types.intp, size), meminfo=None)
            return ary._getvalue()

        tape_ty = result.types[0]
        tape = context.make_tuple(builder, tape_ty,
                                  [array(t, k) for k, t in enumerate(tape_ty.types)])
        rest = [array(t, 13 + k) for k, t in enumerate(result.types[1:])]
        return context.make_tuple(builder, result, [tape, *rest])

    return result(address, dtype, itemsize), codegen


def _call(context, builder, sig, args, row_sig):
    """Cast the arguments to ``row_sig``'s (a context array to its data's address), call the
    function at address args[0] with Numba's calling convention, and propagate an exception it
    raised."""
    values = []
    for v, t, want in zip(args[1:], sig.args[1:], row_sig.args):
        if isinstance(t, types.Array):
            data = context.make_array(t)(context, builder, v).data
            values.append(builder.ptrtoint(data, context.get_value_type(types.int64)))
        else:
            values.append(context.cast(builder, v, t, want))
    fnty = context.call_conv.get_function_type(row_sig.return_type, row_sig.args)
    fn = builder.inttoptr(args[0], fnty.as_pointer())
    status, out = context.call_conv.call_function(builder, fn, row_sig.return_type,
                                                  row_sig.args, values)
    with cgutils.if_unlikely(builder, status.is_error):
        context.call_conv.return_status_propagate(builder, status)
    return out


def _scalars(name, given):
    for i, t in enumerate(given):
        if i == 1 and t == _I64:
            continue  # the context array itself (see call_forward)
        if not isinstance(t, (types.Integer, types.Float, types.Boolean)):
            raise TypingError(f"{name}: argument {i + 1} is {t}, the row kernels take numbers")


@intrinsic
def call_forward(typingctx, addr, ctx, r, check):
    """``forward(ctx, r, check)`` of the row kernel at ``addr``. ``ctx`` is the sweep's context:
    the array ``context`` made, in the loop that owns it, or its address in a row kernel. Pass
    the array where it was made: Numba frees an array after its last use, so a loop that kept
    only the address would hand later rows memory that a kernel's allocation had reused."""
    _scalars("call_forward", (addr, ctx, r, check))
    sig = types.int64(addr, ctx, r, check)

    def codegen(context, builder, signature, args):
        return _call(context, builder, signature, args, FORWARD_SIGNATURE)

    return sig, codegen


@intrinsic
def call_vjp(typingctx, addr, ctx, r, check):
    """``vjp(ctx, r, check)`` of the row kernel at ``addr`` (as call_forward)."""
    _scalars("call_vjp", (addr, ctx, r, check))
    sig = types.int64(addr, ctx, r, check)

    def codegen(context, builder, signature, args):
        return _call(context, builder, signature, args, VJP_SIGNATURE)

    return sig, codegen


__all__ = ["CONTEXT_SIZE", "FORWARD_SIGNATURE", "SCAN_BINOMIAL", "SCAN_CELL", "SCAN_STEPS",
           "SLOTS", "VJP_SIGNATURE", "call_forward", "call_vjp", "context", "has_kernel",
           "row_kernel",
           "tape_type", "unpack", "value_alpha"]
