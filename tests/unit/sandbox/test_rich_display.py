"""An object as a Jupyter MIME bundle, and an output within its size."""

from __future__ import annotations

import base64
import json
from typing import Any

import pandas as pd

from sandbox.rich_display import bounded_output, mime_bundle, output_size


class Rich:
    def __repr__(self) -> str:
        return "Rich()"

    def _repr_html_(self) -> str:
        return "<b>rich</b>"

    def _repr_markdown_(self) -> str:
        return "**rich**"

    def _repr_json_(self) -> dict[str, int]:
        return {"a": 1}

    def _repr_png_(self) -> bytes:
        return b"\x89PNG fake"

    def _repr_latex_(self) -> str:
        return "$x$"


class BrokenHtml:
    def _repr_html_(self) -> str:
        raise ValueError("no html today")

    def _repr_markdown_(self) -> int:
        return 42  # not text: not markdown either

    def __repr__(self) -> str:
        return "BrokenHtml()"


class Bundled:
    def _repr_mimebundle_(self, include: object = None, exclude: object = None) -> Any:
        return {"text/plain": "bundled", "application/vnd.custom+json": {"k": [1]}}, {"x": 1}

    def _repr_html_(self) -> str:
        return "<p>also</p>"


class AnswersEveryName:
    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: "<made up>"

    def __repr__(self) -> str:
        return "AnswersEveryName()"


def test_text_plain_is_the_repr_and_each_repr_method_adds_its_type() -> None:
    data, _ = mime_bundle(Rich())
    assert data == {
        "text/plain": "Rich()",
        "text/html": "<b>rich</b>",
        "text/markdown": "**rich**",
        "image/png": base64.b64encode(b"\x89PNG fake").decode(),
        "text/latex": "$x$",
        "application/json": '{"a": 1}',
    }
    assert json.loads(data["application/json"]) == {"a": 1}


def test_a_failing_or_wrong_repr_method_is_left_out() -> None:
    data, _ = mime_bundle(BrokenHtml())
    assert data == {"text/plain": "BrokenHtml()"}


def test_a_mimebundle_comes_first_and_the_repr_methods_fill_in() -> None:
    data, metadata = mime_bundle(Bundled())
    assert data == {
        "text/plain": "bundled",
        "application/vnd.custom+json": '{"k": [1]}',
        "text/html": "<p>also</p>",
    }
    assert metadata == {"x": 1}


def test_an_object_that_answers_every_name_has_only_its_repr() -> None:
    assert mime_bundle(AnswersEveryName())[0] == {"text/plain": "AnswersEveryName()"}


def test_a_class_is_shown_by_its_repr_not_its_unbound_methods() -> None:
    assert mime_bundle(pd.DataFrame)[0] == {"text/plain": repr(pd.DataFrame)}


def test_a_dataframe_gives_html_and_text() -> None:
    data, _ = mime_bundle(pd.DataFrame({"a": [1, 2]}))
    assert set(data) == {"text/plain", "text/html"}
    assert "<table" in data["text/html"]


def test_a_huge_repr_keeps_head_and_tail_and_is_marked_cut() -> None:
    output, _, cut = bounded_output("execute_result", {"text/plain": "x" * 100_000}, {}, 500, 5_000)
    assert cut
    assert len(output.data["text/plain"]) <= 500
    assert "characters omitted" in output.data["text/plain"]


def test_an_output_over_its_cap_loses_binary_data_first_then_the_largest_text() -> None:
    data = {
        "text/plain": "t",
        "image/png": "A" * 3_000,
        "text/html": "h" * 2_000,
        "text/markdown": "m" * 500,
    }
    output, _, cut = bounded_output("display_data", data, {}, 100, 2_700)
    assert cut
    assert set(output.data) == {"text/plain", "text/html", "text/markdown"}
    output, _, _ = bounded_output("display_data", data, {}, 100, 1_000)
    assert set(output.data) == {"text/plain", "text/markdown"}
    assert output_size(output.data, output.metadata) <= 1_000


def test_lone_surrogates_and_unserialisable_metadata_cannot_break_the_frame() -> None:
    output, _, cut = bounded_output(
        "display_data", {"text/plain": "\udcff", "text/html": "\ud800"}, {"k": object()}, 100, 1_000
    )
    assert output.data == {"text/plain": "\\udcff", "text/html": "\\ud800"}
    assert output.metadata == {}
    assert cut
    output.model_dump_json()  # encodes
