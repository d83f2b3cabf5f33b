"""What a run changed in the workspace."""

from __future__ import annotations

import os

from sandbox.protocol import ChangedFile, escape_surrogates
from sandbox.session_packages import SITE_DIRECTORY

# A workspace with more entries than this is sampled, not walked in full, so a run
# that creates a million files cannot make every later reply slow.
MAX_SCANNED_ENTRIES = 5000

Snapshot = dict[str, tuple[int, int]]


def snapshot(root: str = ".") -> Snapshot:
    """Every regular file under root, by its path relative to root: (mtime_ns, size).

    Names are built from the directory entries' own names as the walk descends:
    os.path.relpath calls getcwd twice per file, and took half of a trivial run's time
    in the worker (two snapshots per run).
    """
    seen: Snapshot = {}
    stack = [(root, "")]
    scanned = 0
    while stack and scanned < MAX_SCANNED_ENTRIES:
        directory, prefix = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            scanned += 1
            name = prefix + entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    if name != SITE_DIRECTORY:  # installed packages are no run's files
                        stack.append((entry.path, name + "/"))
                elif entry.is_file(follow_symlinks=False):
                    info = entry.stat(follow_symlinks=False)
                    seen[name] = (info.st_mtime_ns, info.st_size)
            except OSError:
                continue
    return seen


def changed_files(before: Snapshot, after: Snapshot) -> list[ChangedFile]:
    """What ``after`` holds that ``before`` did not; names escaped to travel as UTF-8."""
    return [
        ChangedFile(name=escape_surrogates(name), size=state[1])
        for name, state in sorted(after.items())
        if before.get(name) != state
    ]
