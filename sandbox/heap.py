"""Fill the interpreter's free small-object slots before forking, so forks stay shared.

CPython's allocator (pymalloc) puts a new small object in a free slot of a pool that
is already in use.  After ``gc.collect()`` in the zygote those free slots are scattered
over many pools, each on pages every worker shares: a worker's first allocations would
then write to (and so copy) a page per slot it takes.  Filling every free slot, and
every free pool of the arenas already mapped, leaves a worker only fresh pools to
allocate from, which it writes densely.  The fillers stay alive for the zygote's life;
they occupy memory the zygote had already paid for.
"""

from __future__ import annotations

import os
import re
import sys

# A bytes object of length n takes 33 + n bytes (header, then data and its NUL).
_BYTES_OVERHEAD = sys.getsizeof(b"")
_ROW = re.compile(rb"^\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s*$", re.MULTILINE)
_ARENAS = re.compile(rb"# arenas allocated current\s*=\s*([\d,]+)")
_LARGEST_SMALL = 512
_BATCH = 256
_MAX_BATCHES = 64  # 8 MiB at most: an arena is 1 MiB

_fillers: list[object] = []


def _allocator_statistics() -> bytes:
    """What sys._debugmallocstats() prints, which goes to the C-level stderr."""
    saved = os.dup(2)
    capture = os.memfd_create("mallocstats")
    try:
        os.dup2(capture, 2)
        sys._debugmallocstats()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    try:
        size = os.fstat(capture).st_size
        return os.pread(capture, size, 0)
    finally:
        os.close(capture)


def _filler(size: int) -> object:
    """A new object of ``size`` bytes or fewer, in pymalloc's size class of ``size``."""
    if size > _BYTES_OVERHEAD:
        return bytes(size - _BYTES_OVERHEAD)  # a new zeroed object (only b"" is cached)
    return float(size)  # 24 bytes: the 32-byte class


def pack() -> int:
    """Fill free slots and free pools; return how many filler objects were made."""
    if not hasattr(sys, "_debugmallocstats"):
        return 0  # not CPython: nothing to read the allocator's state from
    statistics = _allocator_statistics()
    made = 0
    for row in _ROW.finditer(statistics):
        size, available = int(row.group(2)), int(row.group(5))
        if size < sys.getsizeof(0.0):
            continue  # nothing worth making fits the 16-byte class
        _fillers.extend(_filler(size) for _ in range(available))
        made += available
    # Free pools in arenas already mapped: take them until the allocator maps a new arena.
    arenas = _ARENAS.search(statistics)
    if arenas is None:
        return made
    start = int(arenas.group(1).replace(b",", b""))
    for _ in range(_MAX_BATCHES):
        _fillers.extend(_filler(_LARGEST_SMALL) for _ in range(_BATCH))
        made += _BATCH
        now = _ARENAS.search(_allocator_statistics())
        if now is None or int(now.group(1).replace(b",", b"")) > start:
            break
    return made
