"""Admission as one gateway replica sees it: ask for a grant, wait fairly, hold a lease.

``acquire`` queues a request in Redis (one script call, which often grants it at once) and,
if it must wait, waits for its grant. Grants reach the waiting replica through Redis pub/sub;
a periodic upkeep also polls for grants of local waiters, so a lost message delays a request
by at most ``upkeep_interval_s`` and never strands it. The upkeep also reclaims what dead
replicas left behind, dispatches, and renews this replica's queued entries and leases (so that
they expire, and their capacity returns, only if this replica dies).

A request of a tenant with quotas carries its charge on its ticket: the script call that queues
or runs it takes the charge first (refusing it, 429, with nothing else changed), and the call that
releases its lease or passes it on corrects it to the tokens used. Such a request taking over a
held lease waits for that call (a request without quotas does not), since its charge must be
taken before it runs.

Every grant ends in exactly one release: the gateway releases in a ``finally``; a waiter whose
client leaves withdraws, and if its grant raced the withdrawal, releases it at once. A release
Redis did not confirm (unreachable, or its answer lost) is sent again every half second until Redis
answers, its lease renewed meanwhile, so that its quota correction is not lost: the retried
correction applies only if the first release had not run (``QuotaPart.retried``). While
nothing waits, a lease that ended well may first pass to the next request of its flow on this
replica (see :mod:`admission.reuse`); the last request to hold it releases it.

With Redis unreachable, ``fail_mode: closed`` answers 503 and ``fail_mode: open`` admits under
per-replica limits (see :mod:`admission.local`), loudly; both recover on their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import replace
from functools import partial
from typing import Any

from redis.exceptions import RedisError

from admission.accrual import ChargeAccrual
from admission.domain import backend_load, publish_config, set_drained
from admission.errors import AdmissionUnavailable, QueueFull, QueueTimeout
from admission.lease import Lease
from admission.local import LocalLimits
from admission.policy import AdmissionPolicy
from admission.quota import Charge, QuotaAsk, QuotaExceeded, QuotaPart, merged
from admission.reuse import Flow, HeldLease, LeaseShelf
from admission.scripts import AT_ONCE, AdmissionScripts, Decision, QueuePlace
from admission.ticket import Ticket
from fairgate.keys import AdmissionKeys
from fairgate.pubsub import Subscription
from fairgate.redis_client import RedisClient, text
from fairgate.settings import Settings, TenantSettings
from fairgate.tasks import cancel_all

log = logging.getLogger(__name__)

_TIMEOUT = "!timeout"
_LOST = "!lost"
#: Reuse calls (made off the request path) that may be in flight at once; past this, requests
#: take the path that waits for Redis, so a replica cannot run ahead of what Redis has recorded.
MAX_REUSES_IN_FLIGHT = 64
#: The grant listener wakes at least this often (a quiet channel is not a dead one).
LISTEN_WAKE_S = 1.0
#: How long a grant heard before its waiter registered is kept for it.
EARLY_GRANT_KEPT_S = 5.0
#: Releases Redis did not confirm, kept to be sent again; past this many (a long outage under
#: load) the oldest are dropped: their leases expire with the TTL, their corrections are lost.
MAX_UNRELEASED = 10_000
#: Releases sent again at once when Redis answers again (the channel pipelines them).
RELEASE_AGAIN_BATCH = 64
#: How often failed releases are sent again (or at the upkeep's interval, if shorter).
RELEASE_AGAIN_EVERY_S = 0.5

#: Hears of a request's quota charge as soon as admission took it (before it may wait).
Charged = Callable[[Charge], None]
#: Hears where a request stood on arrival (:class:`~admission.scripts.QueuePlace`).
Placed = Callable[[QueuePlace], None]


class Admission:
    """The admission client of one gateway replica."""

    def __init__(
        self,
        redis: RedisClient,
        settings: Settings,
        tenants: Callable[[], Mapping[str, TenantSettings]] | None = None,
    ) -> None:
        """``tenants`` gives the tenants as they are now (the tenant directory's, which the
        admin API changes); the settings file's if not given."""
        config = settings.admission
        self.owner = uuid.uuid4().hex[:16]
        self.keys = AdmissionKeys.of(settings.redis.key_prefix)
        self.scripts = AdmissionScripts(
            redis,
            self.keys.prefix,
            int(config.lease_ttl_s * 1000),
            config.max_grants_per_call,
            AdmissionPolicy(order=config.policy),
        )
        self._redis = redis
        self._settings = settings
        self._tenants = tenants or (lambda: settings.tenants)
        self._config = config
        self._waiters: dict[str, asyncio.Future[str]] = {}
        self._due: dict[str, float] = {}  # a waiter's queue deadline (loop time)
        #: grants heard on pub/sub for requests not waiting yet: backend, when heard
        self._early: dict[str, tuple[str, float]] = {}
        self._leases: set[str] = set()
        #: releases Redis did not confirm: request id -> (service used, quota correction)
        self._unreleased: dict[str, tuple[float | None, QuotaPart | None]] = {}
        self._releasing_again: asyncio.Task[None] | None = None
        self._held: dict[str, asyncio.TimerHandle] = {}  # leases Redis holds for a next request
        self._local = LocalLimits(settings, self._tenants)
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Future[None]] = set()
        self._warned_at = 0.0
        self._shelf = LeaseShelf(config.lease_reuse_s, self._let_go)
        self._may_reuse = False  # the last word from Redis: nothing waits anywhere
        self._reusing = 0  # reuse calls in flight
        #: streamed output charged and not sent yet, sent every charge_interval_s
        self._accrual = ChargeAccrual(config.charge_interval_s, self._charge_all)
        self._reusable_backends = {
            name
            for name, (_, backend) in settings.backends().items()
            if backend.max_prefill_tokens is None
        }

    async def start(self) -> None:
        try:
            await publish_config(self._redis, self.keys, self._settings, self._tenants())
            await self.scripts.preload()
        except RedisError as exc:
            log.warning("could not publish admission config to Redis: %s", exc)
        self._tasks = [
            asyncio.create_task(self._listen(), name="admission-grants"),
            asyncio.create_task(self._upkeep(), name="admission-upkeep"),
        ]

    async def stop(self) -> None:
        """Release every lease held for reuse, finish what runs in the background, stop."""
        self._may_reuse = False
        self._let_go_all()
        for request_id, timer in list(self._held.items()):
            timer.cancel()
            self._end_hold(request_id)
        if self._background:
            await asyncio.wait(set(self._background), timeout=self._settings.redis.timeout_s)
        await cancel_all([*self._tasks, self._releasing_again])
        await self._accrual.close()
        with contextlib.suppress(RedisError, OSError):
            await self._release_again()

    # ------------------------------------------------------------------------- acquiring

    async def acquire(
        self, ticket: Ticket, charged: Charged | None = None, placed: Placed | None = None
    ) -> Lease:
        """Wait until the request may run, in fair order (429: queue full, or waited too long).

        A ticket's quota charge is taken first (429 :class:`~admission.quota.QuotaExceeded` if
        over a quota); ``charged`` hears of it as soon as it is taken, so that a request refused
        or abandoned later can give its tokens back. ``placed`` hears where the request stood
        on arrival (before it waits, so a request that times out has one too).
        """
        if self._may_reuse and not self._waiters and self._reusing < MAX_REUSES_IN_FLIGHT:
            held = self._shelf.take(_flow(ticket), ticket.tokens, ticket.prefer)
            if held is not None:
                lease = await self._take_over(held, ticket, charged)
                if lease is not None:
                    _tell(placed, AT_ONCE)  # a lease passes on only while nothing waits
                    return lease
        # The queue deadline counts from before the enqueue, so that it never falls after the
        # one Redis keeps (counted from the enqueue): the replica times its waiter out first.
        due = asyncio.get_running_loop().time() + ticket.timeout_s
        asking = asyncio.ensure_future(self._ask(ticket))
        try:
            outcome = await asyncio.shield(asking)
        except asyncio.CancelledError:
            # The client left while the script ran: whatever it decided must be undone.
            asking.add_done_callback(lambda done: self._abandon(ticket.request_id, done))
            raise
        except RedisError as exc:
            return self._without_redis(ticket, exc)
        if outcome.quota:
            _took(ticket, outcome, charged)  # raises QuotaExceeded if refused (nothing changed)
        self._heard(outcome)
        if outcome.state in ("granted", "queued", "full"):
            _tell(placed, outcome.place)
        if outcome.state == "granted":
            return self._lease(ticket.request_id, outcome.backend, ticket)
        if outcome.state == "full":
            raise QueueFull(ticket.tenant)
        if outcome.state != "queued":
            raise RuntimeError(f"the enqueue script answered {outcome.state!r}")
        return await self._wait(ticket, due)

    async def _ask(self, ticket: Ticket) -> Decision:
        outcome = await self.scripts.enqueue(ticket, self.owner)
        if outcome.state in ("unknown_tenant", "unknown_pool"):
            # Redis lost its data (a restart without persistence): publish ours, try again.
            await publish_config(self._redis, self.keys, self._settings, self._tenants())
            outcome = await self.scripts.enqueue(ticket, self.owner)
        return outcome

    def _abandon(self, request_id: str, asking: asyncio.Future[Decision]) -> None:
        """Undo the enqueue of a request whose client left before it answered."""
        if asking.cancelled() or asking.exception() is not None:
            return
        outcome = asking.result()
        self._resolve(outcome.grants)
        if outcome.state in ("granted", "queued"):
            self._spawn(self._undo(request_id))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run admission bookkeeping apart from any request (kept referenced; awaited at stop)."""
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _undo(self, request_id: str) -> None:
        await self._withdraw(request_id)  # leaves the queue if it is still queued
        await self.release(request_id, None)  # frees its lease if it was granted (else a no-op)

    async def _wait(self, ticket: Ticket, due: float) -> Lease:
        request_id = ticket.request_id
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiters[request_id] = future
        self._due[request_id] = due
        early = self._early.pop(request_id, None)
        if early is not None:  # granted, and told so, before its enqueue's answer arrived
            future.set_result(early[0])
        try:
            async with asyncio.timeout_at(due):
                backend = await future
        except TimeoutError:
            backend = await self._withdraw(request_id) or _TIMEOUT
        except asyncio.CancelledError:  # the client went away while queued
            granted = await asyncio.shield(self._withdraw(request_id))
            if granted:
                await asyncio.shield(self.release(request_id, None))
            raise
        finally:
            self._waiters.pop(request_id, None)
            self._due.pop(request_id, None)
        if backend == _TIMEOUT:
            raise QueueTimeout(ticket.tenant, ticket.timeout_s)
        if backend == _LOST:
            raise AdmissionUnavailable("The queued request was lost; please retry.")
        return self._lease(request_id, backend, ticket)

    async def _withdraw(self, request_id: str) -> str | None:
        """Leave the queue; the backend if the request was granted meanwhile (a lease to use)."""
        try:
            outcome = await self.scripts.cancel(request_id)
        except RedisError:
            return None  # the entry expires with the lease TTL
        self._resolve(outcome.grants)
        return outcome.backend if outcome.state == "leased" else None

    def _lease(self, lease_id: str, backend: str, ticket: Ticket) -> Lease:
        self._leases.add(lease_id)
        flow = _flow(ticket)
        return Lease(
            lease_id,
            backend,
            self._charge,
            self._end,
            flow,
            ticket.tokens,
            ticket.quota,
            self._accrual.add,
        )

    async def _take_over(
        self, held: HeldLease, ticket: Ticket, charged: Charged | None
    ) -> Lease | None:
        """Pass a held lease to ``ticket``'s request, which runs at once, its reuse recorded in
        the background, unless it has quotas its lease's credit does not cover: then it waits
        for the reuse call that takes its charge. None if the lease was gone."""
        ask = ticket.quota
        if ask is None:
            self._spawn(self._reuse(held, ticket))
            return self._lease(held.lease_id, held.backend, ticket)
        try:
            credit = await _credit_of(held)
        except asyncio.CancelledError:  # the client left: the lease goes back, credit and all
            self._let_go(held)
            raise
        if credit is None or not credit.fits(ask):  # its reuse call gives the credit back
            return await self._reuse_charged(held, ticket, charged)
        charge, spare = credit.spent_on(ask)
        spent = replace(held, correction=merged(held.correction, spare))
        self._spawn(self._reuse(spent, replace(ticket, quota=None), spends_credit=True))
        if charged is not None:
            charged(charge)
        return self._lease(held.lease_id, held.backend, ticket)

    async def _take_credit(self, lease_id: str, ask: QuotaAsk, tokens: int) -> Charge | None:
        """Take a credit on a held lease: ``ask``'s limits, one request and ``tokens`` (the
        lease's), kept on the lease in Redis. None if the quotas had no room for it (see
        :meth:`QuotaAsk.credit`), the lease is gone, or Redis did not answer (a credit taken
        all the same is kept on the lease, which gives it back as it passes on or ends)."""
        try:
            answer = await self.scripts.credit(lease_id, ask.credit(tokens))
        except RedisError as exc:
            log.debug("quota credit on lease %s not taken: %s", lease_id, exc)
            return None
        if not answer:
            return None
        try:
            return QuotaAsk(ask.tenant, ask.limits, tokens).answer(answer)
        except QuotaExceeded:
            return None

    async def _reuse_charged(
        self, held: HeldLease, ticket: Ticket, charged: Charged | None
    ) -> Lease | None:
        """Pass a held lease to a request with quotas its credit does not cover: the reuse's
        script call takes its charge first, so it waits for the call. None if the lease was
        gone (the request then asks as any other)."""
        passing = asyncio.ensure_future(self._reuse_call(held, ticket))
        try:
            outcome = await asyncio.shield(passing)
        except asyncio.CancelledError:
            # The client left while the script ran: whatever it decided must be undone.
            passing.add_done_callback(partial(self._abandon_reuse, held, ticket))
            raise
        except RedisError as exc:
            self._let_go(held)
            return self._without_redis(ticket, exc)
        if outcome.state == "gone":
            self._reclaimed(held.lease_id)
            return None
        if outcome.state == "quota":  # the lease stays the finished request's: released
            self._let_go(replace(held, correction=None))  # (the correction was applied)
        _took(ticket, outcome, charged)  # raises QuotaExceeded if refused
        self._heard(outcome)
        return self._lease(held.lease_id, held.backend, ticket)

    def _abandon_reuse(
        self, held: HeldLease, ticket: Ticket, passing: asyncio.Future[Decision]
    ) -> None:
        """Undo the reuse of a request whose client left before it answered."""
        if passing.cancelled() or passing.exception() is not None:
            self._let_go(held)
            return
        outcome = passing.result()
        self._resolve(outcome.grants)
        if outcome.state == "gone":
            self._reclaimed(held.lease_id)
        elif outcome.state == "quota":
            self._let_go(replace(held, correction=None))
        elif outcome.state == "reused" and ticket.quota is not None:
            refund = ticket.quota.answer(outcome.quota).correction(0)  # it never ran
            self._spawn(self.release(held.lease_id, None, correction=refund))

    async def _charge(self, request_id: str, service: float) -> None:
        try:
            self._charge_heard(request_id, await self.scripts.charge(request_id, service))
        except RedisError as exc:
            log.debug("charge of %s failed: %s", request_id, exc)

    async def _charge_all(self, charges: list[tuple[str, float]]) -> None:
        """Send a window's charges (:class:`~admission.accrual.ChargeAccrual`) in one call."""
        try:
            outcomes = await self.scripts.charge_all(charges)
        except RedisError as exc:  # settled at their releases, which carry the service used
            log.debug("%d charges failed: %s", len(charges), exc)
            return
        for (request_id, _), outcome in zip(charges, outcomes, strict=True):
            if isinstance(outcome, Exception):
                log.debug("charge of %s failed: %s", request_id, outcome)
            else:
                self._charge_heard(request_id, outcome)

    def _charge_heard(self, request_id: str, outcome: Decision) -> None:
        # gone after this replica released it: a charge that reached Redis after the release
        # (both in flight at once; the release settled the whole service anyway)
        if outcome.state == "gone" and request_id in self._leases:
            self._reclaimed(request_id)
        self._resolve(outcome.grants)

    def _reclaimed(self, lease_id: str) -> None:
        log.warning("lease %s was reclaimed while its request ran", lease_id)
        self._leases.discard(lease_id)  # never to be held for reuse

    async def _end(self, lease: Lease, service: float | None, reusable: bool) -> None:
        """A request ended: hold its lease for the next of its flow if it may, else release.
        Its charges not sent yet are taken back, settled by the service it used; where that
        is not known (None: keep what was charged), they are sent first."""
        unsent = self._accrual.take(lease.request_id)
        if service is None and unsent:
            await self._charge(lease.request_id, unsent)
        if (
            reusable
            and self._may_reuse
            and not self._waiters
            and self._shelf.hold_s > 0
            and lease.flow is not None
            and lease.backend in self._reusable_backends
            and lease.request_id in self._leases
        ):
            held = HeldLease(
                lease.request_id, lease.backend, lease.tokens, service, lease.correction
            )
            if lease.quota is not None:
                taking = self._take_credit(lease.request_id, lease.quota, lease.tokens)
                held.credit = asyncio.ensure_future(taking)
            self._shelf.put(lease.flow, held)
            return
        hold_s = 0.0
        if reusable:  # it ended well: its tenant's next request may follow at once
            ran_s = time.monotonic() - lease.granted_at
            hold_s = min(self._config.hold_for_next_s, self._config.hold_for_next_share * ran_s)
        await self.release(lease.request_id, service, hold_s, lease.correction)

    async def _reuse(self, held: HeldLease, ticket: Ticket, spends_credit: bool = False) -> None:
        """Tell Redis that the lease passed on: settle the last request, serve the next (which
        ``spends_credit`` the lease kept, if it ran on it)."""
        try:
            outcome = await self._reuse_call(held, ticket, spends_credit)
        except RedisError as exc:
            log.debug("reuse of lease %s not recorded: %s", held.lease_id, exc)
            return
        if outcome.state == "gone":
            self._reclaimed(held.lease_id)
        self._heard(outcome)

    async def _reuse_call(
        self, held: HeldLease, ticket: Ticket, spends_credit: bool = False
    ) -> Decision:
        self._reusing += 1
        try:
            used, correction = held.used, held.correction
            return await self.scripts.reuse(held.lease_id, used, ticket, correction, spends_credit)
        finally:
            self._reusing -= 1

    def _let_go(self, held: HeldLease) -> None:
        """Release a held lease nobody took (or that may not be reused any more)."""
        self._spawn(self._release_held(held))

    async def _release_held(self, held: HeldLease) -> None:
        """Release a held lease with its request's quota correction, once the call taking its
        credit has answered (the release then gives the credit back)."""
        await _credit_of(held)
        await self.release(held.lease_id, held.used, correction=held.correction)

    def _let_go_all(self) -> None:
        for held in self._shelf.take_all():
            self._let_go(held)

    def _heard(self, outcome: Decision) -> None:
        """Act on a script's answer: its grants, and whether leases may still be held."""
        self._resolve(outcome.grants)
        self._may_reuse = outcome.may_reuse
        if not outcome.may_reuse:
            self._let_go_all()

    async def release(
        self,
        request_id: str,
        service: float | None,
        hold_s: float = 0.0,
        correction: QuotaPart | None = None,
    ) -> None:
        """Free a lease (idempotent); hands what it frees to the next in fair order. With it,
        its request's quota ``correction`` (applied even if the lease is gone).

        With ``hold_s`` > 0 Redis may hold it that long for the next request of its tenant
        instead (the tenant is owed the next turn; ``hold_for_next`` in lib/dispatch.lua): it is
        released when the hold ends, unless that request freed it first.
        """
        self._leases.discard(request_id)
        hold_ms = int(hold_s * 1000)
        try:
            outcome = await self.scripts.release(request_id, service, hold_ms, correction)
        except RedisError as exc:
            log.warning("release of %s failed (%s); sent again once Redis answers", request_id, exc)
            self._keep_unreleased(request_id, service, correction)
            return
        if outcome.state == "held":
            self._held[request_id] = asyncio.get_running_loop().call_later(
                hold_ms / 1000, self._end_hold, request_id
            )
        self._heard(outcome)

    def _keep_unreleased(
        self, request_id: str, service: float | None, correction: QuotaPart | None
    ) -> None:
        """Keep a release Redis did not confirm, to send again (``_release_again``)."""
        if len(self._unreleased) >= MAX_UNRELEASED:
            oldest = next(iter(self._unreleased))
            del self._unreleased[oldest]
            log.warning("release of %s given up (too many waiting for Redis)", oldest)
        self._unreleased[request_id] = (service, correction)
        if self._releasing_again is None or self._releasing_again.done():
            self._releasing_again = asyncio.ensure_future(self._release_until_done())

    async def _release_until_done(self) -> None:
        """Send the failed releases again on a short interval until Redis took them all (the
        upkeep's interval may be long: their capacity should not wait for it)."""
        every_s = min(self._config.upkeep_interval_s, RELEASE_AGAIN_EVERY_S)
        while self._unreleased:
            await asyncio.sleep(every_s)
            try:
                await self._release_again()
            except (RedisError, OSError) as exc:
                log.debug("releases not sent again yet: %s", exc)

    async def _release_again(self) -> None:
        """Send again the releases Redis did not confirm, with their corrections as retries
        (applied only if the first release had not run); raises if Redis still fails."""
        while self._unreleased:
            batch = list(self._unreleased.items())[:RELEASE_AGAIN_BATCH]
            outcomes = await asyncio.gather(
                *(
                    self.scripts.release(i, service, 0, None if fix is None else fix.retried())
                    for i, (service, fix) in batch
                )
            )
            for (request_id, _), outcome in zip(batch, outcomes, strict=True):
                self._unreleased.pop(request_id, None)
                self._heard(outcome)

    def _end_hold(self, request_id: str) -> None:
        """A held lease's time is up: release it (a no-op if its tenant's next request did)."""
        self._held.pop(request_id, None)
        self._spawn(self.release(request_id, None))

    async def engine_reported(
        self,
        backend: str,
        busy_for_s: float,
        tokens_in_use: int | None,
        token_budget: int | None,
        keep_for_s: float,
    ) -> None:
        """Pass on what an engine reports of its own load, for every replica's dispatch.

        ``busy_for_s`` > 0 holds the backend (its engine has requests waiting inside it);
        ``tokens_in_use`` corrects the least-loaded choice; ``token_budget`` replaces the
        backend's token budget (the KV capacity the engine really has). The report lapses after
        ``keep_for_s`` unless refreshed. A backend no longer busy may take queued work at once.
        """
        if busy_for_s > 0:
            self._let_go_all()  # a busy engine takes no more work, reused leases included
        try:
            grants = await self.scripts.engine(
                backend,
                int(busy_for_s * 1000),
                tokens_in_use,
                token_budget,
                int(keep_for_s * 1000),
            )
        except RedisError as exc:
            log.debug("could not record the load of %s: %s", backend, exc)
            return
        self._resolve(grants)

    async def set_backend_down(self, backend: str, down_for_s: float) -> None:
        """Keep ``backend`` out of dispatch for a while (0 brings it back), on every replica."""
        if down_for_s > 0:
            self._let_go_all()  # none of them is to be reused on it
        try:
            if down_for_s <= 0:
                await self._redis.hdel(self.keys.down, backend)
                return
            seconds, micros = await self._redis.time()
            until = seconds * 1000 + micros // 1000 + int(down_for_s * 1000)
            await self._redis.hset(self.keys.down, backend, until)
        except RedisError as exc:
            log.debug("could not record the health of %s: %s", backend, exc)

    async def set_drained(self, backend: str, drained: bool) -> None:
        """Drain ``backend`` (no new work on any replica) or bring it back."""
        if drained:
            self._let_go_all()  # no lease held here for reuse may pass on to a drained backend
        await set_drained(self._redis, self.keys, backend, drained)

    async def backend_load(self, backend: str) -> tuple[int, int]:
        """Requests and estimated tokens ``backend`` has in flight, across every replica."""
        return await backend_load(self._redis, self.keys, backend)

    def _resolve(self, grants: list[tuple[str, str]]) -> None:
        if grants:  # someone waited: fair order decides again, no lease is held for reuse
            self._may_reuse = False
            self._let_go_all()
        for request_id, backend in grants:
            future = self._waiters.get(request_id)
            if future is not None and not future.done():
                future.set_result(backend)

    def _without_redis(self, ticket: Ticket, exc: Exception) -> Lease:
        now = time.monotonic()
        if now - self._warned_at > 5:
            self._warned_at = now
            log.error(
                "admission: Redis is unreachable (%s); fail_mode=%s", exc, self._config.fail_mode
            )
        if self._config.fail_mode == "closed":
            raise AdmissionUnavailable("Admission is unavailable (Redis unreachable).")
        return self._local.admit(ticket)

    # ---------------------------------------------------------------------------- upkeep

    async def _listen(self) -> None:
        """Hear grants to this replica's waiters (and queue timeouts) on pub/sub, and that
        requests started to wait somewhere (no more lease reuse)."""
        channels = [self.keys.grants_channel(self.owner), self.keys.contended_channel]
        contended = channels[1].encode()
        while True:
            try:
                async with Subscription(self._redis, channels) as heard:
                    while True:
                        message = await heard.get(timeout=LISTEN_WAKE_S)
                        if message is None:
                            continue
                        channel, data = message
                        if channel == contended:
                            self._may_reuse = False
                            self._let_go_all()
                            continue
                        request_id, _, backend = data.decode().partition(" ")
                        self._heard_grant(request_id, backend)
            except (RedisError, OSError) as exc:
                log.debug("grant subscription interrupted: %s", exc)
            except Exception:  # a bug: logged, and the listener goes on (waiters need it)
                log.exception("the grant listener failed; subscribing again")
            await asyncio.sleep(self._config.upkeep_interval_s)

    def _heard_grant(self, request_id: str, backend: str) -> None:
        """A grant to a request of this replica. Another replica's release may grant a request
        that just queued before the reply of its enqueue has reached its waiter (replies and
        messages travel on different connections): the grant is kept for the waiter, instead
        of waiting for the upkeep's poll."""
        if request_id in self._waiters:
            self._resolve([(request_id, backend)])
        else:
            self._early[request_id] = (backend, time.monotonic())

    def _forget_early(self) -> None:
        """Drop kept grants nobody came for (their waiter gave up first): the poll's job."""
        stale = time.monotonic() - EARLY_GRANT_KEPT_S
        for request_id in [i for i, (_, at) in self._early.items() if at < stale]:
            del self._early[request_id]

    async def _upkeep(self) -> None:
        renew_every = self._config.lease_ttl_s / 3
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(self._config.upkeep_interval_s)
            self._forget_early()
            try:
                self._resolve(await self.scripts.tick())
                await self._poll_grants()
                if time.monotonic() - renewed >= renew_every:
                    renewed = time.monotonic()
                    await self._renew()
            except (RedisError, OSError) as exc:
                log.debug("admission upkeep failed: %s", exc)
            except Exception:  # a bug: logged, and the upkeep goes on (waiters need its poll)
                log.exception("admission upkeep failed")

    async def _poll_grants(self) -> None:
        waiting = list(self._waiters)
        if waiting:
            found = await self._redis.hmget(self.keys.granted, waiting)
            self._resolve([(i, text(b)) for i, b in zip(waiting, found, strict=True) if b])

    async def _renew(self) -> None:
        """Renew what this replica holds; a waiter whose entry is gone was dropped by Redis as
        late (past its deadline: 429, like any queue timeout) or reclaimed (lost: 503)."""
        held = [*self._waiters, *self._leases, *self._unreleased]
        for request_id in await self.scripts.renew(held):
            future = self._waiters.get(request_id)
            if future is not None and not future.done():
                late = asyncio.get_running_loop().time() >= self._due.get(request_id, math.inf)
                future.set_result(_TIMEOUT if late else _LOST)


def _took(ticket: Ticket, outcome: Decision, charged: Charged | None) -> None:
    """The ticket's quota charge as a script answered it: told to ``charged`` if taken,
    :class:`~admission.quota.QuotaExceeded` if refused."""
    if ticket.quota is not None:
        charge = ticket.quota.answer(outcome.quota)
        if charged is not None:
            charged(charge)


async def _credit_of(held: HeldLease) -> Charge | None:
    """The credit a held lease took (waiting for the call that takes it); None if none."""
    if held.credit is None:
        return None
    return await asyncio.shield(held.credit)


def _tell(placed: Placed | None, place: QueuePlace) -> None:
    if placed is not None:
        placed(place)


def _flow(ticket: Ticket) -> Flow:
    return ticket.tenant, ticket.pool, ticket.band
