"""Writing files so that nothing is ever half-written.

``atomic_write(path)`` hands out a temporary file beside ``path`` (same folder, so the final
rename is atomic), renames it over ``path`` when the block ends normally and deletes it when
the block raises (also on Ctrl-C). Readers therefore see the old file or the complete new one,
never a partial one, and a failed write leaves no temporary file behind.

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
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


__all__ = ["atomic_write"]
