"""Numba compilation flags and the one intrinsic our kernels need, in one place.

Every hot kernel in freshrec is compiled with ``@njit(**JIT)`` (njit is nopython): releases the
GIL (so PS shards and serving threads run kernels in parallel), cached on disk (a new process
pays ~0.3 s, not a full compile), and ``error_model='numpy'`` so that divisions do not carry
Python's zero-division check, which stops numba from vectorising the optimizer loops.

``prefetch(arr, i, j)`` asks the CPU to start loading the cache line of ``arr[i, j]``. Hash-table
kernels are bound by memory latency, not arithmetic: each key costs a miss on its index slot and
another on its row. Issuing those misses for a group of keys before touching any of them (group
prefetching) lets them overlap instead of queueing one after the other.
"""

from __future__ import annotations

from llvmlite import binding as _llvm
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

JIT: dict[str, object] = {
    "nogil": True,
    "cache": True,
    "error_model": "numpy",
}

# LLVM >= 15 uses opaque pointers: the intrinsic is overloaded on "p0", not "p0i8"
_PREFETCH = "llvm.prefetch.p0" if _llvm.llvm_version_info[0] >= 15 else "llvm.prefetch.p0i8"


def _prefetch_codegen(n_index: int):
    """Code generation of a prefetch of ``arr[idx...]`` with ``n_index`` indices."""

    def codegen(context, builder, signature, args):
        arrty = signature.args[0]
        ary = context.make_array(arrty)(context, builder, args[0])
        idx = [context.cast(builder, args[k], signature.args[k], types.intp) for k in range(1, n_index + 1)]
        ptr = cgutils.get_item_pointer(context, builder, arrty, ary, idx, wraparound=False)
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, _PREFETCH)
        # rw=0 (read), locality=3 (keep in all cache levels), cache type=1 (data)
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return codegen


@intrinsic
def prefetch(typingctx, arr, i, j):
    """Prefetch the cache line holding ``arr[i, j]`` (2-D array) for reading. A hint only."""
    return types.void(arr, i, j), _prefetch_codegen(2)


@intrinsic
def prefetch1(typingctx, arr, i):
    """Prefetch the cache line holding ``arr[i]`` (1-D array) for reading. A hint only."""
    return types.void(arr, i), _prefetch_codegen(1)
