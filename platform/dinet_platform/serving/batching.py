"""Opportunistic batching for a compute-bound model: one forward at a time, and every caller
that arrived while it ran goes into the next one.

Ray Serve's ``@serve.batch`` (2.60) closes a batch ``batch_wait_timeout_s`` after its first
request and queues closed batches until the model is free. Under load a busy model therefore
still gets only the requests that arrived within one such window: measured with 8 callers
against a 120 ms model, batches averaged 2 requests, and the replica computed 4x as many
forwards as it needed. Here a batch closes when the model can take it and the callers expected
back are in (below): everything that queued meanwhile, up to ``max_batch_size``.

Who to wait for: callers of a live avatar run in a closed loop (the next window is sent when
the last one returns), so the callers a batch answered are the ones coming back. Before each
batch the queue waits, up to ``wait_s``, until as many callers are queued as the previous batch
answered plus those that were already waiting (capped at ``max_batch_size``):

- a lone caller is never held (``wait_s`` per request was a quarter of a lone 1-frame request's
  time on 2 cores);
- 8 callers that split into two groups of 4 (one computing while the other queues) are merged
  again, instead of alternating half-size batches forever;
- under overload the queue already holds a full batch and nothing waits;
- callers that a caller gathered already (``submit(job, gathered=True)``: the ingress's live
  sessions, whose next windows come with their audio, not when this batch returns) are
  neither waited for nor counted as the callers expected back: a lone window after a batch
  of several waited ``wait_s`` for company the ingress had gathered already, which made 2
  live sessions burstier than 4.

Before the first batch it waits for a full one, as ``@serve.batch`` would (unless a caller
gathered its company already).

Plain asyncio, no Ray: the Serve model deployment owns one :class:`BatchQueue` per replica.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Sequence
from typing import Generic, NamedTuple, TypeVar

Job = TypeVar("Job")
Result = TypeVar("Result")


class _Queued(NamedTuple, Generic[Job, Result]):
    job: Job
    future: asyncio.Future[Result]
    gathered: bool  # gathered by its caller: not coming back when answered


class BatchQueue(Generic[Job, Result]):
    """``await queue.submit(job)`` returns ``compute([... job ...])``'s entry for ``job``;
    ``compute`` (blocking: it runs in a worker thread; or a coroutine function, awaited) gets
    a list of jobs and returns one result per job, in order. When ``compute`` raises for a
    batch of several jobs, each is computed again alone: only the job that fails alone gets
    the exception. ``weight(job)`` (e.g. its frames) bounds a batch's total by
    ``max_batch_weight``.

    ``in_flight`` > 1 lets that many batches compute at once (calls to a service with several
    replicas; forwards on a CPU's cores side by side): a batch leaves as soon as a slot is
    free, and what is queued is shared evenly among the free slots (4 windows and 2 free
    slots: two batches of 2 computing at once, not one of 4 while the other slot idles)."""

    def __init__(self, compute: Callable[[list[Job]], Sequence[Result]], max_batch_size: int,
                 wait_s: float, weight: Callable[[Job], int] = lambda job: 1,
                 max_batch_weight: int | None = None, in_flight: int = 1):
        self.compute = compute
        self.max_batch_size = max_batch_size
        self.wait_s = wait_s
        self.weight = weight
        self.max_batch_weight = max_batch_weight
        self._pending: list[_Queued[Job, Result]] = []
        self._expected: int | None = None  # callers to gather before the next batch
        self._arrived = asyncio.Event()
        self._worker: asyncio.Task | None = None
        self.in_flight = in_flight
        self._running: set[asyncio.Task] = set()

    def configure(self, max_batch_size: int, wait_s: float,
                  max_batch_weight: int | None = None) -> None:
        self.max_batch_size, self.wait_s = max_batch_size, wait_s
        self.max_batch_weight = max_batch_weight

    async def submit(self, job: Job, gathered: bool = False) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._pending.append(_Queued(job, future, gathered))
        self._arrived.set()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._run())
        return await future

    async def _run(self) -> None:
        while True:
            while len(self._running) >= self.in_flight:
                await asyncio.wait(self._running, return_when=asyncio.FIRST_COMPLETED)
            await self._gather_company()
            if not self._pending:
                return
            batch = self._take_batch(self.in_flight - len(self._running))
            if not batch:
                continue
            if self.in_flight == 1:
                await self._compute(batch)
                self._expected = _closed_loop(batch) + _closed_loop(self._pending)
            else:  # the callers out are not coming back soon: take whoever is queued
                task = asyncio.get_running_loop().create_task(self._compute(batch))
                self._running.add(task)
                task.add_done_callback(self._running.discard)
                self._expected = 0

    def _take_batch(self, free_slots: int) -> list[_Queued[Job, Result]]:
        """The next batch: queued jobs in order up to ``max_batch_size`` jobs, an even share
        of the queue among ``free_slots``, and ``max_batch_weight`` (at least one job,
        whatever it weighs)."""
        share = -(-len(self._pending) // max(1, free_slots))
        batch, weight, taken = [], 0, 0
        for queued in self._pending[: min(self.max_batch_size, share)]:
            job_weight = self.weight(queued.job)
            if batch and self.max_batch_weight is not None and (
                    weight + job_weight > self.max_batch_weight):
                break
            taken += 1
            if not queued.future.cancelled():
                batch.append(queued)
                weight += job_weight
        del self._pending[:taken]
        return batch

    async def _compute(self, batch: list[_Queued[Job, Result]]) -> None:
        try:
            jobs = [queued.job for queued in batch]
            if inspect.iscoroutinefunction(self.compute):  # e.g. a call to another service
                results = await self.compute(jobs)
            else:
                results = await asyncio.to_thread(self.compute, jobs)
            if len(results) != len(batch):
                raise RuntimeError(f"compute returned {len(results)} results for "
                                   f"{len(batch)} jobs")
        except Exception as exc:
            if len(batch) > 1:  # find the job that failed: the others get their results
                for item in batch:
                    await self._compute([item])
                return
            for queued in batch:
                if not queued.future.done():
                    queued.future.set_exception(exc)
        else:
            for queued, result in zip(batch, results, strict=True):
                if not queued.future.done():
                    queued.future.set_result(result)

    async def _gather_company(self) -> None:
        """Wait up to ``wait_s`` until the callers expected back are queued."""
        expected = self._expected
        if expected is None:  # the first batch
            gathered = any(queued.gathered for queued in self._pending)
            expected = 0 if gathered else self.max_batch_size
        expected = min(expected, self.max_batch_size)
        deadline = asyncio.get_running_loop().time() + self.wait_s
        while _closed_loop(self._pending) < expected:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return


def _closed_loop(queued: list[_Queued]) -> int:
    """The callers among ``queued`` who come back once answered (not gathered ones)."""
    return sum(not item.gathered for item in queued)
