"""Dynamic batching for a service: concurrent requests become one engine call.

Requests are queued as they arrive; a batch closes when it holds ``max_rows`` rows or ``max_delay``
seconds after its first request, whichever comes first, and runs on one engine thread while the
next batch gathers. Requests are validated before they are queued, so one bad request never fails
its neighbours; an engine failure fails only the requests of its batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

Arrays = dict[str, np.ndarray]


class DynamicBatcher:
    """Gathers requests (dicts of arrays with the batch on axis 0) into engine calls of at most
    ``max_rows`` rows. ``run`` takes and returns such dicts; ``on_batch`` sees every batch's rows.

    Two batches are in flight at most: while the engine's thread runs one, a second thread stacks
    the next into the other of two reused buffer sets, so the engine does not wait for the copy.
    """

    IN_FLIGHT = 2

    def __init__(self, run: Callable[[Arrays], Arrays], max_rows: int, max_delay: float,
                 on_batch: Callable[[int], None] | None = None) -> None:  # fmt: skip
        self.run, self.max_rows, self.max_delay, self.on_batch = run, max_rows, max_delay, on_batch
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._carried: tuple[Arrays, asyncio.Future] | None = None
        self._engine = ThreadPoolExecutor(1, thread_name_prefix="clay-serve-engine")
        self._stacker = ThreadPoolExecutor(1, thread_name_prefix="clay-serve-stack")
        self._buffers: list[dict[str, np.ndarray]] = [{} for _ in range(self.IN_FLIGHT)]
        self._batches = 0

    async def submit(self, arrays: Arrays) -> Arrays:
        """The outputs for this request's rows, once its batch has run."""
        if self._task is None:  # created in the serving loop, on first use
            self._queue = asyncio.Queue()
            self._in_flight = asyncio.Semaphore(self.IN_FLIGHT)
            self._task = asyncio.create_task(self._gather())
        done = asyncio.get_running_loop().create_future()
        await self._queue.put((arrays, done))
        return await done

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for pool in (self._stacker, self._engine):
            pool.shutdown(wait=False, cancel_futures=True)

    async def _gather(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = self._carried or await self._queue.get()
            self._carried = None
            batch, rows = [first], _rows(first[0])
            deadline = loop.time() + self.max_delay
            while rows < self.max_rows:
                try:
                    item = await asyncio.wait_for(self._queue.get(), max(0.0, deadline - loop.time()))
                except asyncio.TimeoutError:
                    break
                if rows + _rows(item[0]) > self.max_rows:
                    self._carried = item  # opens the next batch
                    break
                batch.append(item)
                rows += _rows(item[0])
            live = [(arrays, done) for arrays, done in batch if not done.cancelled()]
            if live:
                await self._in_flight.acquire()
                buffers = self._buffers[self._batches % self.IN_FLIGHT]
                self._batches += 1
                asyncio.create_task(self._run(loop, live, buffers))

    async def _run(self, loop: asyncio.AbstractEventLoop, live: list, buffers: dict[str, np.ndarray]) -> None:
        try:
            if self.on_batch:
                self.on_batch(sum(_rows(arrays) for arrays, _ in live))
            requests = [arrays for arrays, _ in live]
            merged = requests[0] if len(requests) == 1 else await loop.run_in_executor(
                self._stacker, _stack_into, buffers, requests, self.max_rows)  # fmt: skip
            outputs = await loop.run_in_executor(self._engine, self.run, merged)
        except Exception as exc:  # noqa: BLE001 - handed to every request of the batch
            for _, done in live:
                if not done.done():
                    done.set_exception(exc)
            return
        finally:
            self._in_flight.release()
        start = 0
        for arrays, done in live:
            end = start + _rows(arrays)
            if not done.done():
                done.set_result({name: value[start:end] for name, value in outputs.items()})
            start = end


def _stack_into(buffers: dict[str, np.ndarray], requests: list[Arrays], max_rows: int) -> Arrays:
    """The requests' arrays one after another in reused buffers (a fresh 40 MB array per batch
    costs its page faults every time), as views of the rows they fill."""
    rows = sum(_rows(arrays) for arrays in requests)
    merged = {}
    for name, first in requests[0].items():
        buffer = buffers.get(name)
        if buffer is None or buffer.shape[1:] != first.shape[1:] or buffer.dtype != first.dtype:
            buffer = buffers[name] = np.empty((max_rows, *first.shape[1:]), first.dtype)
        np.concatenate([arrays[name] for arrays in requests], out=buffer[:rows])
        merged[name] = buffer[:rows]
    return merged


def _rows(arrays: Arrays) -> int:
    return len(next(iter(arrays.values())))
