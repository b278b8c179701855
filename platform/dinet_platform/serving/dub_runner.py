"""A replica's dub jobs as batch work beside the live traffic: plain threading, no Ray.

At most ``workers`` jobs render at once and at most ``queue`` more wait; a job beyond that
is refused when submitted (the API answers 503 + Retry-After), so a burst of long dubs can
neither pile up without bound nor hold the replica's request slots: the Serve call that
hands a job over returns as soon as it is queued. While a job waits or renders, a heartbeat
thread keeps its status fresh (see :mod:`.dub_jobs`); the renderer calls ``checkpoint``
after every chunk, which stops a cancelled job there.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from dinet_platform.serving.dub_jobs import JobNotFound, JobStore

logger = logging.getLogger(__name__)


class DubCancelled(Exception):
    """The job was cancelled while it rendered."""


Render = Callable[[str, Callable[[int], None]], None]
"""``render(job_id, checkpoint)``: renders the job, calling ``checkpoint(frames_done)``
between chunks."""


class DubRunner:
    def __init__(self, jobs: JobStore, render: Render, workers: int, queue: int,
                 heartbeat_s: float = 5.0):
        self.jobs = jobs
        self.render = render
        self.capacity = workers + queue
        self.heartbeat_s = heartbeat_s
        self.runner = f"{socket.gethostname()}:{os.getpid()}"
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dub")
        self._lock = threading.Lock()
        self._accepted: set[str] = set()
        self._stop = threading.Event()
        self._beats = threading.Thread(target=self._beat, name="dub-heartbeat", daemon=True)
        self._beats.start()

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._accepted)

    def submit(self, job_id: str) -> bool:
        """Queue ``job_id``; False (nothing queued) when the replica holds ``capacity``."""
        with self._lock:
            if len(self._accepted) >= self.capacity:
                return False
            self._accepted.add(job_id)
        self.jobs.beat(job_id, runner=self.runner)
        self._pool.submit(self._run, job_id)
        return True

    def _run(self, job_id: str) -> None:
        try:
            if self.jobs.cancelled(job_id):
                self.jobs.remove(job_id)
                return

            def checkpoint(frames_done: int) -> None:
                if self.jobs.cancelled(job_id):
                    raise DubCancelled(job_id)
                self.jobs.beat(job_id, frames_done=frames_done)

            self.render(job_id, checkpoint)
        except (DubCancelled, JobNotFound):
            self.jobs.remove(job_id)
        except Exception as exc:  # never leave a job "running" behind a dead thread
            logger.exception("dub job %s failed", job_id)
            with contextlib.suppress(JobNotFound, OSError):
                self.jobs.set_status(job_id, "failed", error=f"{type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                self._accepted.discard(job_id)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            with self._lock:
                accepted = list(self._accepted)
            for job_id in accepted:
                try:
                    self.jobs.beat(job_id)
                except OSError:
                    logger.warning("heartbeat of dub job %s failed", job_id, exc_info=True)

    def close(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
