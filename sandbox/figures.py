"""Matplotlib figures as a cell shows them: a PNG in the workspace and in the outputs.

What Jupyter's inline backend does: ``plt.show()`` shows every open figure, the figures
still open when the cell ends are shown then, and a figure once shown is closed, so no
figure is shown twice.  Nothing here imports matplotlib: a cell that never did pays
nothing.
"""

from __future__ import annotations

import io
import sys
from typing import Any


def is_figure(obj: object) -> bool:
    module = sys.modules.get("matplotlib.figure")
    return module is not None and isinstance(obj, module.Figure)


def open_figures() -> list[Any]:
    """pyplot's open figures, in the order they were made."""
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is None:
        return []
    return [pyplot.figure(number) for number in pyplot.get_fignums()]


def render_png(figure: Any) -> bytes:
    """The figure as the PNG it is saved as (the user's artists draw: it may raise)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def close(figure: Any) -> None:
    """Forget the figure in pyplot (it may still be drawn again by its owner)."""
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close(figure)


def file_name(execution_count: int, index: int, alone: bool) -> str:
    """``figure-3.png`` for a cell's only figure, ``figure-3-2.png`` for its second."""
    return f"figure-{execution_count}.png" if alone else f"figure-{execution_count}-{index}.png"
