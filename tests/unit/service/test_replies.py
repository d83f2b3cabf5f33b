"""A run's reply within the cap: each text once, rich outputs shed before text is cut."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from sandbox.policy import parse_policy
from sandbox.protocol import RichOutput, RunReply
from sandbox.run import RunOutcome
from service.replies import build_reply

CAP = 5_000
POLICY = parse_policy(
    f"""
[limits]
output_chars = 1000
reply_chars = {CAP}
"""
)


def _link(name: str) -> str:
    return f"https://files.example/{name}?sig=abc"


def _reply(**fields: Any) -> tuple[str, dict[str, Any]]:
    outcome = RunOutcome(reply=RunReply(run_id=1, status="ok", execution_count=3, **fields))
    reply = build_reply(outcome, "python", "session-1", POLICY, _link)
    body: dict[str, Any] = json.loads(reply.body)
    return reply.body, body


def _output(output_type: str = "display_data", **data: str) -> RichOutput:
    return RichOutput.model_validate({"output_type": output_type, "data": data})


def test_printed_text_is_sent_once_in_result() -> None:
    _, body = _reply(
        stdout="printed\n", value="42", outputs=[_output("execute_result", **{"text/plain": "42"})]
    )
    assert "stdout" not in body
    assert body["result"] == "printed\n42"
    assert body["outputs"] == [
        {"output_type": "execute_result", "data": {"text/plain": "42"}, "metadata": {}}
    ]
    assert body["truncated"] is False


def test_a_commands_stderr_is_sent_once_at_the_start_of_error() -> None:
    ok = RunOutcome(reply=RunReply(run_id=1, status="ok", stdout="out\n", stderr="warned\n"))
    failed = RunOutcome(
        reply=RunReply(run_id=2, status="error", stderr="no such file\n", error="exit code 1")
    )
    ok_body = json.loads(build_reply(ok, "command", "session-1", POLICY, _link).body)
    failed_body = json.loads(build_reply(failed, "command", "session-1", POLICY, _link).body)
    assert "stderr" not in ok_body
    assert "stderr" not in failed_body
    assert (ok_body["result"], ok_body["error"], ok_body["status"]) == ("out\n", "warned", "ok")
    assert failed_body["error"] == "no such file\nexit code 1"


def test_an_image_too_big_for_the_cap_is_left_out_and_linked() -> None:
    figure = RichOutput(
        output_type="display_data",
        data={"text/plain": "<Figure size 640x480 with 1 Axes>", "image/png": "A" * 20_000},
        metadata={"filename": "figure-3.png"},
    )
    text, body = _reply(stdout="done\n", outputs=[figure])
    assert len(text) <= CAP
    [output] = body["outputs"]
    assert output["data"] == {"text/plain": "<Figure size 640x480 with 1 Axes>"}
    assert output["metadata"]["url"] == _link("figure-3.png")
    assert body["result"] == "done\n"
    assert body["truncated"] is True


def test_an_image_that_fits_is_kept() -> None:
    figure = _output(**{"text/plain": "<Figure>", "image/png": "A" * 1_000})
    _, body = _reply(outputs=[figure])
    assert body["outputs"][0]["data"]["image/png"] == "A" * 1_000
    assert body["truncated"] is False


def test_big_html_goes_before_any_text_is_cut() -> None:
    frame = _output("execute_result", **{"text/plain": "t" * 600, "text/html": "<td>" * 2_000})
    _, body = _reply(stdout="s" * 600, value="t" * 600, outputs=[frame])
    [output] = body["outputs"]
    assert output["data"] == {"text/plain": "t" * 600}
    assert body["result"] == "s" * 600 + "\n" + "t" * 600
    assert body["truncated"] is True


def test_images_go_before_html() -> None:
    outputs = [
        _output(**{"text/plain": "a", "text/html": "h" * 1_500}),
        _output(**{"text/plain": "b", "image/png": "A" * 2_000}),
    ]
    _, body = _reply(outputs=outputs)
    assert [set(o["data"]) for o in body["outputs"]] == [
        {"text/plain", "text/html"},
        {"text/plain"},
    ]


def test_thousands_of_outputs_still_fit_and_say_they_were_cut() -> None:
    text, body = _reply(outputs=[_output(**{"text/plain": str(i)}) for i in range(3_000)])
    assert len(text) <= CAP
    assert 0 < len(body["outputs"]) < 3_000
    assert body["truncated"] is True


_TEXT = st.text(st.characters(codec="utf-8"), max_size=3_000)
_DATA = st.dictionaries(
    st.sampled_from(["text/plain", "text/html", "image/png", "text/markdown", "x/y"]),
    _TEXT,
    max_size=4,
)
_OUTPUTS = st.lists(
    st.builds(
        lambda data, filename: RichOutput(
            output_type="display_data",
            data=data,
            metadata={"filename": filename} if filename else {},
        ),
        _DATA,
        st.one_of(st.none(), st.text(max_size=300)),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(stdout=_TEXT, stderr=_TEXT, value=st.one_of(st.none(), _TEXT), outputs=_OUTPUTS)
def test_no_reply_exceeds_the_cap_whatever_the_outputs(
    stdout: str, stderr: str, value: str | None, outputs: list[RichOutput]
) -> None:
    text, body = _reply(stdout=stdout, stderr=stderr, value=value, outputs=outputs)
    assert len(text) <= CAP
    assert all("text/plain" in output["data"] for output in body["outputs"])


def test_a_plain_value_sent_once_by_the_worker_is_its_execute_result_in_place() -> None:
    shown = _output("display_data", **{"text/plain": "1"})
    figure = _output("display_data", **{"text/plain": "<Figure>"})
    _, body = _reply(value="42", value_at=1, outputs=[shown, figure])
    assert [(o["output_type"], o["data"]["text/plain"]) for o in body["outputs"]] == [
        ("display_data", "1"),
        ("execute_result", "42"),
        ("display_data", "<Figure>"),
    ]
    assert body["result"] == "42"


def test_a_link_a_session_writes_in_metadata_is_not_passed_on_as_the_services() -> None:
    forged = RichOutput(
        output_type="display_data",
        data={"text/plain": "x"},
        metadata={"url": "https://elsewhere.example/f.png", "filename": "f.png", "width": 3},
    )
    _, body = _reply(outputs=[forged])
    (output,) = body["outputs"]
    # The file it names is linked by the service, signed; the session's link is gone.
    assert output["metadata"] == {"filename": "f.png", "width": 3, "url": _link("f.png")}
