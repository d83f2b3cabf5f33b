"""The wheel: an installed codesherpa runs outside the checkout, with its presets."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from sandbox import load_policy

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def unpacked_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    built = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(built), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = built.glob("codesherpa-*.whl")
    site = tmp_path_factory.mktemp("site")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    return site


def _run_installed(site: Path, cwd: Path, code: str) -> str:
    """Run ``code`` with the wheel's packages first on the path, from ``cwd``."""
    prelude = f"import sys; sys.path.insert(0, {str(site)!r}); "
    finished = subprocess.run(
        [sys.executable, "-c", prelude + code],
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return finished.stdout


def test_policy_show_outside_the_checkout_prints_the_shipped_default(
    unpacked_wheel: Path, tmp_path: Path
) -> None:
    out = _run_installed(
        unpacked_wheel,
        tmp_path,
        "import service; assert service.__file__.startswith(sys.path[0]), service.__file__; "
        "from service.cli import main; main(['policy', 'show'])",
    )
    shown = tmp_path / "shown.toml"
    shown.write_text(out)
    assert tomllib.loads(out)["limits"]["wall_timeout_s"] > 0
    assert load_policy(str(shown)) == load_policy(str(ROOT / "policies" / "default.toml"))


def test_the_plugin_manifest_ships_inside_the_package(unpacked_wheel: Path, tmp_path: Path) -> None:
    out = _run_installed(
        unpacked_wheel,
        tmp_path,
        "from service.routes.clients import MANIFEST_TEMPLATE, LOGO; "
        "print(MANIFEST_TEMPLATE.is_file(), LOGO.is_file(), MANIFEST_TEMPLATE)",
    )
    manifest_exists, logo_exists, where = out.split()
    assert (manifest_exists, logo_exists) == ("True", "True")
    assert where.startswith(str(unpacked_wheel))
