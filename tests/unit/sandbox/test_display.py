"""What a cell shows becomes Jupyter outputs: its value, display(), IPython.display, figures."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import matplotlib
import pytest

from sandbox import protocol
from sandbox.display import DisplayLimits
from sandbox.executor import PythonSession
from sandbox.output import BoundedBuffer
from sandbox.worker import build_reply, encode_reply

matplotlib.use("Agg")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def session(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> PythonSession:
    monkeypatch.chdir(tmp_path)  # figures are saved in the working directory
    return PythonSession()


def _kinds(session: PythonSession) -> list[tuple[str, list[str]]]:
    return [(output.output_type, sorted(output.data)) for output in session.outputs]


def test_the_last_expression_is_an_execute_result_with_its_repr_methods(
    session: PythonSession,
) -> None:
    outcome = session.run(
        "class Table:\n"
        "    def __repr__(self): return 'Table()'\n"
        "    def _repr_html_(self): return '<table></table>'\n"
        "Table()"
    )
    assert outcome.value == "Table()"
    [output] = session.outputs
    assert output.output_type == "execute_result"
    assert output.data == {"text/plain": "Table()", "text/html": "<table></table>"}


def test_a_failing_repr_html_is_skipped_and_the_cell_succeeds(session: PythonSession) -> None:
    outcome = session.run(
        "class Bad:\n"
        "    def __repr__(self): return 'Bad()'\n"
        "    def _repr_html_(self): raise RuntimeError('broken')\n"
        "display(Bad())\n"
        "Bad()"
    )
    assert outcome.error is None
    assert [output.data for output in session.outputs] == [{"text/plain": "Bad()"}] * 2


def test_a_failing_repr_is_still_the_cells_error(session: PythonSession) -> None:
    outcome = session.run("class Bad:\n    def __repr__(self): raise RuntimeError('no')\nBad()")
    assert outcome.exc_type == "RuntimeError"


def test_display_shows_each_object_in_order_before_the_value(session: PythonSession) -> None:
    outcome = session.run("display(1, 'two', [3])\nprint('printed')\n4")
    assert outcome.value == "4"
    assert [(o.output_type, o.data["text/plain"]) for o in session.outputs] == [
        ("display_data", "1"),
        ("display_data", "'two'"),
        ("display_data", "[3]"),
    ]
    # A plain value's execute_result is its text, sent once: the reply says where it goes.
    assert session.value_at == 3


def test_a_value_with_rich_reprs_is_an_output_of_its_own(session: PythonSession) -> None:
    outcome = session.run(
        "class Bold:\n"
        "    def _repr_html_(self): return '<b>x</b>'\n"
        "    def __repr__(self): return 'x'\n"
        "display(1)\nBold()"
    )
    assert outcome.value == "x"
    assert session.value_at is None
    assert [(o.output_type, o.data) for o in session.outputs] == [
        ("display_data", {"text/plain": "1"}),
        ("execute_result", {"text/plain": "x", "text/html": "<b>x</b>"}),
    ]


def test_a_streamed_runs_value_is_an_output_as_it_is_produced(session: PythonSession) -> None:
    streamed: list[str] = []
    session.output_listener = lambda output: streamed.append(output.data["text/plain"])
    session.run("7 * 6")
    assert streamed == ["42"]
    assert session.value_at is None


def test_outputs_are_those_of_the_last_run_only(session: PythonSession) -> None:
    session.run("display(1)")
    session.run("x = 1")
    assert session.outputs == []


def test_display_deleted_or_rebound_in_builtins_is_back_in_the_next_cell(
    session: PythonSession,
) -> None:
    gone = session.run("import builtins\ndel builtins.display\ndisplay(1)")
    assert gone.exc_type == "NameError"
    assert session.run("display(2)").error is None
    assert session.run("builtins.display = None").error is None
    assert session.run("display(3)").error is None
    assert [o.data["text/plain"] for o in session.outputs] == ["3"]


def test_the_builtins_keep_their_keys_from_one_cell_to_the_next(session: PythonSession) -> None:
    # A key added to or taken from the builtins dict voids every cached builtin lookup.
    import builtins

    session.run("display(1)")
    keys = list(builtins.__dict__)
    session.run("display(2)")
    session.run("1 + 1")
    assert list(builtins.__dict__) == keys


def test_a_dataframe_gives_html_and_text(session: PythonSession) -> None:
    session.run("import pandas as pd\ndf = pd.DataFrame({'a': [1, 2]})\ndisplay(df)\ndf")
    assert _kinds(session) == [
        ("display_data", ["text/html", "text/plain"]),
        ("execute_result", ["text/html", "text/plain"]),
    ]
    assert "<table" in session.outputs[0].data["text/html"]


def test_a_mimebundle_is_honoured(session: PythonSession) -> None:
    session.run(
        "class Custom:\n"
        "    def _repr_mimebundle_(self, include=None, exclude=None):\n"
        "        return {'text/plain': 'custom', 'text/markdown': '# custom'}\n"
        "display(Custom())"
    )
    [output] = session.outputs
    assert output.data == {"text/plain": "custom", "text/markdown": "# custom"}


def test_ipython_display_objects_reach_the_outputs(session: PythonSession, tmp_path: Path) -> None:
    pytest.importorskip("IPython")
    import matplotlib.pyplot as plt

    plt.figure(figsize=(1, 1)).savefig(tmp_path / "dot.png")
    plt.close("all")
    outcome = session.run(
        "from IPython.display import display, HTML, Markdown, Image\n"
        "display(HTML('<i>html</i>'), Markdown('*md*'))\n"
        "Image(filename='dot.png')"
    )
    assert outcome.error is None, outcome.error
    html, markdown, image = session.outputs
    assert html.data["text/html"] == "<i>html</i>"
    assert markdown.data["text/markdown"] == "*md*"
    assert image.output_type == "execute_result"
    assert base64.b64decode(image.data["image/png"]).startswith(PNG_MAGIC)


def test_ipython_is_not_imported_by_a_cell_that_does_not_import_it() -> None:
    code = (
        "import sys\n"
        "from sandbox.executor import PythonSession\n"
        "session = PythonSession()\n"
        "session.run('display(1)\\n2')\n"
        "print('IPython' in sys.modules, len(session.outputs), session.value_at)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert done.stdout.split() == ["False", "1", "1"]


def test_a_figure_left_open_is_shown_once_at_the_end_and_saved(session: PythonSession) -> None:
    session.run("import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])")
    session.display.show_open_figures()  # what the worker does when the cell has ended
    figures = [o for o in session.outputs if "image/png" in o.data]
    assert len(figures) == 1
    assert figures[0].data["text/plain"] == "<Figure size 640x480 with 1 Axes>"
    assert figures[0].metadata == {"filename": "figure-1.png"}
    png = base64.b64decode(figures[0].data["image/png"])
    assert png.startswith(PNG_MAGIC)
    assert Path("figure-1.png").read_bytes() == png


def test_plt_show_and_display_of_a_figure_show_it_once(session: PythonSession) -> None:
    session.run(
        "import matplotlib.pyplot as plt\n"
        "plt.plot([1, 2])\n"
        "plt.show()\n"
        "fig, ax = plt.subplots()\n"
        "display(fig)\n"
    )
    session.display.show_open_figures()
    shown = [o.metadata.get("filename") for o in session.outputs]
    assert shown == ["figure-1.png", "figure-1-2.png"]
    assert sorted(os.listdir(".")) == ["figure-1-2.png", "figure-1.png"]


def test_a_run_holds_at_most_its_share_of_outputs(tmp_path: Path) -> None:
    session = PythonSession(DisplayLimits(text_chars=100, output_chars=1_000, run_chars=5_000))
    session.run("for i in range(1000):\n    display('x' * 500)")
    held = sum(len(o.model_dump_json()) for o in session.outputs)
    assert held <= 5_000
    assert 0 < len(session.outputs) < 1000
    assert all(len(o.data["text/plain"]) <= 100 for o in session.outputs)
    assert session.display.cut


def test_a_run_at_the_largest_caps_still_fits_one_frame(tmp_path: Path) -> None:
    # The largest caps a policy allows, and text that JSON escapes to six times its size.
    limits = DisplayLimits.for_reply(output_chars=45_000, reply_chars=100_000)
    session = PythonSession(limits)
    outcome = session.run(
        "class Noisy:\n"
        "    def __repr__(self): return '\\x01' * 200_000\n"
        "    def _repr_html_(self): return '\\x02\\U0001f600' * 40_000\n"
        "for _ in range(50):\n"
        "    display(Noisy())\n"
        "Noisy()"
    )
    reply = build_reply(
        1,
        limits.text_chars,
        session.execution_count,
        BoundedBuffer(limits.text_chars),
        BoundedBuffer(limits.text_chars),
        session.display.cut,
        status="ok",
        value=outcome.value,
        outputs=session.outputs,
    )
    frame = encode_reply(reply)
    assert len(frame) < protocol.DEFAULT_MAX_FRAME
    assert protocol.decode_worker_message(frame[protocol.HEADER.size :]) == reply
    assert reply.truncated
    assert 0 < len(reply.outputs) < 51
