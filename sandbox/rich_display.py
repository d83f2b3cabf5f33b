"""An object as a Jupyter MIME bundle, and an output kept within a size.

What IPython's display formatter does, without IPython: ``text/plain`` is the repr,
``_repr_mimebundle_`` and the ``_repr_*_`` methods add the other types.  These methods
are the user's code: one that raises (or returns something that is not its type) is
left out, and the cell goes on.  Only the repr is the cell's own: when it fails, the
cell fails, as it always did.

Every output is bounded before it is kept, as a stream is: ``text/plain`` keeps its
head and tail, and other types, which a cut would break (half an HTML table, a PNG),
are left out whole, binary ones first.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Literal

from pydantic import JsonValue

from sandbox.output import truncate_output
from sandbox.protocol import RichOutput, escape_surrogates

OutputType = Literal["execute_result", "display_data"]
Data = dict[str, str]
Metadata = dict[str, JsonValue]

PLAIN = "text/plain"
# Base64 in ``data``, as nbformat stores them; dropped first when an output is too big.
BINARY_MIMES = frozenset({"image/png", "image/jpeg", "image/gif", "application/pdf"})
# The ``_repr_*_`` methods IPython's formatter calls, and the type each one gives.
REPR_METHODS = (
    ("text/html", "_repr_html_"),
    ("text/markdown", "_repr_markdown_"),
    ("image/svg+xml", "_repr_svg_"),
    ("image/png", "_repr_png_"),
    ("image/jpeg", "_repr_jpeg_"),
    ("text/latex", "_repr_latex_"),
    ("application/json", "_repr_json_"),
)
# A bundle names a handful of types; a hostile one could name a million.
MAX_MIME_TYPES = 16
MAX_MIME_NAME_CHARS = 100
# Types that can have no _repr_*_ method (their classes take no attributes): shown by
# their repr alone, without asking for a dozen methods, in every cell that ends in one.
PLAIN_TYPES = frozenset({int, float, complex, bool, str, bytes, list, tuple, dict, set, range})
# Metadata says how to show data (width, height, a file name), never carries it.
MAX_METADATA_CHARS = 2_000


def mime_bundle(obj: object) -> tuple[Data, Metadata]:
    """``obj`` as Jupyter shows it: ``text/plain`` (its repr) and what its methods add.

    The repr's exception is the caller's to handle; the other methods' are swallowed.
    """
    if type(obj) in PLAIN_TYPES:
        return {PLAIN: repr(obj)}, {}
    data: Data = {}
    metadata: Metadata = {}
    bundle = _call(_real_method(obj, "_repr_mimebundle_"), include=None, exclude=None)
    if isinstance(bundle, tuple) and len(bundle) == 2:
        bundle, extra = bundle
        if isinstance(extra, dict):
            metadata.update(extra)
    if isinstance(bundle, dict):
        for mime, value in list(bundle.items())[:MAX_MIME_TYPES]:
            text = _as_text(mime, value)
            if isinstance(mime, str) and len(mime) <= MAX_MIME_NAME_CHARS and text is not None:
                data[mime] = text
    for mime, name in REPR_METHODS:
        if mime in data:
            continue
        value = _call(_real_method(obj, name))
        if isinstance(value, tuple) and len(value) == 2:
            value, extra = value
            if isinstance(extra, dict):
                metadata[mime] = extra
        text = _as_text(mime, value)
        if text is not None:
            data[mime] = text
    if PLAIN not in data:
        data[PLAIN] = repr(obj)
    return {PLAIN: data.pop(PLAIN), **data}, metadata


def raw_bundle(bundle: object, metadata: object = None) -> tuple[Data, Metadata]:
    """A bundle given as it is (``display(..., raw=True)``, ``publish_display_data``)."""
    data: Data = {}
    if isinstance(bundle, dict):
        for mime, value in list(bundle.items())[:MAX_MIME_TYPES]:
            text = _as_text(mime, value)
            if isinstance(mime, str) and len(mime) <= MAX_MIME_NAME_CHARS and text is not None:
                data[mime] = text
    if PLAIN not in data:
        data[PLAIN] = "" if isinstance(bundle, dict) else repr(bundle)
    return data, dict(metadata) if isinstance(metadata, dict) else {}


def _real_method(obj: object, name: str) -> Callable[..., object] | None:
    """``obj``'s method ``name``, unless ``obj`` is a class or answers for every name.

    A class's ``_repr_html_`` is an unbound function, and an object whose
    ``__getattr__`` makes up attributes (a mock, a proxy) has none of these for real:
    IPython asks for a name nobody defines to tell them apart.
    """
    if isinstance(obj, type):
        return None
    try:
        if getattr(obj, "_ipython_canary_method_should_not_exist_", None) is not None:
            return None
        method = getattr(obj, name, None)
    except Exception:  # noqa: BLE001 - a property that raises is a method that is not there
        return None
    return method if callable(method) else None


def _call(method: Callable[..., object] | None, **kwargs: object) -> object:
    if method is None:
        return None
    try:
        return method(**kwargs)
    except Exception:  # noqa: BLE001 - a failing _repr_*_ is skipped, never the cell's end
        return None


def _as_text(mime: object, value: object) -> str | None:
    """The value a method gave for ``mime``, as ``data`` holds it; None if it is not one."""
    if value is None or not isinstance(mime, str):
        return None
    if mime in BINARY_MIMES:
        if isinstance(value, bytes | bytearray | memoryview):
            return base64.b64encode(value).decode("ascii")
        return value if isinstance(value, str) else None
    if mime == "application/json" or mime.endswith("+json"):
        if isinstance(value, str):
            return value
        try:
            return json.dumps(value, allow_nan=False)
        except (TypeError, ValueError, RecursionError):
            return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def json_size(text: str) -> int:
    """Characters ``text`` takes in a JSON body (quotes and escapes included)."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return len(text) + 2
    return len(json.dumps(text, ensure_ascii=False))


