"""Crash-safe writes: a file or folder is replaced whole or not at all. A leaf module.

Every writer goes through a temporary name in the destination's folder, flushed to disk (fsync), then one
`os.replace`: a reader or a crash sees the old content or the new, never half. Folders are swapped with
an `.old` name kept only for the instant of the swap.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

__all__ = ["replace_dir", "write_bytes", "write_text", "writing"]


@contextmanager
def writing(path: Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside `path` for writing; on a clean exit it is fsynced and renamed onto `path`,
    on an exception it is removed and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    """Replace `path` with `text` (UTF-8) atomically."""
    with writing(path, "w") as f:
        f.write(text)


def write_bytes(path: Path, data: bytes) -> None:
    """Replace `path` with `data` atomically."""
    with writing(path, "wb") as f:
        f.write(data)


def replace_dir(tmp: Path, dest: Path) -> None:
    """Make the finished folder `tmp` the folder `dest` (same parent), replacing any old `dest`.

    Between the two renames `dest` is briefly absent, never half-written; the old content is deleted after."""
    tmp, dest = Path(tmp), Path(dest)
    old = dest.with_name(dest.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        dest.rename(old)
    tmp.rename(dest)
    shutil.rmtree(old, ignore_errors=True)
