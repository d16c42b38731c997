"""Recording off the caller's path: calls wait in a bounded queue and go out in batches.

A wrapped LLM call records through a :class:`~tallystick.sdk.recorder.Recorder`.
:meth:`Client.record <tallystick.sdk.client.Client.record>` returns once the sidecar has made
the record durable, about a millisecond on a Unix socket, which the caller would wait for on
every call. :class:`BackgroundRecorder` (and :class:`AsyncBackgroundRecorder` for asyncio)
returns at once and delivers in order, in batches, through the client and so through its
policy (the durable spool when the sidecar is unreachable)::

    with Client("unix:var/agents/me.sock") as sidecar, BackgroundRecorder(sidecar) as recorder:
        llm = wrap(OpenAI(), recorder=recorder)  # the record is even built on the sending thread
        ...
    # leaving the block flushes: every queued record is in the log, or spooled

The trade: a record still in the queue when the process dies is lost (the client's spool only
holds what reached the client). :meth:`~BackgroundRecorder.flush` at points that matter, and
always before exit (the context manager does). A full queue makes ``record`` wait for room;
nothing is dropped. A batch the sidecar refuses is retried one call at a time, so one bad
call cannot take its neighbours down; refused calls are kept in ``rejected`` and the next
``flush`` raises for them.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Final

from tallystick.verifier.errors import TallystickError
from tallystick.verifier.logentry import CallBody

from .client import AsyncClient, Client
from .errors import SidecarRejected

__all__ = ["AsyncBackgroundRecorder", "BackgroundRecorder", "RejectedCall"]

#: Calls per ``record_many``: the daemon's default batch cap is 1,000.
DEFAULT_BATCH: Final = 256
DEFAULT_MAX_QUEUED: Final = 10_000
#: How long the first queued call waits for others to share its RPC. A call queued in memory is
#: not durable either way; one RPC per call costs the agent's process (and the sidecar) several
#: times the CPU of a batch, which a busy agent pays in latency.
DEFAULT_LINGER_S: Final = 0.05


class RejectedCall(SidecarRejected):
    """A queued call the sidecar refused; ``call`` is the call, ``code`` the daemon's reason."""

    def __init__(self, call: CallBody, error: SidecarRejected) -> None:
        super().__init__(str(error), code=error.code, status=error.status)
        self.call = call


def _check_sizes(batch: int, max_queued: int) -> None:
    if not 1 <= batch <= max_queued:
        raise ValueError(f"background recorder: need 1 <= batch ({batch}) <= max_queued")