_FRAME_CHARS = len('{"output_type":"execute_result","data":{},"metadata":}')


def output_size(data: Data, metadata: Metadata) -> int:
    """Characters an output with this data and metadata takes in a JSON body."""
    overhead = _FRAME_CHARS
    items = sum(json_size(mime) + json_size(text) + 2 for mime, text in data.items())
    shown = json.dumps(metadata, ensure_ascii=False) if metadata else "{}"
    return overhead + items + len(shown)


def bounded_output(
    output_type: OutputType, data: Data, metadata: Metadata, text_chars: int, output_chars: int
) -> tuple[RichOutput, int, bool]:
    """The output, ``text/plain`` cut to ``text_chars`` and the whole to ``output_chars``.

    Also its size (``output_size``) and whether anything was cut.  Every text is made
    encodable (a repr may hold a lone surrogate); metadata that is not small JSON is
    dropped.
    """
    plain, cut = truncate_output(data.get(PLAIN, ""), text_chars)
    plain = escape_surrogates(plain)
    if len(plain) > text_chars:
        plain, cut = truncate_output(plain, text_chars)[0], True
    kept = {PLAIN: plain}
    for mime, text in data.items():
        if mime != PLAIN:
            kept[escape_surrogates(mime)] = escape_surrogates(text)
    clean = _small_json(metadata)
    cut = cut or (bool(metadata) and not clean)
    size = output_size(kept, clean)
    if size > output_chars:
        # Largest first, binary before text: the fewest, and the least readable, go.
        droppable = sorted(
            (mime for mime in kept if mime != PLAIN),
            key=lambda mime: (mime not in BINARY_MIMES, -len(kept[mime])),
        )
        for mime in droppable:
            if size <= output_chars:
                break
            size -= json_size(mime) + json_size(kept.pop(mime)) + 2
            cut = True
    for _ in range(4):
        if size <= output_chars or not kept[PLAIN]:
            break
        # Escapes (a control character is six in JSON) made the text too big: cut it in
        # proportion to what it takes in JSON.
        text = kept[PLAIN]
        room = output_chars - (size - json_size(text))
        kept[PLAIN] = truncate_output(text, max(room * len(text) // json_size(text), 0))[0]
        size = output_size(kept, clean)
        cut = True
    return RichOutput(output_type=output_type, data=kept, metadata=clean), size, cut


def _small_json(metadata: Metadata) -> Metadata:
    if not metadata:
        return {}
    try:
        text = json.dumps(metadata, allow_nan=False, ensure_ascii=False)
        text.encode("utf-8")  # a lone surrogate cannot travel
    except (TypeError, ValueError, RecursionError):
        return {}
    if len(text) > MAX_METADATA_CHARS:
        return {}
    kept: Metadata = json.loads(text)  # plain JSON values, whatever the user's types were
    return kept
