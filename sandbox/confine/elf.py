"""Which loader a program needs: the PT_INTERP of an ELF file, read with bounds."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

ELF_MAGIC = b"\x7fELF"
ELF_CLASS_32 = 1
ELF_CLASS_64 = 2
ELF_LITTLE_ENDIAN = 1
PT_INTERP = 3


@dataclass(frozen=True)
class _ElfLayout:
    """Where an ELF class keeps what finding PT_INTERP needs (offsets in bytes)."""

    header_size: int
    word: str  # struct format of an address-sized field
    table_offset_at: int  # e_phoff
    entry_size_and_count_at: int  # e_phentsize, e_phnum
    segment_offset_at: int  # p_offset in a program header
    segment_size_at: int  # p_filesz in a program header


_ELF_LAYOUTS = {
    ELF_CLASS_32: _ElfLayout(52, "I", 28, 42, 4, 16),
    ELF_CLASS_64: _ElfLayout(64, "Q", 32, 54, 8, 32),
}
_MAX_PROGRAM_HEADERS = 256  # real binaries have about a dozen; bounds a hostile file
_MAX_INTERPRETER_PATH = 4096


def elf_interpreter(path: str) -> str | None:
    """The absolute loader path in an ELF file's PT_INTERP, or None (static, not ELF)."""
    try:
        with open(path, "rb") as program:
            header = program.read(64)
            if len(header) < 6 or header[:4] != ELF_MAGIC or header[4] not in _ELF_LAYOUTS:
                return None
            layout = _ELF_LAYOUTS[header[4]]
            if len(header) < layout.header_size:
                return None
            order = "<" if header[5] == ELF_LITTLE_ENDIAN else ">"
            word = order + layout.word
            (table_offset,) = struct.unpack_from(word, header, layout.table_offset_at)
            entry_size, entry_count = struct.unpack_from(
                order + "HH", header, layout.entry_size_and_count_at
            )
            for index in range(min(entry_count, _MAX_PROGRAM_HEADERS)):
                program.seek(table_offset + index * entry_size)
                entry = program.read(entry_size)
                # struct.error on a truncated entry is caught below: not a usable ELF.
                if struct.unpack_from(order + "I", entry, 0)[0] != PT_INTERP:
                    continue
                (segment_offset,) = struct.unpack_from(word, entry, layout.segment_offset_at)
                (segment_size,) = struct.unpack_from(word, entry, layout.segment_size_at)
                program.seek(segment_offset)
                raw = program.read(min(segment_size, _MAX_INTERPRETER_PATH))
                interpreter = os.fsdecode(raw.split(b"\0", 1)[0])
                return interpreter if os.path.isabs(interpreter) else None
    except (OSError, struct.error):
        return None
    return None
