"""Loading torch files as data: ``torch.load(weights_only=True)`` with errors a person can act on.

torch's own refusal ends with advice to retry with ``weights_only=False`` (that is, to run the
file's code). precondlab never does that and never passes that advice on: a refused or corrupt
file is one ``CheckpointError`` line naming the file and what is wrong with it.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import torch

from precondlab.errors import CheckpointError

_GLOBAL = re.compile(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)")
_OPERAND = re.compile(r"Unsupported operand (\d+)")


def load_tensors(source: str | Path | bytes | io.BytesIO, what: str = "checkpoint", name: str | None = None):
    """``torch.load(source, map_location='cpu', weights_only=True)``; ``what`` and ``name`` (or the path)
    name the file in the error."""
    label = name or (str(source) if isinstance(source, (str, Path)) else "<bytes>")
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    if isinstance(source, (str, Path)) and not Path(source).is_file():
        raise CheckpointError(f"{what} {label}: no such file")
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - refusals, truncation and foreign formats alike
        raise CheckpointError(f"{what} {label}: {describe_failure(exc)}") from None


def describe_failure(exc: BaseException) -> str:
    """One line for why torch could not load a file, without torch's advice to disable weights_only."""
    text = str(exc)
    found = _GLOBAL.search(text)
    if found:
        return (f"refused: it holds a Python object ({found.group(1)}) besides tensors; precondlab loads "
                f"tensors only and never runs code from a file")
    if "WeightsUnpickler" in text or "Weights only load failed" in text:
        operand = _OPERAND.search(text)
        detail = f" (pickle operand {operand.group(1)})" if operand else ""
        return (f"refused: it is not a plain tensor file{detail}; precondlab loads tensors only and never "
                f"runs code from a file")
    if "zip archive" in text or "central directory" in text or "EOF" in text or "unpickling stack" in text:
        return "truncated or corrupt (not a complete torch zip file); fetch or write it again"
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    return f"unreadable ({type(exc).__name__}: {first[:200]})"


__all__ = ["describe_failure", "load_tensors"]
