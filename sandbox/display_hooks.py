"""``IPython.display`` and ``plt.show()`` lead to the session's display.

Without a running IPython shell, ``IPython.display.display`` prints the objects'
reprs, and Agg's ``plt.show()`` does nothing.  Both modules are patched the moment
they are first imported (a finder on ``sys.meta_path`` wraps their loader), or at once
if they already are: nothing here imports either, so a cell that never does pays
nothing, and IPython needs no shell of its own.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sandbox.display import Display

# The display of the session whose run is going on (a worker has one session).
_active: Display | None = None


def display(*objs: object, **kwargs: Any) -> None:
    """``IPython.display.display``, for the running cell."""
    if _active is None:
        print(*objs)  # what IPython does with no shell to publish to
        return
    _active.display(*objs, **kwargs)


def publish_display_data(data: object, metadata: object = None, *args: Any, **kwargs: Any) -> None:
    """``IPython.display.publish_display_data``, for the running cell."""
    if _active is not None:
        _active.display(data, metadata=metadata, raw=True)


def show(*args: Any, **kwargs: Any) -> None:
    """``matplotlib.pyplot.show``: the open figures, shown and closed, as the inline backend."""
    if _active is not None:
        _active.show_open_figures()


def _patch_ipython(_: ModuleType) -> None:
    # display_functions defines them; the others copied them if they were imported first.
    for name in ("IPython.core.display_functions", "IPython.core.display", "IPython.display"):
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "display"):
            module.display = display  # type: ignore[attr-defined]
            module.publish_display_data = publish_display_data  # type: ignore[attr-defined]


def _patch_pyplot(module: ModuleType) -> None:
    module.show = show  # type: ignore[attr-defined]


PATCHES: dict[str, Callable[[ModuleType], None]] = {
    "IPython.core.display_functions": _patch_ipython,
    "matplotlib.pyplot": _patch_pyplot,
}


class _PatchingLoader(importlib.abc.Loader):
    """The module's own loader, then the patch, before anyone can import a name from it."""

    def __init__(self, loader: importlib.abc.Loader, patch: Callable[[ModuleType], None]) -> None:
        self._loader = loader
        self._patch = patch

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        self._patch(module)

    def __getattr__(self, name: str) -> Any:  # get_source, is_package, ...: the real loader's
        return getattr(self._loader, name)


class _PatchOnImport(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        patch = PATCHES.get(fullname)
        if patch is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None  # found some other way: left to the other finders, unpatched
        spec.loader = _PatchingLoader(spec.loader, patch)
        return spec


def install(active: Display) -> None:
    """Make ``active`` the display the patched functions lead to; patch what is loaded."""
    global _active
    _active = active
    if sys.meta_path and type(sys.meta_path[0]) is _PatchOnImport:
        return  # where it was put, and loaded modules were patched then
    if not any(isinstance(finder, _PatchOnImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _PatchOnImport())
        for name, patch in PATCHES.items():
            module = sys.modules.get(name)
            if module is not None:
                patch(module)
