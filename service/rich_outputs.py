"""A run's rich outputs within the room its reply has for them.

What goes first when a reply would pass its cap: binary data (a PNG is large, and its
file is in the workspace: ``metadata.url`` links it), then the other rich types (the
HTML of a large DataFrame), largest first.  Only then is text cut, ``text/plain``
with the rest of the reply's text (service/replies.py); and when even the outputs'
bare frames do not fit, the last outputs go whole.

Outputs come from the worker, so they are untrusted: their metadata is kept only when
it is small plain JSON.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pydantic import JsonValue

from sandbox.protocol import RichOutput
from sandbox.rich_display import BINARY_MIMES, MAX_METADATA_CHARS, PLAIN, output_size

FileLinker = Callable[[str], str | None]
# A figure's file name, as the worker writes it in the metadata.
FILENAME_KEY = "filename"
URL_KEY = "url"
MAX_FILENAME_CHARS = 4096


@dataclass
class OutputDraft:
    """One output being fitted: its data and metadata change as room runs out."""

    output_type: str
    data: dict[str, str]
    metadata: dict[str, JsonValue] = field(default_factory=dict)

    def size(self) -> int:
        return output_size(self.data, self.metadata)

    def frame_size(self) -> int:
        """Its size without the text of ``text/plain``: what cutting text cannot save."""
        return self.size() - len(self.data.get(PLAIN, ""))

    def fields(self) -> dict[str, object]:
        """The output's fields, for the reply to validate with its own (as an ``Output``)."""
        return {"output_type": self.output_type, "data": self.data, "metadata": self.metadata}


def drafts(outputs: Sequence[RichOutput], link: FileLinker) -> tuple[list[OutputDraft], bool]:
    """Drafts of the worker's outputs; whether metadata had to be dropped.

    A saved file whose data the worker already left out (too big for any reply) is
    linked here.
    """
    found: list[OutputDraft] = []
    cut = False
    for output in outputs:
        data = dict(output.data)
        data.setdefault(PLAIN, "")
        draft = OutputDraft(output.output_type, data, _small_metadata(output.metadata))
        cut = cut or (bool(output.metadata) and not draft.metadata)
        if not BINARY_MIMES & data.keys():
            _link_saved_file(draft, link)
        found.append(draft)
    return found, cut


def shed(items: list[OutputDraft], other_text: int, budget: int, link: FileLinker) -> bool:
    """Leave out rich data, then whole outputs, until they and ``other_text`` fit ``budget``.

    Changes ``items`` in place; says whether anything was left out.  ``text/plain`` is
    never touched here: cutting it is the reply's business, with its other text.
    """
    total = other_text + sum(item.size() for item in items)
    if total <= budget:
        return False
    cut = False
    candidates = sorted(
        ((item, mime) for item in items for mime in item.data if mime != PLAIN),
        key=lambda pair: (pair[1] not in BINARY_MIMES, -len(pair[0].data[pair[1]])),
    )
    for item, mime in candidates:
        if total <= budget:
            return cut
        before = item.size()
        del item.data[mime]
        if mime in BINARY_MIMES:
            _link_saved_file(item, link)
        total += item.size() - before
        cut = True
    # Left: text/plain and the frames around it.  Frames are not text: when they take
    # more than half the room, the last outputs go.
    frames = sum(item.frame_size() for item in items)
    while items and frames > budget // 2:
        frames -= items.pop().frame_size()
        cut = True
    return cut


def _link_saved_file(item: OutputDraft, link: FileLinker) -> None:
    name = item.metadata.get(FILENAME_KEY)
    if isinstance(name, str) and len(name) <= MAX_FILENAME_CHARS and URL_KEY not in item.metadata:
        url = link(name)
        if url is not None:
            item.metadata[URL_KEY] = url


def _small_metadata(metadata: dict[str, JsonValue]) -> dict[str, JsonValue]:
    if not metadata:
        return {}
    try:
        text = json.dumps(metadata, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        return {}
    if len(text) > MAX_METADATA_CHARS:
        return {}
    # ``url`` is the service's own signed link to a saved file: one a session wrote
    # would be shown to the client as the service's.
    return {key: value for key, value in metadata.items() if key != URL_KEY}


def plain_texts(items: list[OutputDraft]) -> dict[str, object]:
    """Each output's ``text/plain`` under a key of its own, for the reply's text fitting."""
    return {f"outputs[{index}]": item.data[PLAIN] for index, item in enumerate(items)}


def put_back(items: list[OutputDraft], texts: dict[str, object]) -> None:
    for index, item in enumerate(items):
        text = texts[f"outputs[{index}]"]
        assert isinstance(text, str)
        item.data[PLAIN] = text
