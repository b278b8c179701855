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

Before the first batch it waits for a full one, as ``@serve.batch`` would.

Plain asyncio, no Ray: the Serve model deployment owns one :class:`BatchQueue` per replica.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

Job = TypeVar("Job")
Result = TypeVar("Result")


class BatchQueue(Generic[Job, Result]):
    """``await queue.submit(job)`` returns ``compute([... job ...])``'s entry for ``job``;
    ``compute`` (blocking: it runs in a worker thread; or a coroutine function, awaited) gets
    a list of jobs and returns one result per job, in order. When ``compute`` raises for a
    batch of several jobs, each is computed again alone: only the job that fails alone gets
    the exception. ``weight(job)`` (e.g. its frames) bounds a batch's total by
    ``max_batch_weight``. ``in_flight`` > 1 lets that many batches compute at once (calls to
    a service with several replicas): a batch leaves as soon as one is free."""

    def __init__(self, compute: Callable[[list[Job]], Sequence[Result]], max_batch_size: int,
                 wait_s: float, weight: Callable[[Job], int] = lambda job: 1,
                 max_batch_weight: int | None = None, in_flight: int = 1):
        self.compute = compute
        self.max_batch_size = max_batch_size
        self.wait_s = wait_s
        self.weight = weight
        self.max_batch_weight = max_batch_weight
        self._pending: list[tuple[Job, asyncio.Future[Result]]] = []
        self._gathered: set[asyncio.Future[Result]] = set()  # not coming back when answered
        self._expected = max_batch_size  # callers to gather before the next batch
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
        self._pending.append((job, future))
        if gathered:
            self._gathered.add(future)
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
            batch = self._take_batch()
            if not batch:
                continue
            returning = sum(future not in self._gathered for _, future in batch)
            self._gathered.difference_update(future for _, future in batch)
            if self.in_flight == 1:
                await self._compute(batch)
                self._expected = returning + self._closed_loop_pending()
            else:  # the callers out are not coming back soon: take whoever is queued
                task = asyncio.get_running_loop().create_task(self._compute(batch))
                self._running.add(task)
                task.add_done_callback(self._running.discard)
                self._expected = 1

    def _take_batch(self) -> list[tuple[Job, asyncio.Future[Result]]]:
        """The next batch: queued jobs in order up to ``max_batch_size`` jobs and
        ``max_batch_weight`` (at least one job, whatever it weighs)."""
        batch, weight, taken = [], 0, 0
        for job, future in self._pending[: self.max_batch_size]:
            job_weight = self.weight(job)
            if batch and self.max_batch_weight is not None and (
                    weight + job_weight > self.max_batch_weight):
                break
            taken += 1
            if future.cancelled():
                self._gathered.discard(future)
            else:
                batch.append((job, future))
                weight += job_weight
        del self._pending[:taken]
        return batch

    async def _compute(self, batch: list[tuple[Job, asyncio.Future[Result]]]) -> None:
        try:
            jobs = [job for job, _ in batch]
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
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        else:
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

    def _closed_loop_pending(self) -> int:
        return len(self._pending) - len(self._gathered)

    async def _gather_company(self) -> None:
        """Wait up to ``wait_s`` until the callers expected back are queued."""
        expected = min(self._expected, self.max_batch_size)
        deadline = asyncio.get_running_loop().time() + self.wait_s
        while self._closed_loop_pending() < expected:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return
