"""The zygote preloads what the policy names, and none of the toolbox besides."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from sandbox import preload_guard

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def fake_toolbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "fakebox").mkdir()
    (tmp_path / "fakebox" / "__init__.py").write_text("LOADED = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(preload_guard, "TOOLBOX_MODULES", frozenset({"fakebox"}))
    monkeypatch.delitem(sys.modules, "fakebox", raising=False)
    return "fakebox"


def test_a_toolbox_module_is_missing_while_the_zygote_preloads_and_there_after(
    fake_toolbox: str,
) -> None:
    with preload_guard.toolbox_kept_out(["numpy"]):
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module(fake_toolbox)
        assert fake_toolbox not in sys.modules
    assert importlib.import_module(fake_toolbox).LOADED


def test_a_toolbox_module_the_policy_preloads_is_imported(fake_toolbox: str) -> None:
    with preload_guard.toolbox_kept_out([fake_toolbox]):
        assert importlib.import_module(fake_toolbox).LOADED


PRELOAD_THEN_PARQUET = """
import sys
from sandbox.policy import Policy
from sandbox.preload_guard import toolbox_kept_out
from sandbox.zygote import _preload
with toolbox_kept_out(Policy().python.preload):
    _preload(Policy())
print(sorted(name for name in sys.modules if name.partition('.')[0] == 'pyarrow'))
import pandas as pd
pd.DataFrame({'a': [1, 2]}).to_parquet(sys.argv[1])
print(pd.read_parquet(sys.argv[1])['a'].tolist())
"""


@pytest.mark.skipif(
    importlib.util.find_spec("pyarrow") is None, reason="the toolbox extra is not installed"
)
def test_pandas_preloads_without_pyarrow_and_still_writes_parquet(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", PRELOAD_THEN_PARQUET, str(tmp_path / "t.parquet")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["[]", "[1, 2]"]
