"""Writing files so that nothing is ever half-written.

``atomic_write(path)`` hands out a temporary file beside ``path`` (same folder, so the final
rename is atomic), flushes it to the disk (fsync), renames it over ``path`` when the block ends
normally, then syncs the folder so that the rename itself survives a power cut; it deletes the
temporary file when the block raises (also on Ctrl-C). Readers therefore see the old file or the
complete new one, never a partial one, and a failed write leaves no temporary file behind.

    with atomic_write(path) as tmp:
        torch.save(obj, tmp)
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: int | None = 0o644) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder (created if missing) to write the content to;
    on success it replaces ``path`` (with permissions ``mode``; None keeps mkstemp's owner-only
    ones), on any exception it is deleted and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if mode is not None:
            os.chmod(tmp, mode)  # mkstemp makes it owner-only; shared caches and data need it readable
        _fsync(tmp)              # the content is on the disk before the name points at it
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync(path.parent)          # and the rename itself


@contextlib.contextmanager
def atomic_create(path: str | Path) -> Iterator[Path]:
    """Like ``atomic_write``, but never replaces: if ``path`` exists when the block ends (another
    process made it meanwhile), that file is kept and the new content is dropped."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)
        _fsync(tmp)
        try:
            os.link(tmp, path)  # atomic create-if-absent
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)
    _fsync(path.parent)


def _fsync(path: Path) -> None:
    """fsync a file or a folder (folders: where the OS allows opening them)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on folders
    finally:
        os.close(fd)


__all__ = ["atomic_create", "atomic_write"]
