"""Files that ship with the service: the preset policies and the plugin manifest.

A wheel carries them inside the package (``service/data/``, see pyproject.toml); a
checkout keeps them at its top, where operators edit them.
"""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGED = Path(__file__).resolve().parent / "data"
_CHECKOUT = Path(__file__).resolve().parents[1]
DEFAULT_POLICY = "policies/default.toml"


def shipped(name: str) -> Path:
    """The shipped directory ``name`` (``policies``, ``.well-known``)."""
    packaged = _PACKAGED / name
    return packaged if packaged.is_dir() else _CHECKOUT / name


def default_policy() -> str:
    """``policies/default.toml`` where the service is started, else the shipped preset."""
    if os.path.exists(DEFAULT_POLICY):
        return DEFAULT_POLICY
    return str(shipped("policies") / "default.toml")
