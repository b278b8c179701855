"""Who may use a replica's model when: plain threading, no Ray.

A replica computes three kinds of work on one model: live windows (a caller waits for every
one), dub jobs (batch work, minutes long) and model loads (a hot swap). Two rules keep live
traffic responsive while the others run:

- :class:`ForwardGate`: a model load that traces modules excludes every forward, but waits
  for at most the forwards already running -- never for a whole dub job, because a dub takes
  the gate per chunk of frames, not per job.
- :class:`LivePriority`: a dub chunk starts only while no live window waits or computes (at
  most ``starvation_s`` late), and a live forward waits for at most the one chunk already
  running. Live and dub forwards never share the cores at the same time: on a CPU two
  concurrent forwards each run at about half speed, so a live window behind one short chunk
  finishes sooner than one running beside a long job.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class ForwardGate:
    """Many forwards at once, or one exclusive section (a pending one holds new forwards
    back, so it cannot starve)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._forwards = 0
        self._exclusive = False

    @contextmanager
    def forward(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._exclusive)
            self._forwards += 1
        try:
            yield
        finally:
            with self._cond:
                self._forwards -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._exclusive)
            self._exclusive = True
            self._cond.wait_for(lambda: self._forwards == 0)
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


class LivePriority:
    """Live windows before background chunks (see the module doc)."""

    def __init__(self, starvation_s: float = 1.0) -> None:
        self.starvation_s = starvation_s
        self._cond = threading.Condition()
        self._live = 0  # live windows between arrival and answer
        self._live_forwards = 0
        self._background = False
        self.background_waits = 0  # chunks that found live work and waited for it

    @contextmanager
    def live(self) -> Iterator[None]:
        """Around a live window's whole stay (queued and computing): chunks hold back."""
        with self._cond:
            self._live += 1
        try:
            yield
        finally:
            with self._cond:
                self._live -= 1
                self._cond.notify_all()

    @contextmanager
    def live_forward(self) -> Iterator[None]:
        """Around a live forward: waits for the background chunk already running."""
        with self._cond:
            self._cond.wait_for(lambda: not self._background)
            self._live_forwards += 1
        try:
            yield
        finally:
            with self._cond:
                self._live_forwards -= 1
                self._cond.notify_all()

    @contextmanager
    def background(self) -> Iterator[None]:
        """Around one background chunk: once no live window waits (or after
        ``starvation_s``), never beside a live forward or another chunk."""
        deadline = time.monotonic() + self.starvation_s
        with self._cond:
            if self._live:
                self.background_waits += 1
            while (self._background or self._live_forwards
                   or (self._live and time.monotonic() < deadline)):
                self._cond.wait(max(0.0, min(0.05, deadline - time.monotonic())) or 0.05)
            self._background = True
        try:
            yield
        finally:
            with self._cond:
                self._background = False
                self._cond.notify_all()
