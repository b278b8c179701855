"""BatchQueue: callers that arrive while the model computes go together into its next batch."""

from __future__ import annotations

import asyncio
import threading

import pytest
from dinet_platform.serving.batching import BatchQueue

pytestmark = pytest.mark.unit


class Model:
    """A compute function that records its batches and can be held mid-batch."""

    def __init__(self, fail_on: int | None = None):
        self.batches: list[list[int]] = []
        self.started = threading.Event()
        self.release = threading.Event()
        self.release.set()
        self.fail_on = fail_on

    def __call__(self, jobs: list[int]) -> list[int]:
        self.batches.append(list(jobs))
        self.started.set()
        self.release.wait(5)
        if self.fail_on in jobs:
            raise ValueError(f"bad job {self.fail_on}")
        return [10 * job for job in jobs]


async def held_forward(model: Model) -> tuple[BatchQueue, asyncio.Task]:
    """A queue whose first forward (job 0) is running and held until ``model.release``."""
    model.release.clear()
    queue = BatchQueue(model, max_batch_size=8, wait_s=0.0)
    first = asyncio.create_task(queue.submit(0))
    await asyncio.to_thread(model.started.wait, 5)
    return queue, first


def test_callers_arriving_during_a_forward_share_the_next_batch():
    async def main():
        model = Model()
        queue, first = await held_forward(model)
        rest = [asyncio.create_task(queue.submit(i)) for i in range(1, 6)]
        await asyncio.sleep(0.05)  # all five queue behind the running forward
        model.release.set()
        return await first, await asyncio.gather(*rest), model.batches

    first, rest, batches = asyncio.run(main())
    assert batches == [[0], [1, 2, 3, 4, 5]]
    assert first == 0 and rest == [10, 20, 30, 40, 50]  # each caller gets its own result


def test_an_idle_model_waits_for_concurrent_callers_up_to_the_batch_size():
    async def main():
        model = Model()
        queue = BatchQueue(model, max_batch_size=4, wait_s=0.2)
        results = await asyncio.gather(*(queue.submit(i) for i in range(6)))
        return results, model.batches

    results, batches = asyncio.run(main())
    assert results == [0, 10, 20, 30, 40, 50]
    assert batches == [[0, 1, 2, 3], [4, 5]]  # full at 4; the rest right after


def test_the_first_batch_waits_for_company_only_up_to_the_wait():
    """Before its first batch the queue waits for a full one, but no longer than ``wait_s``:
    two callers of eight go ahead together when the wait ends (not held for six more), and
    the lone caller after them, expected with company (the last batch had two), goes ahead
    alone when its wait ends."""

    async def main():
        model = Model()
        queue = BatchQueue(model, max_batch_size=8, wait_s=0.05)
        pair = await asyncio.gather(queue.submit(1), queue.submit(2))
        lone = await queue.submit(3)
        return pair, lone, model.batches

    pair, lone, batches = asyncio.run(main())
    assert batches == [[1, 2], [3]]
    assert pair == [10, 20] and lone == 30


def test_an_idle_model_waits_for_as_many_callers_as_its_last_batch_had():
    """Closed-loop callers: the three answered together come back (at different times) and
    are batched together again, without waiting for a fourth; a caller whose last batch was
    alone is never held."""

    async def main():
        model = Model()
        queue = BatchQueue(model, max_batch_size=8, wait_s=1.0)
        await asyncio.gather(*(queue.submit(i) for i in range(3)))  # waits for 8, gets 3

        async def after(seconds: float, job: int) -> int:
            await asyncio.sleep(seconds)
            return await queue.submit(job)

        await asyncio.gather(queue.submit(3), after(0.05, 4), after(0.05, 5), after(0.5, 6))
        lone = BatchQueue(model, max_batch_size=8, wait_s=0.0)
        await lone.submit(7)  # a batch of one...
        lone.configure(max_batch_size=8, wait_s=30.0)
        # ...so its next lone call is not held for the (long) wait: it is computing before
        # anyone else arrives (a few turns of the event loop, no clock), and those who come
        # meanwhile go together with its caller's next call into the batch after it
        model.release.clear()
        eight = asyncio.create_task(lone.submit(8))
        for _ in range(5):
            await asyncio.sleep(0)
        meanwhile = [asyncio.create_task(lone.submit(job)) for job in (9, 10)]
        model.release.set()
        result = await eight
        back = await lone.submit(11)
        return [result, *await asyncio.gather(*meanwhile), back], model.batches

    results, batches = asyncio.run(main())
    assert batches == [[0, 1, 2], [3, 4, 5], [6], [7], [8], [9, 10, 11]]
    assert results == [80, 90, 100, 110]


def test_gathered_callers_are_not_waited_for():
    """Windows the ingress gathered (live sessions) come back with their audio, not when their
    batch returns: after a batch of two, one gathered window is computed at once instead of
    waiting ``wait_s`` for a second; a closed-loop caller in that batch is still waited for."""

    async def main():
        model = Model()
        queue = BatchQueue(model, max_batch_size=2, wait_s=0.0)
        await asyncio.gather(queue.submit(0, gathered=True), queue.submit(1, gathered=True))
        queue.configure(max_batch_size=2, wait_s=30.0)
        alone = await asyncio.wait_for(queue.submit(2, gathered=True), 10)
        mixed = BatchQueue(model, max_batch_size=2, wait_s=0.0)
        await asyncio.gather(mixed.submit(3, gathered=True), mixed.submit(4))
        mixed.configure(max_batch_size=2, wait_s=30.0)
        first = asyncio.create_task(mixed.submit(5, gathered=True))
        for _ in range(5):
            await asyncio.sleep(0)
        held = not first.done()  # waiting for caller 4, who comes back
        await mixed.submit(6)
        return alone, held, await first, model.batches

    alone, held, first, batches = asyncio.run(main())
    assert alone == 20 and held and first == 50
    assert batches == [[0, 1], [2], [3, 4], [5, 6]]


