"""Turn a sandbox outcome into the reply a client reads, within the reply cap.

Truncation happens first, the suggestion after, so the suggestion can tell the
caller that output was cut.
"""

from __future__ import annotations

import mimetypes
from dataclasses import dataclass

from fastapi import Response
from starlette.types import Message

from sandbox import Policy, RunOutcome
from sandbox.output import truncate_output
from sandbox.rich_display import PLAIN
from service import rich_outputs
from service.schemas import CommandResponse, FileInfo, ReplResponse
from service.suggestions import Outcome, suggest

# JSON escaping can grow text (a control character becomes \u0000: six times); this
# headroom keeps the encoded body under the cap in all but adversarial cases, which
# ``fit_reply`` then shrinks further.
_ESCAPE_HEADROOM = 0.9
# At most this share of the reply cap lists the changed files; the texts keep the rest.
_FILES_SHARE = 0.25

FileLinker = rich_outputs.FileLinker


def _files(outcome: RunOutcome, link: FileLinker) -> list[FileInfo]:
    return [
        FileInfo(
            name=changed.name,
            size=changed.size,
            mime=mimetypes.guess_type(changed.name)[0] or "application/octet-stream",
            url=link(changed.name),
        )
        for changed in outcome.reply.files[:100]
    ]


def _files_within(files: list[FileInfo], room: int) -> tuple[list[FileInfo], int]:
    """The first files whose entries fit in ``room`` characters, and their size.

    Names are the user's: a run can make a hundred files with paths of 4000
    characters, and their names and links alone were 40 times the reply cap.
    """
    kept: list[FileInfo] = []
    used = 2  # the list's brackets
    for entry in files:
        size = len(entry.model_dump_json()) + 1
        if used + size > room:
            break
        kept.append(entry)
        used += size
    return kept, used


def _result_text(outcome: RunOutcome) -> str:
    reply = outcome.reply
    if reply.value is None:
        return reply.stdout
    if reply.stdout and not reply.stdout.endswith("\n"):
        return reply.stdout + "\n" + reply.value
    return reply.stdout + reply.value


def _error_text(outcome: RunOutcome, kind: str) -> str | None:
    reply = outcome.reply
    if kind == "command":
        # A command's reply has no stderr field: its stderr is the start of ``error``,
        # what a model reads of a failing command first.
        parts = [part.rstrip("\n") for part in (reply.stderr, reply.error or "") if part]
        return "\n".join(parts) or None
    return reply.error


def _outcome_for_rules(
    outcome: RunOutcome, kind: str, truncated: bool, linked_outputs: bool
) -> Outcome:
    reply = outcome.reply
    return Outcome(
        kind=kind,
        status=reply.status,
        exc_type=reply.exc_type,
        error=reply.error,
        limit=reply.limit or outcome.limit,
        denied_rule=reply.denied_rule,
        truncated=truncated,
        restarted=outcome.restarted or outcome.since_restart,
        exit_code=reply.exit_code,
        hint=reply.hint,
        outputs_linked=linked_outputs,
    )


@dataclass(frozen=True)
class Reply:
    model: ReplResponse | CommandResponse
    body: str  # the JSON the client receives, as measured against the cap

    def response(self) -> Response:
        # Sent as it was measured: FastAPI would validate and encode the model again.
        return Response(self.body, media_type="application/json")

    def asgi_messages(self) -> tuple[Message, Message]:
        """The response as the two ASGI messages that send it: what ``response`` sends."""
        body = self.body.encode()
        headers = [
            (b"content-length", str(len(body)).encode()),
            (b"content-type", b"application/json"),
        ]
        return (
            {"type": "http.response.start", "status": 200, "headers": headers},
            {"type": "http.response.body", "body": body},
        )


def build_reply(
    outcome: RunOutcome, kind: str, session_id: str, policy: Policy, link: FileLinker
) -> Reply:
    cap = policy.limits.reply_chars
    files, files_size = _files_within(_files(outcome, link), int(cap * _FILES_SHARE))
    budget = int(cap * _ESCAPE_HEADROOM) - 2_000 - files_size
    while True:
        built = _build(outcome, kind, session_id, policy, files, budget, link)
        body = built.model_dump_json()
        if len(body) <= cap or budget <= 0:
            return Reply(built, body)
        # Escaped characters made the body longer than its text: shrink in proportion.
        budget = int(budget * cap / len(body) * 0.95)


def _build(
    outcome: RunOutcome,
    kind: str,
    session_id: str,
    policy: Policy,
    files: list[FileInfo],
    budget: int,
    link: FileLinker,
) -> ReplResponse | CommandResponse:
    reply = outcome.reply
    fields: dict[str, object] = {
        "result": _result_text(outcome),
        "error": _error_text(outcome, kind),
    }
    if kind == "python":
        fields["stderr"] = reply.stderr
    budget = max(budget, 0)
    outputs, outputs_cut = rich_outputs.drafts(reply.outputs if kind == "python" else [], link)
    if kind == "python" and reply.value_at is not None and reply.value is not None:
        value = rich_outputs.OutputDraft("execute_result", {PLAIN: reply.value})
        outputs.insert(min(reply.value_at, len(outputs)), value)
    text_size = sum(len(text) for text in fields.values() if isinstance(text, str))
    if text_size + sum(output.size() for output in outputs) <= budget:
        texts_cut = False  # everything fits as it is: most replies
    else:
        outputs_cut = rich_outputs.shed(outputs, text_size, budget, link) or outputs_cut
        # What cutting text cannot save (the outputs' frames) is not text's to share.
        texts = {**fields, **rich_outputs.plain_texts(outputs)}
        frames = sum(output.frame_size() for output in outputs)
        texts_cut = fit_reply(texts, max(budget - frames, 0))
        rich_outputs.put_back(outputs, texts)
        fields = {name: texts[name] for name in fields}
    files_cut = len(files) < len(reply.files)
    truncated = texts_cut or outputs_cut or reply.truncated or files_cut
    linked = any(rich_outputs.URL_KEY in output.metadata for output in outputs)
    suggestion = suggest(_outcome_for_rules(outcome, kind, truncated, linked), policy)
    common = {
        **fields,
        "suggestion": suggestion,
        "session_id": session_id,
        "status": reply.status,
        "truncated": truncated,
        "duration_ms": round(outcome.duration_ms, 3),
        "files": files,
        "restarted": outcome.restarted,
    }
    if kind == "python":
        return ReplResponse.model_validate(
            {
                **common,
                "execution_count": reply.execution_count,
                "outputs": [output.fields() for output in outputs],
            }
        )
    return CommandResponse.model_validate({**common, "exit_code": reply.exit_code})


def fit_reply(fields: dict[str, object], budget: int) -> bool:
    """Shrink the longest text fields until together they fit ``budget`` characters."""
    cut = False
    for _ in range(len(fields) + 8):
        sizes = {k: len(v) for k, v in fields.items() if isinstance(v, str)}
        total = sum(sizes.values())
        if total <= budget:
            return cut
        largest = max(sizes, key=lambda k: sizes[k])
        target = max(sizes[largest] - (total - budget), 0)
        text = fields[largest]
        assert isinstance(text, str)
        shorter, _ = truncate_output(text, target)
        if len(shorter) >= len(text):
            return cut  # every text is down to its marker: nothing left to cut
        fields[largest] = shorter
        cut = True
    return cut
