"""The zygote imports what ``python.preload`` names, and no more of the toolbox.

A preloaded module may import an optional library because it is installed: pandas
imports pyarrow as it imports itself, to pick its string storage and its Arrow
features.  With the toolbox in the image, every session's zygote would then carry
pyarrow, whether or not the policy asked for it.  While the zygote preloads and warms
up, the toolbox's modules (``TOOLBOX_MODULES``) that the policy does not preload are
reported missing; afterwards every session imports them as usual, when it needs them.

What that costs: pandas was imported believing pyarrow absent, so ``to_parquet`` and
``read_parquet`` work (pandas imports pyarrow when they run) but its Arrow-backed dtypes
(``dtype_backend="pyarrow"``, ``pd.ArrowDtype``) say pyarrow is missing.  A policy
that wants them lists ``pyarrow`` in ``python.preload``.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import sys
from collections.abc import Iterator, Sequence
from types import ModuleType

from sandbox.policy.tables import TOOLBOX_MODULES


class _KeepOut(importlib.abc.MetaPathFinder):
    def __init__(self, names: frozenset[str]) -> None:
        self.names = names

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname.partition(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None


@contextlib.contextmanager
def toolbox_kept_out(preload: Sequence[str]) -> Iterator[None]:
    """Within the block, the toolbox's modules but those in ``preload`` cannot be imported."""
    wanted = {name.partition(".")[0] for name in preload}
    finder = _KeepOut(TOOLBOX_MODULES - wanted)
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