def test_two_groups_of_callers_are_merged_into_one_batch():
    """One caller computing, three queued behind it: the next batch waits for the one who
    was answered to come back, rather than alternating a batch of 3 and a batch of 1."""

    async def main():
        model = Model()
        queue, first = await held_forward(model)
        queue.configure(max_batch_size=8, wait_s=5.0)
        queued = [asyncio.create_task(queue.submit(i)) for i in (1, 2, 3)]
        await asyncio.sleep(0.05)
        model.release.set()
        await first
        back = await queue.submit(4)  # job 0's caller, with its next request
        return back, await asyncio.gather(*queued), model.batches

    back, queued, batches = asyncio.run(main())
    assert batches == [[0], [1, 2, 3, 4]]
    assert back == 40 and queued == [10, 20, 30]


def test_a_failing_caller_fails_alone_and_the_queue_keeps_serving():
    """The batch is computed again caller by caller: only the one that fails alone gets the
    error (serving hardening, finding 6)."""
    async def main():
        model = Model(fail_on=2)
        queue = BatchQueue(model, max_batch_size=8, wait_s=0.05)
        results = await asyncio.gather(*(queue.submit(i) for i in (1, 2, 3)),
                                       return_exceptions=True)
        after = await queue.submit(4)
        return results, after

    results, after = asyncio.run(main())
    assert results[0] == 10 and results[2] == 30
    assert isinstance(results[1], ValueError) and "bad job 2" in str(results[1])
    assert after == 40


def test_a_batch_holds_no_more_frames_than_its_budget():
    """Callers weighed by their frames: a batch closes before the budget would be passed (a
    caller heavier than the budget alone still goes through, alone)."""
    seen: list[list[int]] = []

    def compute(jobs: list[int]) -> list[int]:
        seen.append(list(jobs))
        return [job * 10 for job in jobs]

    async def main():
        queue = BatchQueue(compute, max_batch_size=8, wait_s=0.05, weight=lambda job: job,
                           max_batch_weight=6)
        return await asyncio.gather(*(queue.submit(j) for j in (1, 2, 3, 9, 4)))

    assert asyncio.run(main()) == [10, 20, 30, 90, 40]
    assert all(sum(batch) <= 6 or len(batch) == 1 for batch in seen), seen
    assert [9] in seen


def test_a_cancelled_caller_is_left_out_of_the_batch():
    async def main():
        model = Model()
        queue, first = await held_forward(model)
        gone = asyncio.create_task(queue.submit(1))
        kept = asyncio.create_task(queue.submit(2))
        await asyncio.sleep(0.01)
        gone.cancel()
        model.release.set()
        await first
        with pytest.raises(asyncio.CancelledError):
            await gone
        return await kept, model.batches

    kept, batches = asyncio.run(main())
    assert kept == 20 and batches == [[0], [2]]


def test_an_async_compute_batches_the_callers_of_a_call_in_flight():
    """The ingress gathers live sessions with the same queue around an awaited call: callers
    that arrive while one call is out go together in the next."""
    calls: list[list[int]] = []

    async def remote(jobs: list[int]) -> list[int]:
        calls.append(jobs)
        await asyncio.sleep(0.05)
        return [2 * job for job in jobs]

    async def main() -> list[int]:
        queue = BatchQueue(remote, max_batch_size=8, wait_s=0.0)
        first = asyncio.ensure_future(queue.submit(0))
        await asyncio.sleep(0.01)  # the first call is out
        rest = [asyncio.ensure_future(queue.submit(i)) for i in range(1, 5)]
        return await asyncio.gather(first, *rest)

    assert asyncio.run(main()) == [0, 2, 4, 6, 8]
    assert calls == [[0], [1, 2, 3, 4]]


def test_forwards_side_by_side_share_the_queue_and_never_wait_for_gathered_company():
    """``in_flight`` 2 (a replica's ``parallel_forwards``): 4 windows the ingress gathered go
    out at once as two batches of 2 computing together, not one of 4 beside an idle slot;
    and a window arriving while both compute goes into whichever frees first."""
    running, most_running = 0, 0
    lock = threading.Lock()
    batches: list[list[int]] = []
    release = threading.Event()

    def model(jobs: list[int]) -> list[int]:
        nonlocal running, most_running
        with lock:
            batches.append(list(jobs))
            running += 1
            most_running = max(most_running, running)
        release.wait(5)
        with lock:
            running -= 1
        return [10 * job for job in jobs]

    async def main() -> list[int]:
        queue = BatchQueue(model, max_batch_size=8, wait_s=5.0, in_flight=2)
        began = asyncio.get_running_loop().time()
        gathered = [asyncio.ensure_future(queue.submit(i, gathered=True)) for i in range(4)]
        while len(batches) < 2:
            await asyncio.sleep(0.01)
        late = asyncio.ensure_future(queue.submit(4, gathered=True))
        await asyncio.sleep(0.05)
        assert len(batches) == 2  # both slots busy: the late window waits for one
        release.set()
        results = await asyncio.gather(*gathered, late)
        assert asyncio.get_running_loop().time() - began < 2.0  # wait_s (5 s) never ran out
        return results

    assert asyncio.run(main()) == [0, 10, 20, 30, 40]
    assert sorted(batches[:2]) == [[0, 1], [2, 3]] and batches[2] == [4]
    assert most_running == 2
