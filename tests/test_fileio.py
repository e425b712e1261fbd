"""Nothing half-written: precondlab.fileio.atomic_write, and no hand-written copies of it."""

import re

import pytest

from conftest import REPO
from precondlab.fileio import atomic_write


def test_writes_the_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "out.bin"
    with atomic_write(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_bytes(b"complete")
        assert not target.exists()            # readers see nothing until the block ends
    assert target.read_bytes() == b"complete"
    assert list(target.parent.iterdir()) == [target]
    assert target.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("error", [OSError("No space left on device"), KeyboardInterrupt()])
def test_a_failure_mid_write_leaves_neither_the_target_nor_a_temp(tmp_path, error):
    target = tmp_path / "out.bin"
    with pytest.raises(type(error)):
        with atomic_write(target) as tmp:
            tmp.write_bytes(b"half")
            raise error
    assert list(tmp_path.iterdir()) == []
    # An existing file is kept as it was.
    target.write_bytes(b"old")
    with pytest.raises(type(error)):
        with atomic_write(target) as tmp:
            tmp.write_bytes(b"half of the new one")
            raise error
    assert target.read_bytes() == b"old" and list(tmp_path.iterdir()) == [target]


def test_no_hand_written_atomic_writes_in_the_package():
    pattern = re.compile(r"os\.replace\(|mkstemp\(|\.part[\"']|with_suffix\([\"']\.tmp")
    offenders = [f"{p.relative_to(REPO)}:{i}" for p in sorted((REPO / "precondlab").rglob("*.py"))
                 if p.name != "fileio.py"
                 for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == [], f"use precondlab.fileio.atomic_write instead: {offenders}"
