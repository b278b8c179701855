"""Dub jobs on disk: ``POST /v1/dub`` stores the inputs as a job directory, a model replica's
:class:`~dinet_platform.serving.dub_runner.DubRunner` renders it, the caller polls
``GET /v1/dub/{job_id}``, downloads the mp4, and may cancel or delete it
(``DELETE /v1/dub/{job_id}``).

A job directory holds ``spec.json`` (what to dub), the uploaded files under names the server
chose, ``status.json`` (``queued`` / ``running`` / ``done`` / ``failed`` / ``cancelled``
with the reason) and, when done, ``out.mp4``. Every file is written under a temporary name
and renamed, so a poll never reads half a file.

Nothing waits forever or stays forever:

- the replica that accepted a job writes a heartbeat into its status every few seconds; a
  ``queued`` or ``running`` job whose heartbeat is older than ``stale_after_s`` (its replica
  or the ingress that submitted it died) reads as ``failed``, with that reason;
- :meth:`JobStore.sweep` (at replica start, then periodically) deletes jobs finished more than
  ``ttl_s`` ago, uploads that never became a job, and temporary files a killed writer left.

Job ids are minted here and checked like avatar ids (32 hex characters, inside the jobs
directory).
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dinet_platform.files import TMP_PREFIX, write_text
from dinet_platform.serving.avatars import AVATAR_ID

SPEC_FILE = "spec.json"
STATUS_FILE = "status.json"
OUTPUT_FILE = "out.mp4"
CANCEL_FILE = "cancel"
UNFINISHED = ("queued", "running")
UPLOAD_GRACE_S = 3600.0
"""A job directory without a spec this old is an upload whose request died: removed."""


class JobNotFound(KeyError):
    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "job not found"


@dataclass
class SweepReport:
    expired: int = 0
    abandoned_uploads: int = 0
    temp_files: int = 0
    stale: int = 0


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


class JobStore:
    def __init__(self, root: str | Path, stale_after_s: float = 60.0):
        self.root = Path(root).expanduser().resolve()
        self.stale_after_s = stale_after_s
        # a status is read, changed and written back: the heartbeat thread must not write
        # back a "running" it read just before the renderer wrote "done"
        self._status_lock = threading.Lock()

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
        now = time.time()
        write_text(folder / STATUS_FILE, json.dumps({"state": "queued", "submitted": now,
                                                     "heartbeat": now}, indent=1))
        write_text(folder / SPEC_FILE, json.dumps(spec, indent=1))

    def jobs(self) -> list[str]:
        """Ids of every submitted job."""
        if not self.root.is_dir():
            return []
        return [p.name for p in self.root.iterdir()
                if AVATAR_ID.match(p.name) and (p / SPEC_FILE).is_file()]

    def spec(self, job_id: str) -> dict[str, Any]:
        return _read_json(self.path(job_id) / SPEC_FILE)

    def status(self, job_id: str) -> dict[str, Any]:
        """The job's status; an unfinished job whose runner stopped beating is failed now."""
        status = _read_json(self.path(job_id) / STATUS_FILE)
        if status["state"] in UNFINISHED:
            silent = time.time() - float(status.get("heartbeat") or status.get("submitted", 0))
            if silent > self.stale_after_s:
                return self.set_status(job_id, "failed", error=(
                    f"the replica {'running' if status['state'] == 'running' else 'holding'} "
                    f"it stopped (no heartbeat for {silent:.0f} s): submit it again"))
        return status

    def set_status(self, job_id: str, state: str, **details: Any) -> dict[str, Any]:
        with self._status_lock:
            previous = _read_json(self.path(job_id) / STATUS_FILE)
            status = {**previous, "state": state, "updated": time.time(), **details}
            write_text(self.path(job_id) / STATUS_FILE, json.dumps(status, indent=1))
        return status

    def beat(self, job_id: str, **details: Any) -> None:
        """The runner is alive (and how far it got)."""
        with self._status_lock:
            try:
                previous = _read_json(self.path(job_id) / STATUS_FILE)
            except (JobNotFound, FileNotFoundError):
                return  # deleted meanwhile
            if previous["state"] in UNFINISHED:
                write_text(self.path(job_id) / STATUS_FILE, json.dumps(
                    {**previous, "heartbeat": time.time(), **details}, indent=1))

    def output(self, job_id: str) -> Path:
        return self.path(job_id) / OUTPUT_FILE

    def cancel(self, job_id: str) -> str:
        """Cancel an unfinished job (its runner stops at its next chunk and removes it) or
        delete a finished one; returns what happened: ``cancelled`` or ``deleted``."""
        folder = self.path(job_id)
        if _read_json(folder / STATUS_FILE)["state"] in UNFINISHED:
            write_text(folder / CANCEL_FILE, "")
            self.set_status(job_id, "cancelled")
            return "cancelled"
        self.remove(job_id)
        return "deleted"

    def cancelled(self, job_id: str) -> bool:
        try:
            return (self.path(job_id) / CANCEL_FILE).exists()
        except JobNotFound:
            return True  # deleted

    def remove(self, job_id: str) -> None:
        shutil.rmtree(self.root / job_id, ignore_errors=True)

    def sweep(self, ttl_s: float) -> SweepReport:
        """Delete finished jobs older than ``ttl_s``, abandoned uploads and a killed writer's
        temporary files; fail jobs whose runner died."""
        report = SweepReport()
        if not self.root.is_dir():
            return report
        now = time.time()
        for folder in self.root.iterdir():
            if not AVATAR_ID.match(folder.name) or not folder.is_dir():
                continue
            if not (folder / SPEC_FILE).is_file():
                if now - folder.stat().st_mtime > UPLOAD_GRACE_S:
                    shutil.rmtree(folder, ignore_errors=True)
                    report.abandoned_uploads += 1
                continue
            try:
                before = _read_json(folder / STATUS_FILE)["state"]
                status = self.status(folder.name)
            except (JobNotFound, FileNotFoundError, json.JSONDecodeError):
                continue
            report.stale += before in UNFINISHED and status["state"] == "failed"
            if status["state"] in UNFINISHED:
                continue
            if now - float(status.get("updated", now)) > ttl_s:
                self.remove(folder.name)
                report.expired += 1
                continue
            for leftover in folder.glob(f"{TMP_PREFIX}*"):
                leftover.unlink(missing_ok=True)
                report.temp_files += 1
        return report
