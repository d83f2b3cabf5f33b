"""What of the host a session's interpreter needs, and nothing of the service's own.

A session gets the interpreter's own installation (``sys.base_prefix``: the standard
library and its C extensions), the directories libraries are installed in (the running
interpreter's site-packages: inside the virtualenv when there is one), and the
directory of each allowed program.  Never the checkout the service runs from (it is on
the zygote's ``sys.path``, and an editable install's ``.pth`` names it too), nor the
virtualenv's root with its ``bin/`` and ``pyvenv.cfg``: they are the service's, and an
operator may keep a settings file or a socket beside them.

Resolved once, at import in the zygote: ``sysconfig`` reads its configuration lazily,
and doing that in each fork would copy shared pages.
"""

from __future__ import annotations

import os
import site
import sys
import sysconfig


def _real_directories(paths: set[str]) -> frozenset[str]:
    return frozenset(os.path.realpath(path) for path in paths if os.path.isdir(path))


INSTALLATION = _real_directories({sys.base_prefix, sys.base_exec_prefix})


def _library_directories() -> set[str]:
    directories = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    directories.update(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        directories.add(site.getusersitepackages())
    return directories


LIBRARY_DIRECTORIES = _real_directories(_library_directories())
# The interpreter the session runs, behind the virtualenv's link to it.
REAL_EXECUTABLE = os.path.realpath(sys.executable)
IN_VIRTUALENV = sys.prefix != sys.base_prefix


def within(path: str, directories: frozenset[str]) -> bool:
    """Whether ``path`` (a real path) is one of ``directories`` or beneath one."""
    return any(path == top or path.startswith(top.rstrip("/") + "/") for top in directories)


def runtime_directories(executables: tuple[str, ...]) -> frozenset[str]:
    """Every directory a session reads its interpreter, libraries and programs from."""
    programs = {os.path.dirname(os.path.realpath(program)) for program in executables}
    return INSTALLATION | LIBRARY_DIRECTORIES | _real_directories(programs)


def import_path() -> list[str]:
    """``sys.path`` without what lies outside the installation and library directories:
    the checkout (``PYTHONPATH``) and whatever a ``.pth`` file added."""
    interpreter = INSTALLATION | LIBRARY_DIRECTORIES
    return [entry for entry in sys.path if entry and within(os.path.realpath(entry), interpreter)]


def virtualenv_configuration() -> str:
    """The ``pyvenv.cfg`` a session's virtualenv needs, and no more: where the real
    interpreter lives, so that a program it starts through ``sys.executable`` finds
    the same libraries."""
    return f"home = {os.path.dirname(REAL_EXECUTABLE)}\n"
