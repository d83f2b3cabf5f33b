"""A cgroup's control files: reading them, writing them, waiting on them."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

POLL_S = 0.005


def read_file(path: Path) -> str:
    return path.read_text()


def write_file(path: Path, value: str) -> None:
    # No O_CREAT: a control file the kernel does not provide must fail, not appear.
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    except OSError as exc:
        raise OSError(exc.errno, f"writing {value!r} to {path}: {exc.strerror}") from exc
    finally:
        os.close(fd)


def wait_until(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_S)
    return True


def keyed(name: str) -> Callable[[str], int | None]:
    """Parser for the 'name value' lines of files such as memory.events and cpu.stat."""

    def parse(text: str) -> int | None:
        for line in text.splitlines():
            field, _, value = line.partition(" ")
            if field == name:
                return int(value)
        return None

    return parse