class BackgroundRecorder:
    """A :class:`~tallystick.sdk.recorder.Recorder` that hands calls to a sending thread.

    A batch goes out when ``batch`` calls are queued, ``linger_s`` after its first call, or at
    once on :meth:`flush`.

    :raises ValueError: ``batch`` not in ``1..max_queued``.
    """

    def __init__(
        self,
        client: Client,
        *,
        batch: int = DEFAULT_BATCH,
        max_queued: int = DEFAULT_MAX_QUEUED,
        linger_s: float = DEFAULT_LINGER_S,
    ) -> None:
        _check_sizes(batch, max_queued)
        self._client = client
        self._batch = batch
        self._max_queued = max_queued
        self._linger_s = linger_s
        self._flushing = 0  # threads waiting in flush(): send without lingering
        self._queue: deque[CallBody | Callable[[], CallBody | None]] = deque()
        self._sending = 0  # calls taken off the queue, not yet delivered
        self._changed = threading.Condition()
        self._closing = False
        self.rejected: list[RejectedCall] = []
        self._reported = 0
        self._failure: TallystickError | None = None
        self._thread = threading.Thread(
            target=self._run, name="tallystick-sdk-recorder", daemon=True
        )
        self._thread.start()

    def record(self, call: CallBody) -> None:
        """Queue ``call``; returns at once unless the queue is full (then waits for room).

        :raises TallystickError: the sending thread stopped on an error the client raised
            (e.g. the spool could not be written); calls queued after it are not sent.
        """
        self._put(call)

    def record_later(self, build: Callable[[], CallBody | None]) -> None:
        """Queue a record to be built on the sending thread (a wrapped call's recount and
        checks), in order with the rest; a build that returns None records nothing.

        :raises TallystickError: as :meth:`record`.
        """
        self._put(build)

    def _put(self, item: CallBody | Callable[[], CallBody | None]) -> None:
        with self._changed:
            while len(self._queue) >= self._max_queued and self._failure is None:
                self._changed.wait()
            self._raise_failure()
            self._queue.append(item)
            if len(self._queue) in (1, self._batch):
                self._changed.notify_all()

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every call queued so far is delivered (or spooled by the client).

        :raises TimeoutError: still sending after ``timeout`` seconds.
        :raises RejectedCall: the first call the sidecar refused since the last flush.
        :raises TallystickError: as :meth:`record`.
        """
        with self._changed:
            self._flushing += 1
            self._changed.notify_all()
            try:
                idle = self._changed.wait_for(
                    lambda: (not self._queue and not self._sending) or self._failure is not None,
                    timeout,
                )
            finally:
                self._flushing -= 1
            self._raise_failure()
            if not idle:
                raise TimeoutError(f"background recorder: {len(self._queue)} calls still queued")
            if self._reported < len(self.rejected):
                first = self.rejected[self._reported]
                self._reported = len(self.rejected)
                raise first

    def close(self) -> None:
        """Flush, then stop the sending thread (the client stays open).

        :raises: as :meth:`flush`.
        """
        try:
            self.flush()
        finally:
            with self._changed:
                self._closing = True
                self._changed.notify_all()
            self._thread.join()

    def __enter__(self) -> BackgroundRecorder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._queue or self._closing)
                if not self._queue:
                    return
                self._changed.wait_for(
                    lambda: len(self._queue) >= self._batch or self._closing or self._flushing,
                    self._linger_s,
                )
                items = [self._queue.popleft() for _ in range(min(self._batch, len(self._queue)))]
                self._sending = len(items)
                self._changed.notify_all()  # room for waiting record() calls
            failure: TallystickError | None = None
            rejected: list[RejectedCall] = []
            try:
                calls = [call for call in map(_built, items) if call is not None]
                rejected = _deliver(self._client, calls) if calls else []
            except TallystickError as exc:
                failure = exc
            except Exception as exc:  # a bug in a build: stop loudly, never hang flush()
                failure = TallystickError(
                    f"background recorder: building a record failed: {exc!r}",
                    code="sdk.record_build_failed",
                )
            with self._changed:
                self.rejected.extend(rejected)
                self._sending = 0
                self._failure = self._failure or failure
                self._changed.notify_all()
                if failure is not None:
                    return


def _built(item: CallBody | Callable[[], CallBody | None]) -> CallBody | None:
    return item if isinstance(item, CallBody) else item()


def _deliver(client: Client, calls: Sequence[CallBody]) -> list[RejectedCall]:
    """Send ``calls`` as one batch; if the sidecar refuses it, one by one. The refused ones."""
    try:
        client.record_many(calls)
        return []
    except SidecarRejected as exc:
        if len(calls) == 1:
            return [RejectedCall(calls[0], exc)]
    rejected = []
    for call in calls:
        try:
            client.record(call)
        except SidecarRejected as exc:
            rejected.append(RejectedCall(call, exc))
    return rejected


class AsyncBackgroundRecorder:
    """The asyncio form: an :class:`~tallystick.sdk.recorder.AsyncRecorder` whose ``record``
    queues, and a task that sends. Create it inside the event loop that will use it.

    :raises ValueError: as :class:`BackgroundRecorder`.
    """

    def __init__(
        self,
        client: AsyncClient,
        *,
        batch: int = DEFAULT_BATCH,
        max_queued: int = DEFAULT_MAX_QUEUED,
        linger_s: float = DEFAULT_LINGER_S,
    ) -> None:
        _check_sizes(batch, max_queued)
        self._client = client
        self._batch = batch
        self._linger_s = linger_s
        self._flushing = asyncio.Event()
        self._queue: asyncio.Queue[CallBody] = asyncio.Queue(max_queued)
        self.rejected: list[RejectedCall] = []
        self._reported = 0
        self._failure: TallystickError | None = None
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def record(self, call: CallBody) -> None:
        """Queue ``call`` (waits only while the queue is full).

        :raises TallystickError: as :meth:`BackgroundRecorder.record`.
        """
        if self._failure is not None:
            raise self._failure
        await self._queue.put(call)

    async def flush(self) -> None:
        """Wait until every call queued so far is delivered (or spooled by the client).

        :raises RejectedCall: as :meth:`BackgroundRecorder.flush`.
        :raises TallystickError: as :meth:`record`.
        """
        self._flushing.set()
        done = asyncio.ensure_future(self._queue.join())
        try:
            await asyncio.wait({done, self._task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            done.cancel()
            self._flushing.clear()
        if self._failure is not None:
            raise self._failure
        if self._reported < len(self.rejected):
            first = self.rejected[self._reported]
            self._reported = len(self.rejected)
            raise first

    async def close(self) -> None:
        """Flush, then stop the sending task (the client stays open).

        :raises: as :meth:`flush`.
        """
        try:
            await self.flush()
        finally:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def __aenter__(self) -> AsyncBackgroundRecorder:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _run(self) -> None:
        while True:
            calls = [await self._queue.get()]
            deadline = asyncio.get_running_loop().time() + self._linger_s
            while len(calls) < self._batch:
                if not self._queue.empty():
                    calls.append(self._queue.get_nowait())
                    continue
                left = deadline - asyncio.get_running_loop().time()
                if self._flushing.is_set() or left <= 0:
                    break
                try:
                    calls.append(await asyncio.wait_for(self._queue.get(), left))
                except TimeoutError:
                    break
            try:
                self.rejected.extend(await _deliver_async(self._client, calls))
            except TallystickError as exc:
                self._failure = exc
                return
            finally:
                for _ in calls:
                    self._queue.task_done()


async def _deliver_async(client: AsyncClient, calls: Sequence[CallBody]) -> list[RejectedCall]:
    try:
        await client.record_many(calls)
        return []
    except SidecarRejected as exc:
        if len(calls) == 1:
            return [RejectedCall(calls[0], exc)]
    rejected = []
    for call in calls:
        try:
            await client.record(call)
        except SidecarRejected as exc:
            rejected.append(RejectedCall(call, exc))
    return rejected
