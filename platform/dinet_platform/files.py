"""Writing files so that a reader sees the old file or the new one, never half of one.

Every file the platform writes for others to read -- shards, manifests, checkpoints, reports,
job status, synthetic clips, dubbed videos, avatars and artifact directories -- goes through
these: write under a temporary name in the same directory (so the rename is atomic on one
filesystem), then ``os.replace`` it into place; a failure leaves no partial file behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

TMP_PREFIX = ".tmp-"
"""Temporary names start with this, so a cleanup can find leftovers of a killed writer."""


def temp_path(final: Path) -> Path:
    """A unique temporary name next to ``final`` that keeps its suffix (encoders that pick a
    format from the file name still see ``.mp4`` or ``.png``)."""
    return final.with_name(f"{TMP_PREFIX}{final.stem}.{uuid.uuid4().hex[:8]}{final.suffix}")


@contextlib.contextmanager
def atomic_path(final: str | Path, *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path for ``final``; the block writes it, and only if the block
    succeeds is it moved into place (after an ``fsync`` when asked: data a later step must
    find intact after a crash)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(final)
    try:
        yield tmp
        if fsync:
            with tmp.open("rb") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | Path, data: bytes, *, fsync: bool = False) -> Path:
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | Path, text: str, *, fsync: bool = False) -> Path:
    return write_bytes(path, text.encode("utf-8"), fsync=fsync)


def replace_dir(new: Path, target: Path) -> None:
    """Move the finished directory ``new`` to ``target``, replacing an existing one only once
    ``new`` is complete (``new`` must be on ``target``'s filesystem)."""
    if target.exists():
        old = target.with_name(f"{TMP_PREFIX}{target.name}.old-{uuid.uuid4().hex[:8]}")
        target.rename(old)
        new.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        new.rename(target)
