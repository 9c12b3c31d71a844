"""The allocator tuning: applied on glibc, a no-op elsewhere, and never in the way of a start."""

import ctypes
import platform

from mcprt import allocator


def test_large_blocks_are_kept_on_glibc():
    tuned = allocator.keep_large_blocks()
    assert tuned == (platform.libc_ver()[0] == "glibc")
    if tuned:  # a block just under the threshold now comes from the heap, not from its own mmap
        libc = ctypes.CDLL(None)
        libc.malloc.restype = ctypes.c_void_p
        libc.malloc_usable_size.restype = ctypes.c_size_t
        libc.malloc_usable_size.argtypes = [ctypes.c_void_p]
        block = libc.malloc(allocator.MMAP_THRESHOLD // 2)
        try:
            # An mmapped chunk carries its flag (IS_MMAPPED, 0x2) in the size word just before it.
            size_word = ctypes.c_size_t.from_address(block - ctypes.sizeof(ctypes.c_size_t)).value
            assert not size_word & 0x2
        finally:
            libc.free(ctypes.c_void_p(block))
