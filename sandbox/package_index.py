"""The package index a session's pip installs from.

``packages.index_url = ""`` means "the index the host's pip is configured with".  The
service reads it once, when it starts its zygote (a reload reads it again), with the
precedence pip itself uses for ``pip install``: the configuration files (global, then
the user's, then the interpreter's own, then ``PIP_CONFIG_FILE``; ``os.devnull`` there
skips them all), in each the ``[install]`` section over ``[global]``, and
``PIP_INDEX_URL`` over every file.  A host whose pip names no index gets pip's own
default, taken from pip rather than written here: no registry's name belongs in this
repository.

Only the index URL is read.  ``extra-index-url``, ``trusted-host`` and the rest of the
host's configuration stay the host's: a session's pip runs with none of it.
"""

from __future__ import annotations

import configparser
import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from sandbox.policy import Policy
from sandbox.policy.checks import PolicyProblems
from sandbox.policy.urls import has_credentials, redacted, without_credentials

log = logging.getLogger("codesherpa.packages")
# pip normalizes option names so, in files and in PIP_* variables alike.
_INDEX_KEYS = ("index-url", "index_url")


def pip_config_files(environ: Mapping[str, str]) -> list[str]:
    """The files pip reads, lowest precedence first (pip's ``configuration.py``)."""
    explicit = environ.get("PIP_CONFIG_FILE")
    if explicit == os.devnull:
        return []
    xdg_dirs = environ.get("XDG_CONFIG_DIRS") or "/etc/xdg"
    files = [os.path.join(path, "pip", "pip.conf") for path in xdg_dirs.split(os.pathsep) if path]
    files.append("/etc/pip.conf")
    explicit_exists = explicit is not None and os.path.exists(explicit)
    if not explicit_exists:
        home = environ.get("HOME") or os.path.expanduser("~")
        config_home = environ.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")
        files += [
            os.path.join(home, ".pip", "pip.conf"),
            os.path.join(config_home, "pip", "pip.conf"),
        ]
    files.append(os.path.join(sys.prefix, "pip.conf"))
    if explicit is not None:
        files.append(explicit)
    return files


def _index_in(path: str) -> tuple[str | None, str | None]:
    """The (global, install) index URLs one file sets, each None when it sets none."""
    parser = configparser.RawConfigParser()
    try:
        parser.read(path, encoding="utf-8")
    except (configparser.Error, OSError, UnicodeDecodeError):
        return None, None  # pip would refuse such a file; the other files still count
    found: list[str | None] = []
    for section in ("global", "install"):
        value = next(
            (parser.get(section, key) for key in _INDEX_KEYS if parser.has_option(section, key)),
            None,
        )
        found.append(value.strip() if value else None)
    return found[0], found[1]


def host_index_url(environ: Mapping[str, str] | None = None) -> str:
    """The index the host's ``pip install`` would use; "" when even pip's default is unknown."""
    environ = os.environ if environ is None else environ
    from_environment = environ.get("PIP_INDEX_URL", "").strip()
    if from_environment:
        return from_environment
    global_url = install_url = None
    for path in pip_config_files(environ):
        file_global, file_install = _index_in(path)
        global_url = file_global or global_url
        install_url = file_install or install_url
    return install_url or global_url or _pip_default()


def _pip_default() -> str:
    try:
        from pip._internal.models.index import PyPI
    except ImportError:
        return ""
    return str(PyPI.simple_url)


def for_sessions(policy: Policy, environ: Mapping[str, str] | None = None) -> Policy:
    """``policy`` as the workers get it: an empty ``index_url`` replaced by the host's.

    Credentials in the host's URL (userinfo, a query string) never reach a worker:
    every session could read them (pip's command line, the worker's memory).  They are
    dropped, and a warning naming the index without them says installs go to it
    without credentials.  The policy's own check (``packages.index_url``) cannot see
    the host's index when it loads; what it would have refused is logged here, once
    per start.
    """
    packages = policy.packages
    if packages.install == "off" or packages.index_url:
        return policy
    index_url = host_index_url(environ)
    if has_credentials(index_url):
        log.warning(
            "packages: the host pip's index %s carries credentials; sessions install from "
            "%s without them (set packages.index_url to choose another index)",
            redacted(index_url),
            without_credentials(index_url) or "no index",
        )
        index_url = without_credentials(index_url)
    resolved = policy.model_copy(
        update={"packages": packages.model_copy(update={"index_url": index_url})}
    )
    try:
        Policy.model_validate(resolved.model_dump())
    except ValidationError as problem:
        # The checks' own texts (URLs redacted), not pydantic's, which repeat the input.
        reasons = "; ".join(_reason(item) for item in problem.errors())
        log.warning("packages: the host pip's index will not be reachable: %s", reasons)
    return resolved


def _reason(item: Any) -> str:
    where = ".".join(str(part) for part in item.get("loc", ()))
    found = item.get("ctx", {}).get("error")
    if isinstance(found, PolicyProblems):
        return "; ".join(
            ".".join(filter(None, (where, key))) + f": {reason}" for key, reason in found.problems
        )
    return f"{where}: {item.get('msg', '')}"  # pydantic's msg, unlike its str(), has no input
