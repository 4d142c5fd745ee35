"""The admission script calls of one event-loop turn, sent as one script call.

Redis spends on every script call, beyond the commands it runs, about as much again setting up
the call: the composed chunk runs from the top, creating each of its few dozen functions,
before the entry script's own lines (see ``lua/batch.lua``). Under load a replica ends many
requests in one turn of its event loop: their releases, lease reuses and output charges are
queued here and leave as one call of ``batch.lua``, which runs each entry script in turn, each
exactly as its own call would (same order, same atomic effects), and answers each caller with
its own reply or error. The channel already sends every call of a turn in one write; this
also makes them one script call. A call alone in its turn goes as its own script.

The first call of a turn waits one turn for the others to join before it is sent. Only one
call a request waits for is batched, the reuse that takes a quota charge: it waits that turn
more (microseconds on an idle loop, the length of a busy turn under load) for its share of
one call; the enqueue, on every other request's path, is not batched.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError

from fairgate.redis_client import Script
from fairgate.resp import Arg, reply_error

#: One queued call: its entry script, its arguments, the future of its reply.
_Call = tuple[str, Sequence[Arg], "asyncio.Future[Any]"]


class ScriptBatch:
    """Batches calls of the entry scripts ``alone`` names into calls of ``batch``."""

    def __init__(self, batch: Script, keys: list[str], alone: Mapping[str, Script]) -> None:
        self._batch = batch
        self._keys = keys
        self._alone = alone
        self._pending: list[_Call] = []
        self._orphans: set[asyncio.Task[None]] = set()

    async def call(self, entry: str, args: Sequence[Arg]) -> Any:
        """The reply of entry script ``entry`` called with ``args``, sent with the turn's other
        calls. The first call of a turn sends them all, after one turn; the others wait."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((entry, args, future))
        if len(self._pending) == 1:
            try:
                await asyncio.sleep(0)  # the turn's other calls join
            except asyncio.CancelledError:
                # the others must not wait for a caller that left: a task sends them
                task = asyncio.ensure_future(self._send(self._take()))
                self._orphans.add(task)
                task.add_done_callback(self._orphans.discard)
                raise
            await self._send(self._take())
        return await future

    async def call_all(self, entry: str, calls: Sequence[Sequence[Arg]]) -> list[Any]:
        """The replies of entry script ``entry`` called with each of ``calls``, sent at once as
        one call of the batch script (the caller gathered them; they do not wait for the turn's
        others). A call that failed answers its error (an exception) instead of raising it;
        a failure of the whole call raises."""
        flat: list[Arg] = []
        for args in calls:
            flat += [entry, len(args), *args]
        replies = await self._batch(self._keys, flat)
        return [reply_error(r) if isinstance(r, hiredis.ReplyError) else r for r in replies]

    def _take(self) -> list[_Call]:
        calls, self._pending = self._pending, []
        return calls

    async def _send(self, calls: list[_Call]) -> None:
        """Send ``calls``; every future gets its reply or error (never raises but to cancel)."""
        live = [call for call in calls if not call[2].done()]
        if not live:
            return
        try:
            if len(live) == 1:
                entry, args, _ = live[0]
                replies = [await self._alone[entry](self._keys, list(args))]
            else:
                flat: list[Arg] = []
                for entry, args, _ in live:
                    flat += [entry, len(args), *args]
                replies = await self._batch(self._keys, flat)
        except asyncio.CancelledError:
            lost = RedisConnectionError("the batch's sender stopped: its outcome is unknown")
            _fail(live, lost)
            raise
        except Exception as exc:  # noqa: BLE001 - every caller of the batch must hear it
            _fail(live, exc)
            return
        for (_, _, future), reply in zip(live, replies, strict=True):
            if future.done():
                continue
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(reply_error(reply))
            else:
                future.set_result(reply)


def _fail(calls: list[_Call], error: BaseException) -> None:
    for _, _, future in calls:
        if not future.done():
            future.set_exception(error)
            future.exception()  # retrieved here too: no warning if its caller left
