"""Fork the zygote without CPython's after-fork repair, which copies shared pages.

``os.fork()`` re-initialises the interpreter's locks and thread table in the child,
then calls every after-fork hook that imported modules registered: ``threading``
rebuilds its thread table, ``logging`` and ``concurrent.futures`` make new locks,
``random`` reseeds.  That repair is for a process that forked while another thread
held a lock.  The zygote has one thread, and so has the intermediate process it forks,
so there is nothing to repair; but the hooks' Python code touches objects spread over
the pages a fork shares with the zygote, and each touched page is copied into the
worker's private memory (figures: docs/decisions.md).

``fork()`` therefore calls libc's fork directly, holding the GIL, when the calling
process has a single thread, and falls back to ``os.fork()`` otherwise.  What the
hooks did that still matters is done by ``prepare_worker()``, which a worker calls
before it runs user code: a new seed for ``random`` and for NumPy's global generator
(which ``os.fork()`` did not reseed either, so every session drew the same numbers),
and the hooks that the preload modules registered, less their lock re-inits.

NumPy's own ``seed()`` runs enough of NumPy to copy many shared pages, so the worker
writes fresh key words straight into the generator's state instead, through the
address NumPy publishes (``BitGenerator.ctypes.state_address``).  The zygote first
checks, on a scratch generator, that the state NumPy's API sets reads back from that
address as the key words and the position; if not, or if the global generator holds a
spare Gaussian, the worker calls ``seed()``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import sys
from collections.abc import Callable, Iterator

# PyDLL: the call keeps the GIL, so the child starts holding it, as with os.fork().
_libc_fork = ctypes.PyDLL(None, use_errno=True).fork
_libc_fork.argtypes = []
_libc_fork.restype = ctypes.c_int

_preload_child_hooks: list[Callable[[], object]] = []

# MT19937's state: 624 key words, then the position of the next one to use; at 624
# the next draw regenerates the whole key.
_MT19937_WORDS = 624
_MT19937_KEY_BYTES = _MT19937_WORDS * 4
_MT19937_POSITION_END = _MT19937_WORDS.to_bytes(4, sys.byteorder)
_numpy_state_address: int | None = None


def _single_threaded() -> bool:
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False  # no /proc to ask: assume the worst


def fork() -> int:
    """Like ``os.fork()``: 0 in the child, the child's pid in the parent."""
    if not _single_threaded():
        return os.fork()
    pid = int(_libc_fork())
    if pid < 0:
        error = ctypes.get_errno()
        raise OSError(error, f"fork: {os.strerror(error)}")
    return pid


@contextlib.contextmanager
def recording_child_hooks() -> Iterator[None]:
    """Keep the after-fork child hooks that modules imported in this block register.

    They are still registered as usual, for ``os.fork()``.
    """
    register = os.register_at_fork

    def record(**hooks: Callable[[], object]) -> None:
        child_hook = hooks.get("after_in_child")
        # A lock's re-init repairs what only another thread could have left locked.
        if child_hook is not None and getattr(child_hook, "__name__", "") != "_at_fork_reinit":
            _preload_child_hooks.append(child_hook)
        register(**hooks)

    os.register_at_fork = record  # type: ignore[assignment]
    try:
        yield
    finally:
        os.register_at_fork = register


def locate_numpy_state() -> None:
    """In the zygote, after the preload: find NumPy's global generator state, if loaded."""
    global _numpy_state_address  # set once, before any fork
    mtrand = sys.modules.get("numpy.random.mtrand")
    if mtrand is None:
        return
    import numpy

    generator = mtrand._rand  # the RandomState behind numpy.random.rand() and friends
    bit_generator = generator._bit_generator
    if not isinstance(bit_generator, numpy.random.MT19937) or generator.get_state()[3]:
        return
    key = numpy.arange(1, _MT19937_WORDS + 1, dtype=numpy.uint32)
    probe = numpy.random.MT19937(0)
    probe.state = {"bit_generator": "MT19937", "state": {"key": key, "pos": 17}}
    layout = ctypes.string_at(probe.ctypes.state_address, _MT19937_KEY_BYTES + 4)
    if layout == key.tobytes() + (17).to_bytes(4, sys.byteorder):
        _numpy_state_address = bit_generator.ctypes.state_address


def prepare_worker() -> None:
    """In a worker made by ``fork()``: what the skipped after-fork hooks did for it."""
    random.seed()
    if _numpy_state_address is not None:
        fresh = os.urandom(_MT19937_KEY_BYTES) + _MT19937_POSITION_END
        ctypes.memmove(_numpy_state_address, fresh, len(fresh))
    elif (numpy_random := sys.modules.get("numpy.random")) is not None:
        numpy_random.seed()
    for hook in _preload_child_hooks:
        hook()
