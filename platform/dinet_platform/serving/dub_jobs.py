"""Dub jobs: ``POST /v1/dub`` stores the inputs as a job directory and a model replica
renders it with :func:`dinet_platform.runtime.dub.dub_video` (frames in batches of
``max_batch_size``); the caller polls ``GET /v1/dub/{job_id}`` and downloads the mp4.

A job directory holds ``spec.json`` (what to dub), the uploaded files, ``status.json``
(``queued`` / ``running`` / ``done`` / ``failed`` with the reason) and, when done,
``out.mp4``. Every file is written under a temporary name and renamed, so a poll never reads
half a file. Job ids are minted here and checked like avatar ids (32 hex characters, inside
the jobs directory).
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

from dinet_platform.files import write_text
from dinet_platform.serving.avatars import AVATAR_ID

SPEC_FILE = "spec.json"
STATUS_FILE = "status.json"
OUTPUT_FILE = "out.mp4"


class JobNotFound(KeyError):
    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "job not found"


def _write_json(path: Path, data: dict[str, Any]) -> None:
    write_text(path, json.dumps(data, indent=1))


class JobStore:
    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()

    def path(self, job_id: str) -> Path:
        if not isinstance(job_id, str) or not AVATAR_ID.match(job_id):
            raise JobNotFound(f"unknown job id {job_id!r:.80}")
        path = (self.root / job_id).resolve()
        if path.parent != self.root or not (path / SPEC_FILE).is_file():
            raise JobNotFound(f"unknown job id {job_id!r:.80}")
        return path

    def create(self) -> tuple[str, Path]:
        """A new job id and its (empty) directory; :meth:`submit` makes it visible."""
        job_id = uuid.uuid4().hex
        folder = self.root / job_id
        folder.mkdir(parents=True)
        return job_id, folder

    def submit(self, job_id: str, spec: dict[str, Any]) -> None:
        folder = self.root / job_id
        _write_json(folder / STATUS_FILE, {"state": "queued", "submitted": time.time()})
        _write_json(folder / SPEC_FILE, spec)

    def spec(self, job_id: str) -> dict[str, Any]:
        return json.loads((self.path(job_id) / SPEC_FILE).read_text())

    def status(self, job_id: str) -> dict[str, Any]:
        return json.loads((self.path(job_id) / STATUS_FILE).read_text())

    def set_status(self, job_id: str, state: str, **details: Any) -> None:
        previous = self.status(job_id)
        _write_json(self.path(job_id) / STATUS_FILE,
                    {**previous, "state": state, "updated": time.time(), **details})

    def output(self, job_id: str) -> Path:
        return self.path(job_id) / OUTPUT_FILE
