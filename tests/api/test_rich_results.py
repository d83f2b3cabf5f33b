"""Rich results over HTTP: Jupyter outputs in the reply, each text once, within the cap."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import pytest

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REPLY_CAP = 20_000  # tests/policies/test.toml


def _run(client: httpx.Client, code: str) -> tuple[httpx.Response, dict[str, Any]]:
    reply = client.post("/repl", json={"code": code})
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    assert body["status"] == "ok", body
    return reply, body


def test_display_of_a_dataframe_is_a_display_data_with_html(client: httpx.Client) -> None:
    _, body = _run(client, "import pandas as pd\ndisplay(pd.DataFrame({'city': ['Oslo']}))")
    [output] = body["outputs"]
    assert output["output_type"] == "display_data"
    assert "<table" in output["data"]["text/html"]
    assert "Oslo" in output["data"]["text/plain"]


def test_the_value_is_an_execute_result_and_stays_in_result(client: httpx.Client) -> None:
    _, body = _run(client, "print('before')\n6 * 7")
    assert body["result"] == "before\n42"
    assert body["outputs"] == [
        {"output_type": "execute_result", "data": {"text/plain": "42"}, "metadata": {}}
    ]


def test_printed_text_is_sent_once_and_there_is_no_stdout_field(client: httpx.Client) -> None:
    reply, body = _run(client, "print('unique-marker-' + 'x' * 3)")
    assert "stdout" not in body
    assert body["result"] == "unique-marker-xxx\n"
    assert reply.text.count("unique-marker-xxx") == 1


def test_a_plot_is_an_image_output_and_a_file(client: httpx.Client) -> None:
    code = (
        "import matplotlib.pyplot as plt\n"
        "plt.figure(figsize=(1.5, 1), dpi=50)\n"
        "plt.plot([1, 3, 2])\n"
        "plt.show()"
    )
    _, body = _run(client, code)
    [figure] = body["outputs"]
    assert figure["output_type"] == "display_data"
    assert figure["data"]["text/plain"].startswith("<Figure size")
    png = base64.b64decode(figure["data"]["image/png"])
    assert png.startswith(PNG_MAGIC)
    name = figure["metadata"]["filename"]
    [saved] = [entry for entry in body["files"] if entry["name"] == name]
    assert saved["size"] == len(png)
    assert body["truncated"] is False


def test_a_figure_too_big_for_the_cap_comes_as_a_link(client: httpx.Client) -> None:
    code = (
        "import numpy as np, matplotlib.pyplot as plt\n"
        "plt.figure(figsize=(6, 6))\n"
        "plt.imshow(np.random.default_rng(1).random((300, 300)))"
    )
    reply, body = _run(client, code)
    assert len(reply.content.decode()) <= REPLY_CAP
    figure = next(output for output in body["outputs"] if output["output_type"] == "display_data")
    assert "image/png" not in figure["data"]
    assert figure["data"]["text/plain"].startswith("<Figure size 600x600")
    assert body["truncated"] is True
    assert "metadata.url" in body["suggestion"]
    download = httpx.get(figure["metadata"]["url"], timeout=30)  # signed: no bearer header
    assert download.status_code == 200
    assert download.content.startswith(PNG_MAGIC)
    assert len(download.content) * 4 // 3 > REPLY_CAP


def test_ipython_display_objects_work_in_a_confined_worker(client: httpx.Client) -> None:
    pytest.importorskip("IPython")
    code = (
        "from IPython.display import display, HTML, Markdown\n"
        "display(HTML('<b>bold</b>'))\n"
        "Markdown('*md*')"
    )
    _, body = _run(client, code)
    assert [(o["output_type"], sorted(o["data"])) for o in body["outputs"]] == [
        ("display_data", ["text/html", "text/plain"]),
        ("execute_result", ["text/markdown", "text/plain"]),
    ]
    assert body["outputs"][0]["data"]["text/html"] == "<b>bold</b>"


def test_a_huge_dataframe_keeps_its_text_within_the_cap(client: httpx.Client) -> None:
    code = (
        "import pandas as pd\n"
        "pd.set_option('display.max_rows', 5000)\n"
        "pd.DataFrame({'n': range(3000), 'label': ['row'] * 3000})"
    )
    reply, body = _run(client, code)
    assert len(reply.content.decode()) <= REPLY_CAP
    [output] = body["outputs"]
    assert list(output["data"]) == ["text/plain"]  # the HTML table could not fit
    assert "characters omitted" in output["data"]["text/plain"]
    assert body["truncated"] is True
