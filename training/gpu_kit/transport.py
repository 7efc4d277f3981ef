"""Result files through a channel that takes files up to a size: large ones split into parts, joined again.

`split_for_return` copies a run folder's files into an output folder, each file above the part size as
`NAME.part00`, `NAME.part01`, ... with `NAME.sha256` beside them; `join_parts` rebuilds `NAME` from its parts
and checks it against that sum (`cat NAME.part* > NAME` does the same without the check).
"""

from __future__ import annotations

import shutil
from functools import partial
from pathlib import Path
from typing import BinaryIO

from app.manifest import sha256_file as sha256
from app.writer import write_atomic, write_text

PART = ".part"
SUM = ".sha256"


def _write(data: bytes, handle: BinaryIO) -> None:
    handle.write(data)


def split_file(path: Path, dest: Path, part_bytes: int) -> list[Path]:
    """`path` as parts of at most `part_bytes` in `dest`, plus its sha256; the files written."""
    written = []
    with open(path, "rb") as handle:
        k = 0
        while block := handle.read(part_bytes):
            written.append(write_atomic(dest / f"{path.name}{PART}{k:02d}", partial(_write, block)))
            k += 1
    written.append(write_text(dest / f"{path.name}{SUM}", f"{sha256(path)}  {path.name}\n"))
    return written


def _write_parts(parts: list[Path], handle: BinaryIO) -> None:
    for part in parts:
        handle.write(part.read_bytes())


def split_for_return(src: Path, dest: Path, part_bytes: int) -> list[Path]:
    """Every file directly in `src` copied to `dest`, those above `part_bytes` split into parts."""
    if part_bytes <= 0:
        raise ValueError("part size must be positive")
    dest.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for path in sorted(p for p in Path(src).iterdir() if p.is_file()):
        if path.stat().st_size > part_bytes:
            written += split_file(path, dest, part_bytes)
        elif path.resolve() != (dest / path.name).resolve():
            written.append(Path(shutil.copy2(path, dest / path.name)))
    return written


def join_parts(folder: Path) -> list[Path]:
    """Every `NAME` of `folder` that came in parts, rebuilt and checked against `NAME.sha256`."""
    names = sorted({p.name.rsplit(PART, 1)[0] for p in Path(folder).glob(f"*{PART}[0-9][0-9]")})
    joined = []
    for name in names:
        parts = sorted(Path(folder).glob(f"{name}{PART}[0-9][0-9]"))
        target = Path(folder) / name

        write_atomic(target, partial(_write_parts, parts))
        expected_file = Path(folder) / f"{name}{SUM}"
        if expected_file.is_file():
            expected = expected_file.read_text().split()[0]
            if sha256(target) != expected:
                target.unlink()
                raise ValueError(f"{name}: joined parts do not match {expected_file.name} "
                                 "(a part is missing or damaged)")
        joined.append(target)
    return joined


__all__ = ["join_parts", "sha256", "split_file", "split_for_return"]
