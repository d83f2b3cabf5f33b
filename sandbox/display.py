"""``display()`` in every cell, and the cell's value and figures, as Jupyter outputs.

A session's ``Display`` turns what a run shows into outputs, bounded as they are made,
and hands each to the session's ``emit``.  ``display`` is a builtin (put into the
builtins module, as IPython does): a cell that deletes or rebinds it loses it for
itself, and the next cell has it again.
``IPython.display.display`` and ``plt.show()`` lead here too (sandbox/display_hooks.py).
"""

from __future__ import annotations

import base64
import builtins
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sandbox import display_hooks, figures
from sandbox.protocol import RichOutput
from sandbox.rich_display import (
    PLAIN,
    PLAIN_TYPES,
    Data,
    Metadata,
    OutputType,
    bounded_output,
    mime_bundle,
    raw_bundle,
)

# Below this much room, an output would be little more than its omission marker.
MIN_OUTPUT_CHARS = 200


@dataclass(frozen=True)
class DisplayLimits:
    """How much of a run's outputs a worker holds (the policy's caps, by default its own)."""

    text_chars: int = 20_000  # text/plain of one output: limits.output_chars
    output_chars: int = 60_000  # one whole output: limits.reply_chars
    run_chars: int = 120_000  # all of one run's outputs

    @classmethod
    def for_reply(cls, output_chars: int, reply_chars: int) -> DisplayLimits:
        # Twice a reply: the service, not the order they came in, chooses what is left
        # out (pictures before text), and the frame stays far below its cap.
        return cls(output_chars, reply_chars, 2 * reply_chars)


class Display:
    """What one session's runs show, as outputs handed to ``emit``."""

    def __init__(self, emit: Callable[[RichOutput], None], limits: DisplayLimits) -> None:
        self._emit = emit
        self._limits = limits
        self._builtin = self.display  # one bound method: builtins holds this very object
        self._execution_count = 0
        self._held = 0
        self._figures_shown = 0
        self.cut = False  # something this run showed was cut or left out

    # -- a run --------------------------------------------------------------------------

    def begin_run(self, execution_count: int) -> None:
        self._execution_count = execution_count
        self._held = 0
        self._figures_shown = 0
        self.cut = False
        display_hooks.install(self)
        # Put back only if a cell took it away, and never taken out between runs: each
        # key added to or removed from the builtins dict voids every function's cached
        # builtin lookups, which made every later run of the worker slower.
        if builtins.__dict__.get("display") is not self._builtin:
            builtins.display = self._builtin  # type: ignore[attr-defined]

    # -- what user code calls -----------------------------------------------------------

    def display(
        self,
        *objs: object,
        include: object = None,
        exclude: object = None,
        metadata: object = None,
        raw: bool = False,
        **ignored: object,  # display_id, transient, clear: there is no page to update
    ) -> None:
        """Show each object as Jupyter's ``display`` does, after the output so far."""
        for obj in objs:
            if raw:
                self._publish("display_data", *raw_bundle(obj, metadata))
            elif figures.is_figure(obj):
                self.show_figure(obj)
            else:
                data, extra = mime_bundle(obj)
                if isinstance(metadata, dict):
                    extra.update(metadata)
                self._publish("display_data", data, extra)

    def plain_result(self, value: object) -> str | None:
        """A plain value's short repr, which needs no output of its own; else None.

        Most cells end in a number, a string or a small list: the reply carries its text
        once, as ``value``, and says where its ``execute_result`` goes (``value_at``).
        """
        if type(value) not in PLAIN_TYPES:
            return None
        text = repr(value)
        return text if len(text) <= self._limits.text_chars and text.isascii() else None

    def show_result(self, value: object) -> str:
        """Show a cell's value as its ``execute_result``; its ``text/plain``, uncut."""
        if figures.is_figure(value):
            return self.show_figure(value, "execute_result")
        data, metadata = mime_bundle(value)
        self._publish("execute_result", data, metadata)
        return data[PLAIN]

    def show_open_figures(self) -> None:
        """Show every figure pyplot holds open, and close them (``plt.show()``, a cell's end)."""
        shown = figures.open_figures()
        for figure in shown:
            self.show_figure(figure, batch=len(shown))

    def show_figure(
        self, figure: Any, output_type: OutputType = "display_data", batch: int = 1
    ) -> str:
        """Save the figure in the workspace and show it as a PNG; its ``text/plain``."""
        text = repr(figure)
        data: Data = {PLAIN: text}
        metadata: Metadata = {}
        self._figures_shown += 1
        index = self._figures_shown
        name = figures.file_name(self._execution_count, index, alone=index == 1 and batch == 1)
        try:
            png = figures.render_png(figure)
            with open(name, "wb") as saved:
                saved.write(png)
        except Exception as exc:  # noqa: BLE001 - a broken figure must not lose the reply
            print(f"could not save figure {index}: {exc}", file=sys.stderr)
        else:
            data["image/png"] = base64.b64encode(png).decode("ascii")
            metadata["filename"] = name
        figures.close(figure)
        self._publish(output_type, data, metadata)
        return text

    # -- bounds -------------------------------------------------------------------------

    def _publish(self, output_type: OutputType, data: Data, metadata: Metadata) -> None:
        limits = self._limits
        output, size, cut = bounded_output(
            output_type, data, metadata, limits.text_chars, limits.output_chars
        )
        room = limits.run_chars - self._held
        if size > room:
            # The run has shown nearly its share: what is left is the text, in the room left.
            cut = True
            output, size, _ = bounded_output(
                output_type, {PLAIN: output.data[PLAIN]}, {}, limits.text_chars, room
            )
            if size > room or room < MIN_OUTPUT_CHARS:
                self.cut = True
                return
        self._held += size
        self.cut = self.cut or cut
        self._emit(output)
