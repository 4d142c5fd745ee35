"""Admission invariants, checked on the real Lua scripts and a real Redis.

A hypothesis state machine drives random sequences of enqueue, release (twice, too), charge,
lease reuse, cancel, renew, tick, lease expiry and backends going down and up against the
scripts, keeps a
plain Python model of every request (queued / leased on a backend / gone) built only from what
the scripts answered (including grants made for *other* requests), and after every step checks
the invariants of docs/architecture.md ("Admission invariants") against Redis:

- budgets: per backend and per tenant, requests in flight <= max_concurrency and tokens in
  flight <= max_inflight_tokens unless one request runs alone; queued per tenant <= max_queued;
- bookkeeping: ``tload`` / ``bload`` equal the sums over the model's leases (an absent field is
  0, a zero field is absent), ``lease`` / ``granted`` / ``req`` / ``exp`` / ``dl`` / ``fifo`` /
  ``q:<tenant>:<band>`` / ``queued`` / ``backlog:<band>`` / ``bandlog`` hold exactly what the
  model says;
- one state per request; releasing what is not leased answers "gone" and changes nothing;
- virtual counters and floors follow an exact model: each charge adds service / weight, the
  lift of a newly backlogged tenant (band) raises it to the smallest backlogged counter (or the
  floor), nothing else moves them, and they never decrease;
- every grant is exactly the one the scripts' dispatch must make next: the first head (of a
  flow, FCFS within it) in policy order that fits, skipping pools reserved by a head blocked
  only by its pool, placed on the least-loaded backend with room; a request that arrives while
  nobody waits anywhere runs at once (the fast path: no queue, no lift);
- work conservation, stated exactly as the scripts' dispatch guarantees it (see
  ``AdmissionMachine.check_work_conserving``);
- at the end of every example, everything queued is cancelled and every lease released, and
  Redis must hold no admission state in flight.

Some requests ask for a band of their own (``X-Fairgate-Priority``), so a tenant can have a flow
(a queue) in each band: FCFS holds within a flow, ``max_queued`` over all of a tenant's flows,
and a tenant's score in every backlog it is in equals its one virtual counter.

Long-run shares between tenants are tests/integration/test_admission_fairness.py's business.

Plain example tests at the end pin a few behaviours down with exact values.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from redis import Redis as SyncRedis

from admission.domain import band_of, band_weights, publish_config
from admission.policy import AdmissionPolicy
from admission.scripts import AdmissionScripts
from admission.ticket import Ticket
from fairgate.keys import AdmissionKeys
from fairgate.redis_client import GatewayRedis
from fairgate.settings import Settings
from tests.conftest import inflight_state

TTL_MS = 600_000  # nothing expires by itself during a test: expiry is simulated (exp score 0)
TIMEOUT_S = 600.0  # no queue deadline passes during a test
MAX_GRANTS = 32  # more than the whole capacity below: one dispatch always runs to the end
FAR_FUTURE_MS = 10**15  # a backend marked down with this stays down for the whole test

# Small budgets, so that every limit is hit often. Tokens of a request are drawn from SIZES:
# 160 is larger than every backend's budget and than the budgets of tenants b and c.
BACKENDS = {  # name: (pool, max_concurrency, max_inflight_tokens)
    "b1": ("p1", 2, 100),
    "b2": ("p1", 3, 150),
    "b3": ("p2", 2, 80),
}
TENANTS = {  # name: (weight, priority, max_concurrency, max_inflight_tokens, max_queued)
    "a": (1.0, 0, 3, 200, 4),
    "b": (3.0, 0, 2, 120, 2),
    "c": (2.0, 1, 2, 90, 3),  # a higher priority: a band of its own
}
POOLS = {"p1": ["b1", "b2"], "p2": ["b3"]}
SIZES = [10, 25, 50, 90, 160]
# Services are 3 x a binary fraction and the lower band weighs 0.25 (priority_min_share 0.2), so
# every virtual counter is exact in binary floating point: Redis adds them in long double, the
# model in double, and the model can replay the scripts' fair order bit for bit (ties, broken by
# name, included).
SERVICES = [0.0, 12.0, 37.5, 96.0]  # charged at dispatch
CHARGES = [0.0, 4.5, 22.5]  # charged while streaming
USED = [None, 0.0, 48.0, 150.0, 402.0]  # the total reported at release (None: unknown)
MIN_SHARE = 0.2


def ticket(
    request_id: str, tenant: str, tokens: int, service: float, pool: str, band: str
) -> Ticket:
    """A request as the tests enqueue it (the script sees what the gateway's tickets carry)."""
    return Ticket(request_id, tenant, tokens, service, pool, band, TIMEOUT_S)


def make_settings(redis_url: str, policy: str = "vtc") -> Settings:
    pools: dict[str, Any] = {pool: {"backends": {}} for pool in POOLS}
    for port, (name, (pool, mc, mt)) in enumerate(BACKENDS.items(), start=9001):
        pools[pool]["backends"][name] = {
            "url": f"http://127.0.0.1:{port}",
            "models": ["m"],
            "max_concurrency": mc,
            "max_inflight_tokens": mt,
        }
    tenants = {
        name: {
            "weight": w,
            "priority": prio,
            "max_concurrency": mc,
            "max_inflight_tokens": mt,
            "max_queued": mq,
        }
        for name, (w, prio, mc, mt, mq) in TENANTS.items()
    }
    config: dict[str, Any] = {"redis": {"url": redis_url}, "pools": pools, "tenants": tenants}
    # the model lifts every tenant whose queue ran dry: no grace for one that refills at once
    admission = {"policy": policy, "priority_min_share": MIN_SHARE, "return_grace_s": 0}
    return Settings(**config | {"admission": admission})


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# ------------------------------------------------------------------------------ Redis side


@dataclass
class Snapshot:
    """Everything admission holds in Redis, decoded."""

    tload: dict[str, float]
    bload: dict[str, float]
    lease: dict[str, str]  # id -> json
    req: dict[str, str]
    granted: dict[str, str]
    exp: dict[str, float]
    dl: dict[str, float]
    fifo: dict[str, float]
    queues: dict[str, list[str]]  # "<tenant>:<band>" -> ids of q:<tenant>:<band> in order
    queued: dict[str, float]  # tenant -> requests queued in all its bands
    backlogs: dict[str, list[tuple[str, float]]]  # band -> (tenant, score) in order
    bandlog: list[tuple[str, float]]  # (band, score) in order
    vtc: dict[str, float]  # counters (tenants, band:<band>)
    pending: dict[str, float]  # vtc's p:<tenant> fields: input charged, not yet delivered
    vfloor: dict[str, float]
    stats: dict[str, int]
    served: dict[str, float]  # tenant -> service charged in all (the live state's samples)


def snapshot(redis: SyncRedis, prefix: str) -> Snapshot:
    """Read it all in one round trip (plain sync client: the checks are most of the run time)."""

    def floats(h: dict) -> dict[str, float]:
        return {_s(k): float(v) for k, v in h.items()}

    def texts(h: dict) -> dict[str, str]:
        return {_s(k): _s(v) for k, v in h.items()}

    with redis.pipeline(transaction=True) as pipe:
        for name in ("tload", "bload", "lease", "req", "granted", "vtc", "vfloor", "stats"):
            pipe.hgetall(prefix + name)
        pipe.hgetall(prefix + "queued")
        pipe.hgetall(prefix + "served")
        for name in ("exp", "dl", "fifo", "bandlog"):
            pipe.zrange(prefix + name, 0, -1, withscores=True)
        pipe.keys(prefix + "q:*")
        pipe.keys(prefix + "backlog:*")
        for flow in FLOWS:
            pipe.zrange(f"{prefix}q:{flow}", 0, -1)
        for band in BAND_WEIGHTS:
            pipe.zrange(f"{prefix}backlog:{band}", 0, -1, withscores=True)
        replies = pipe.execute()
    hashes, zsets, (qk, bk) = replies[:10], replies[10:14], replies[14:16]
    tload, bload, lease, req, granted, vtc, vfloor, stats, queued, served = hashes
    exp, dl, fifo, bandlog = zsets
    queue_replies = dict(zip(FLOWS, replies[16 : 16 + len(FLOWS)], strict=True))
    backlog_replies = dict(zip(BAND_WEIGHTS, replies[16 + len(FLOWS) :], strict=True))
    queues = {f: [_s(i) for i in ids] for f, ids in queue_replies.items() if ids}
    backlogs = {b: [(_s(m), sc) for m, sc in ms] for b, ms in backlog_replies.items() if ms}
    # no queue or backlog of anything else
    assert sorted(_s(k) for k in qk) == sorted(f"{prefix}q:{f}" for f in queues), qk
    assert sorted(_s(k) for k in bk) == sorted(f"{prefix}backlog:{b}" for b in backlogs), bk
    return Snapshot(
        tload=floats(tload),
        bload=floats(bload),
        lease=texts(lease),
        req=texts(req),
        granted=texts(granted),
        exp={_s(m): s for m, s in exp},
        dl={_s(m): s for m, s in dl},
        fifo={_s(m): s for m, s in fifo},
        queues=queues,
        queued=floats(queued),
        backlogs=backlogs,
        bandlog=[(_s(m), s) for m, s in bandlog],
        vtc={k: v for k, v in floats(vtc).items() if not k.startswith("p:")},
        pending={k[2:]: v for k, v in floats(vtc).items() if k.startswith("p:")},
        vfloor=floats(vfloor),
        stats={k: int(v) for k, v in texts(stats).items()},
        served=floats(served),
    )


# ------------------------------------------------------------------------------ the model


@dataclass
class Req:
    id: str
    tenant: str
    tok: int
    svc: float
    pool: str
    band: str
    seq: int  # arrival order (the scripts' seq grows the same way)
    state: str = "queued"  # queued | leased | gone
    backend: str | None = None
    charged: float = 0.0  # service charged so far while leased (the lease's `ch`)
    pending: float = 0.0  # input charged, no output charged yet (the lease's `pd`)
    fast: bool = False  # granted on arrival, never queued (the uncontended fast path)


_SETTINGS = make_settings("redis://unused")
BAND_WEIGHTS = band_weights(
    (t.priority for t in _SETTINGS.tenants.values()), _SETTINGS.admission.priority_min_share
)  # {"499": 1.0, "500": 0.25}
#: A flow is a tenant's requests in one band: FCFS within it, one queue each.
FLOWS = [f"{t}:{b}" for t in TENANTS for b in BAND_WEIGHTS]


class AdmissionMachine(RuleBasedStateMachine):
    """One admission domain on the test Redis against a model of its requests."""

    def __init__(self, redis_url: str, policy: str) -> None:
        super().__init__()
        self.policy = policy
        self.loop = asyncio.new_event_loop()
        self.redis = GatewayRedis.from_url(redis_url)  # the scripts' client, on this loop
        self.sync = SyncRedis.from_url(redis_url)  # reads Redis for the checks
        settings_ = make_settings(redis_url, policy)
        keys = AdmissionKeys.of(settings_.redis.key_prefix)
        self.prefix = keys.prefix
        self.run(self.redis.flushdb())  # counters, seq and stats of the previous example
        self.run(publish_config(self.redis, keys, settings_))
        self.scripts = AdmissionScripts(
            self.redis, self.prefix, TTL_MS, MAX_GRANTS, AdmissionPolicy(order=policy)
        )
        self.reqs: dict[str, Req] = {}
        self.down: set[str] = set()
        self.next_id = 0
        self.grants_seen = 0
        self.reclaimed = 0
        self.counters: dict[str, float] = {}  # the model of `vtc`: tenant, band:<band>
        self.served: dict[str, float] = {}  # the model of `served`: charges, never lifts
        self.vfloor: dict[str, float] = {}  # the model of `vfloor`: <band>, bands
        self.behind: dict[str, float] = {}  # the model of `behind`: <tenant>:<band>
        self.settled_this_step = False  # a settlement may return service: counters go down
        self.snap = snapshot(self.sync, self.prefix)
        self.step_ok = True  # False while a step runs; stays False if it fails

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    # -------------------------------------------------------------------- model helpers

    def ids(self, *states: str) -> list[str]:
        return sorted((r.id for r in self.reqs.values() if r.state in states), key=_id_order)

    def queued(self, tenant: str, band: str | None = None) -> list[Req]:
        """A tenant's queued requests (in one band, or all), in arrival order."""
        reqs = [
            r
            for r in self.reqs.values()
            if r.state == "queued" and r.tenant == tenant and band in (None, r.band)
        ]
        return sorted(reqs, key=lambda r: r.seq)

    def head(self, tenant: str, band: str) -> Req | None:
        """The head of a flow: the only one of its requests that may be granted."""
        queued = self.queued(tenant, band)
        return queued[0] if queued else None

    def tenant_load(self, tenant: str) -> tuple[int, int]:
        leased = [r for r in self.reqs.values() if r.state == "leased" and r.tenant == tenant]
        return len(leased), sum(r.tok for r in leased)

    def backend_load(self, backend: str) -> tuple[int, int]:
        leased = [r for r in self.reqs.values() if r.state == "leased" and r.backend == backend]
        return len(leased), sum(r.tok for r in leased)

    def tenant_fits(self, r: Req) -> bool:
        _, _, mc, mt, _ = TENANTS[r.tenant]
        n, tok = self.tenant_load(r.tenant)
        return n < mc and (tok + r.tok <= mt or n == 0)

    def place(self, r: Req) -> str | None:
        """The backend the scripts must pick for ``r``: room, fewest tokens, first on ties."""
        best, best_tokens = None, 0
        for b in POOLS[r.pool]:
            if b in self.down:
                continue
            _, mc, mt = BACKENDS[b]
            n, tok = self.backend_load(b)
            if n < mc and (tok + r.tok <= mt or n == 0) and (best is None or tok < best_tokens):
                best, best_tokens = b, tok
        return best

    def begin(self) -> None:
        self.step_ok = False

    def charge_model(self, tenant: str, band: str, service: float) -> None:
        """The scripts' charge: charges only add."""
        if service > 0:
            self.adjust(tenant, band, service)

    def settle_model(self, tenant: str, band: str, used: float, charged: float) -> None:
        """The scripts' settlement at a request's end: the difference, either way."""
        if used != charged:
            self.adjust(tenant, band, used - charged)
            self.settled_this_step = True

    def adjust(self, tenant: str, band: str, service: float) -> None:
        self.served[tenant] = self.served.get(tenant, 0.0) + service
        self.counters[tenant] = self.counters.get(tenant, 0.0) + service / TENANTS[tenant][0]
        key = "band:" + band
        self.counters[key] = self.counters.get(key, 0.0) + service / BAND_WEIGHTS[band]

    def lift(self, key: str, floor: float) -> None:
        if floor > self.counters.get(key, 0.0):
            self.counters[key] = floor

    def pending(self, tenant: str) -> float:
        """Input charged to the tenant's leases that have had no output charged, per weight."""
        leased = [r for r in self.reqs.values() if r.state == "leased" and r.tenant == tenant]
        return sum(r.pending for r in leased) / TENANTS[tenant][0]

    def delivered(self, tenant: str) -> float:
        return self.counters.get(tenant, 0.0) - self.pending(tenant)

    def raise_to(self, tenant: str, floor: float) -> None:
        """The scripts' raise: the tenant's delivered counter to at least ``floor``."""
        self.lift(tenant, floor + self.pending(tenant))

    def backlogged(self) -> dict[str, list[str]]:
        """Band -> the tenants with requests queued in it."""
        bands: dict[str, list[str]] = {}
        for r in self.reqs.values():
            if r.state == "queued" and r.tenant not in bands.setdefault(r.band, []):
                bands[r.band].append(r.tenant)
        return bands

    def policy_order(self) -> list[Req]:
        """The heads in the order the scripts' dispatch visits them (fair_order / arrival_order).

        vtc: bands by band counter, then tenants by counter (ties by name, as a zset orders);
        fcfs and shadow: by arrival. A head is the first request of a flow (tenant, band).
        """
        if self.policy != "vtc":
            heads = [self.head(*f.split(":")) for f in FLOWS]
            return sorted((h for h in heads if h is not None), key=lambda r: r.seq)
        order = []
        backlog = self.backlogged()
        for band in sorted(backlog, key=lambda b: (self.counters.get("band:" + b, 0.0), b)):
            for tenant in sorted(backlog[band], key=lambda t: (self.counters.get(t, 0.0), t)):
                head = self.head(tenant, band)
                assert head is not None
                order.append(head)
        return order

    def next_grant(self) -> tuple[Req | None, dict[str, str]]:
        """What one pass of the scripts' dispatch grants next, and the pools it reserved.

        In policy order, the first head whose tenant is under its limits and whose pool has a
        backend with room; a head blocked by its pool alone reserves that pool for the rest of
        the pass (heads after it in that pool are skipped: no starvation of large requests).
        """
        reserved: dict[str, str] = {}
        capped: list[Req] = []
        for r in self.policy_order():
            if r.pool in reserved:
                continue
            if not self.tenant_fits(r):
                capped.append(r)
                continue
            if self.place(r) is not None:
                if self.policy == "vtc":  # heads their own limits held back forfeit the turn
                    served = self.counters.get(r.tenant, 0.0)
                    for held in capped:  # ... all but one request of their own
                        if held.band == r.band and held.tenant != r.tenant:
                            self.lift(held.tenant, served - held.svc / TENANTS[held.tenant][0])
                return r, reserved
            reserved[r.pool] = r.id
        return None, reserved

    def apply_grants(self, grants: list[tuple[str, str]], full: Req | None = None) -> None:
        """Grants, in the order the scripts made them, each replayed on the model first.

        ``full``: an enqueue answered "full": the scripts dispatched with it queued, then
        dropped it and dispatched again.
        """
        for request_id, backend in grants:
            r = self.reqs.get(request_id)
            assert r is not None, f"grant of an unknown request {request_id}"
            assert r.state == "queued", f"grant of {request_id}, which is {r.state}"
            expected, reserved = self.next_grant()
            if expected is None and full is not None and full.state == "queued":
                self.drop_full(full)
                expected, reserved = self.next_grant()
            assert expected is r, (
                f"{request_id} granted, but dispatch must grant "
                f"{expected.id if expected else 'nothing'} next (order "
                f"{[h.id for h in self.policy_order()]}, reserved pools {reserved}, counters "
                f"{self.counters})"
            )
            assert backend == self.place(r), (
                f"{request_id} granted on {backend}, expected {self.place(r)} "
                f"(loads {[(b, self.backend_load(b)) for b in POOLS[r.pool]]}, down {self.down})"
            )
            self.lease_model(r, backend)
        if full is not None and full.state == "queued":
            self.drop_full(full)

    def left_queue(self, r: Req) -> None:
        """A queued request leaves its queue; if its flow's queue is now empty, remember how far
        the tenant's delivered counter is below the band's floor (at most its own request)."""
        r.state = "leaving"
        if self.queued(r.tenant, r.band):
            return
        others = [self.delivered(t) for t in self.backlogged().get(r.band, [])]
        floor = min(others) if others else self.vfloor.get(r.band, 0.0)
        behind = min(floor - self.delivered(r.tenant), r.svc / TENANTS[r.tenant][0])
        key = f"{r.tenant}:{r.band}"
        if behind > 0:
            self.behind[key] = behind
        else:
            self.behind.pop(key, None)

    def lease_model(self, r: Req, backend: str, uncontended: bool = False) -> None:
        """The scripts' lease: raise the floors to the counters served (the tenant's delivered
        one), charge the input, which is pending until output is charged unless nothing waited
        (the fast path, lease reuse)."""
        if r.state == "queued" and not r.fast:
            self.left_queue(r)
        served = self.delivered(r.tenant)
        if served > self.vfloor.get(r.band, 0.0):
            self.vfloor[r.band] = served
        served = self.counters.get("band:" + r.band, 0.0)
        if served > self.vfloor.get("bands", 0.0):
            self.vfloor["bands"] = served
        self.charge_model(r.tenant, r.band, r.svc)
        pending = 0.0 if uncontended or r.fast else r.svc
        r.state, r.backend, r.charged, r.pending = "leased", backend, r.svc, pending
        self.grants_seen += 1

    def drop_full(self, r: Req) -> None:
        # "full" exactly when, after the first dispatch, the tenant's queue exceeds max_queued
        assert len(self.queued(r.tenant)) > TENANTS[r.tenant][4], f"{r.id}: full too early"
        self.gone(r.id)

    def gone(self, request_id: str) -> None:
        r = self.reqs[request_id]
        if r.state == "queued":
            self.left_queue(r)
        r.state, r.backend = "gone", None

    # -------------------------------------------------------------------- rules

    @rule(
        batch=st.lists(
            st.tuples(
                st.sampled_from(sorted(TENANTS)),
                st.sampled_from(SIZES),
                st.sampled_from(SERVICES),
                st.sampled_from(sorted(POOLS)),
                st.sampled_from(["", "", "", *sorted(BAND_WEIGHTS)]),
            ),
            min_size=1,
            max_size=4,
        )
    )
    def enqueue(self, batch: list[tuple[str, int, float, str, str]]) -> None:
        """Requests arrive (a burst of a few, to build queues; checked after each).

        Mostly in their tenant's band (''), some in a band they ask for (X-Fairgate-Priority):
        a tenant can then have a flow in each band.
        """
        for n, (tenant, tok, svc, pool, asked) in enumerate(batch):
            if n:
                self.check()
            self.enqueue_one(tenant, tok, svc, pool, asked)

    def enqueue_one(self, tenant: str, tok: int, svc: float, pool: str, asked: str) -> None:
        self.begin()
        request_id = f"r{self.next_id}"
        self.next_id += 1
        band = asked or band_of(TENANTS[tenant][1])
        r = Req(request_id, tenant, tok, svc, pool, band, seq=self.next_id)
        backend = self.place(r)
        if not self.ids("queued") and self.tenant_fits(r) and backend is not None:
            # The uncontended fast path: nobody waits, so it runs at once without queueing
            # (no lift, no dispatch round; the grant is the answer, not in the grants list).
            out = self.run(
                self.scripts.enqueue(ticket(request_id, tenant, tok, svc, pool, asked), "owner")
            )
            event("enqueue -> granted at once")
            assert (out.state, out.backend, out.grants) == ("granted", backend, []), out
            r.fast = True
            self.reqs[request_id] = r
            self.apply_grants([(request_id, backend)])
            return
        # The VTC lift of a newly backlogged tenant: its delivered counter to the smallest
        # delivered counter of the backlogged ones, or with none, to the floor (the delivered
        # counter last served); a band's: to the smallest band counter, or the bands' floor.
        backlog = self.backlogged()
        if tenant not in backlog.get(band, []):
            others = [self.delivered(t) for t in backlog.get(band, [])]
            floor = min(others) if others else self.vfloor.get(band, 0.0)
            self.raise_to(tenant, floor - self.behind.get(f"{tenant}:{band}", 0.0))
        if band not in backlog:
            others = [self.counters.get("band:" + b, 0.0) for b in backlog]
            self.lift("band:" + band, min(others) if others else self.vfloor.get("bands", 0.0))
        out = self.run(
            self.scripts.enqueue(ticket(request_id, tenant, tok, svc, pool, asked), "owner")
        )
        event(f"enqueue -> {out.state}")
        assert out.state in ("granted", "queued", "full"), out
        self.reqs[request_id] = r  # it was in the queue while the scripts dispatched
        self.apply_grants(out.grants, full=r if out.state == "full" else None)
        if out.state == "granted":
            assert r.state == "leased" and r.backend == out.backend, (out, r)
        elif out.state == "queued":
            assert r.state == "queued" and out.backend == "", (out, r)
            assert len(self.queued(tenant)) <= TENANTS[tenant][4]
        else:
            assert r.state == "gone" and out.backend == "", (out, r)

    @rule(data=st.data(), which=st.sampled_from(["duplicate", "unknown_tenant", "unknown_pool"]))
    def enqueue_refused(self, data: st.DataObject, which: str) -> None:
        """An id that is queued or leased already, an unknown tenant or pool: refused as is."""
        self.begin()
        request_id, tenant, pool = "x", "a", "p1"
        if which == "duplicate" and self.ids("queued", "leased"):
            request_id = data.draw(st.sampled_from(self.ids("queued", "leased")), label="id")
            tenant, pool = self.reqs[request_id].tenant, self.reqs[request_id].pool
        elif which == "duplicate":
            which = "unknown_tenant"
        if which == "unknown_tenant":
            tenant = "nobody"
        if which == "unknown_pool":
            pool = "nowhere"
        out = self.run(self.scripts.enqueue(ticket(request_id, tenant, 10, 1.0, pool, ""), "o"))
        assert (out.state, out.backend, out.grants) == (which, "", []), out

    @precondition(lambda self: self.ids("leased", "gone", "queued"))
    @rule(data=st.data(), count=st.integers(1, 3))
    def release(self, data: st.DataObject, count: int) -> None:
        """Requests end (a few at once): leases, and also what is gone already or still queued."""
        for n in range(count):
            if n:
                self.check()
            kind = data.draw(st.sampled_from(["leased"] * 3 + ["gone", "queued"]), label="kind")
            candidates = self.ids(kind) or self.ids("leased", "gone", "queued")
            request_id = data.draw(st.sampled_from(candidates), label="id")
            used = data.draw(st.sampled_from(USED), label="used")
            self.release_one(request_id, used)

    def release_one(self, request_id: str, used: float | None) -> None:
        self.begin()
        r = self.reqs[request_id]
        before = self.snap
        out = self.run(self.scripts.release(request_id, used))
        event(f"release of a {r.state} request")
        if r.state == "leased":
            assert out.state == "released", out
            if used is not None:
                self.settle_model(r.tenant, r.band, used, r.charged)
            self.gone(request_id)
            self.apply_grants(out.grants)
        else:
            # a no-op: no counter moves and (work conservation held before) nothing is granted
            assert (out.state, out.grants) == ("gone", []), out
            after = snapshot(self.sync, self.prefix)
            assert (after.tload, after.bload, after.vtc) == (before.tload, before.bload, before.vtc)

    @precondition(lambda self: self.ids("leased", "gone"))
    @rule(data=st.data())
    def reuse(self, data: st.DataObject) -> None:
        """A replica passes a finished request's lease to the next request of its flow.

        The next request needs at most the tokens the lease holds; the finished one's service
        is settled, the next one served as at a grant (floors, input charge), and what the
        smaller hold freed is dispatched if anything waits. Reuse may go on only while nothing
        waits and the backend is up. A lease that is gone is not reused and nothing moves.
        """
        self.begin()
        kind = data.draw(st.sampled_from(["leased"] * 4 + ["gone"]), label="kind")
        request_id = data.draw(st.sampled_from(self.ids(kind) or self.ids("leased", "gone")))
        r = self.reqs[request_id]
        tok = data.draw(st.sampled_from([s for s in SIZES if s <= r.tok] or [r.tok]), label="tok")
        svc = data.draw(st.sampled_from(SERVICES), label="service")
        used = data.draw(st.sampled_from(USED), label="used")
        waiting = bool(self.ids("queued"))
        following = ticket(f"{request_id}.next", r.tenant, tok, svc, r.pool, r.band)
        out = self.run(self.scripts.reuse(request_id, used, following))
        event(f"reuse of a {r.state} lease" + (" while requests wait" if waiting else ""))
        if r.state != "leased":
            assert (out.state, out.grants, out.may_reuse) == ("gone", [], False), out
            return
        assert out.state == "reused", out
        assert out.may_reuse == (not waiting and r.backend not in self.down), out
        if used is not None:
            self.settle_model(r.tenant, r.band, used, r.charged)
        r.tok, r.svc, r.pending = tok, svc, 0.0  # the finished one was delivered
        self.lease_model(r, r.backend, uncontended=True)
        self.apply_grants(out.grants)

    @precondition(lambda self: self.reqs)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        """Cancel a queued request, or one already granted (the caller holds it) or gone."""
        self.begin()
        kind = data.draw(st.sampled_from(["queued"] * 3 + ["leased", "gone"]), label="kind")
        candidates = self.ids(kind) or sorted(self.reqs, key=_id_order)
        request_id = data.draw(st.sampled_from(candidates), label="id")
        r = self.reqs[request_id]
        out = self.run(self.scripts.cancel(request_id))
        event(f"cancel of a {r.state} request")
        if r.state == "queued":
            assert (out.state, out.backend) == ("cancelled", ""), out
            self.gone(request_id)
            self.apply_grants(out.grants)
        elif r.state == "leased":
            assert (out.state, out.backend, out.grants) == ("leased", r.backend, []), out
        else:
            assert (out.state, out.backend, out.grants) == ("gone", "", []), out

    @rule(data=st.data(), what=st.sampled_from(["charge", "renew", "tick"]))
    def upkeep(self, data: st.DataObject, what: str) -> None:
        """What live owners do meanwhile: charge streamed output, renew, tick."""
        self.begin()
        if what == "charge" and self.ids("leased", "gone"):
            request_id = data.draw(st.sampled_from(self.ids("leased", "gone")), label="id")
            svc = data.draw(st.sampled_from(CHARGES), label="service")
            r = self.reqs[request_id]
            out = self.run(self.scripts.charge(request_id, svc))
            ok = out.state == "charged"
            assert ok == (r.state == "leased"), (request_id, r.state, ok)
            if ok:
                self.charge_model(r.tenant, r.band, svc)
                r.charged += svc
                r.pending = 0.0  # output flows: the input was delivered
                # the charge may reorder the waiting heads: dispatch grants what now comes
                # first and fits (a head that a pool reservation held back, for one)
                self.apply_grants(out.grants)
            else:
                assert out.grants == [], out
        elif what == "renew" and self.reqs:
            everything = sorted(self.reqs, key=_id_order)
            chosen = data.draw(st.lists(st.sampled_from(everything), max_size=5), label="ids")
            lost = self.run(self.scripts.renew(chosen))
            assert lost == [i for i in chosen if self.reqs[i].state == "gone"], (chosen, lost)
        else:
            grants = self.run(self.scripts.tick())
            # work conservation held after the previous step and nothing changed since
            assert grants == [], grants

    @precondition(lambda self: self.ids("queued", "leased"))
    @rule(data=st.data())
    def expire(self, data: st.DataObject) -> None:
        """Owners that died: their entries stop being renewed, expire, and a tick reclaims them."""
        self.begin()
        live = self.ids("queued", "leased")
        chosen = data.draw(
            st.lists(st.sampled_from(live), min_size=1, max_size=3, unique=True), label="ids"
        )
        for request_id in chosen:
            event(f"expiry of a {self.reqs[request_id].state} request")
            self.run(self.redis.zadd(self.prefix + "exp", {request_id: 0}, xx=True))
        grants = self.run(self.scripts.tick())
        for request_id in sorted(chosen):  # the sweep's order: equal expiries, by id
            self.gone(request_id)
        self.reclaimed += len(chosen)
        self.apply_grants(grants)

    @rule(backend=st.sampled_from(sorted(BACKENDS)))
    def backend_health(self, backend: str) -> None:
        """A backend goes down (no new work), or comes back and takes work at the next tick."""
        self.begin()
        if backend not in self.down:
            self.run(self.redis.hset(self.prefix + "down", backend, FAR_FUTURE_MS))
            self.down.add(backend)
        else:
            self.run(self.redis.hdel(self.prefix + "down", backend))
            self.down.discard(backend)
            self.apply_grants(self.run(self.scripts.tick()))

    # -------------------------------------------------------------------- invariants

    @invariant()
    def check(self) -> None:
        before, after = self.snap, snapshot(self.sync, self.prefix)
        self.check_budgets()
        self.check_bookkeeping(after)
        self.check_counters(before, after)
        self.check_work_conserving()
        self.snap = after
        self.step_ok = True

    def check_budgets(self) -> None:
        for b, (_, mc, mt) in BACKENDS.items():
            n, tok = self.backend_load(b)
            assert n <= mc, f"backend {b}: {n} requests in flight > {mc}"
            assert tok <= mt or n == 1, f"backend {b}: {tok} tokens in flight > {mt} ({n} reqs)"
        for t, (_, _, mc, mt, mq) in TENANTS.items():
            n, tok = self.tenant_load(t)
            assert n <= mc, f"tenant {t}: {n} requests in flight > {mc}"
            assert tok <= mt or n == 1, f"tenant {t}: {tok} tokens in flight > {mt} ({n} reqs)"
            assert len(self.queued(t)) <= mq, f"tenant {t}: {len(self.queued(t))} queued > {mq}"

    def check_bookkeeping(self, s: Snapshot) -> None:
        leased, queued = self.ids("leased"), self.ids("queued")
        tload: dict[str, float] = {}
        bload: dict[str, float] = {}
        for request_id in leased:
            r = self.reqs[request_id]
            for load, key in ((tload, r.tenant), (bload, r.backend)):
                load[f"{key}:r"] = load.get(f"{key}:r", 0) + 1
                load[f"{key}:t"] = load.get(f"{key}:t", 0) + r.tok
        assert s.tload == tload, f"tload {s.tload} != model {tload}"
        assert s.bload == bload, f"bload {s.bload} != model {bload}"
        assert sorted(s.lease, key=_id_order) == leased, (s.lease, leased)
        assert s.granted == {i: self.reqs[i].backend for i in leased}, s.granted
        assert sorted(s.req, key=_id_order) == queued, (s.req, queued)
        assert sorted(s.exp, key=_id_order) == self.ids("queued", "leased"), s.exp
        assert sorted(s.dl, key=_id_order) == queued, s.dl
        assert sorted(s.fifo, key=_id_order) == queued, s.fifo
        # each flow's queue, in arrival order, and each tenant's count over its flows
        queues = {f: [r.id for r in self.queued(*f.split(":"))] for f in FLOWS}
        assert s.queues == {f: ids for f, ids in queues.items() if ids}, (s.queues, queues)
        queued_counts = {t: len(self.queued(t)) for t in TENANTS}
        for pool in POOLS:  # and each pool's (lenders lend only while theirs is empty)
            queued_counts[f"pool:{pool}"] = sum(
                r.state == "queued" and r.pool == pool for r in self.reqs.values()
            )
        assert s.queued == {t: n for t, n in queued_counts.items() if n}, s.queued

        # backlogs: per band, the tenants with requests queued in it, each scored by its one
        # counter (in every band it is in), in zset order; bandlog likewise for the bands
        def ranked(members: list[str], key: str) -> list[tuple[str, float]]:
            scored = [(m, self.counters.get(key + m, 0.0)) for m in members]
            return sorted(scored, key=lambda ms: (ms[1], ms[0]))

        backlog = self.backlogged()
        assert s.backlogs == {b: ranked(ts, "") for b, ts in backlog.items()}, s.backlogs
        assert s.bandlog == ranked(list(backlog), "band:"), s.bandlog
        assert s.stats.get("grants", 0) == self.grants_seen, s.stats
        assert s.stats.get("reclaimed", 0) == self.reclaimed, s.stats

    def check_counters(self, before: Snapshot, after: Snapshot) -> None:
        """Virtual counters and floors: exactly the model's (lifts, charges, settlements); never
        down but where a settlement returned what a request was charged beyond its usage."""
        settled = self.settled_this_step
        self.settled_this_step = False
        for name in set(before.vtc) | set(after.vtc):
            was, now = before.vtc.get(name, 0.0), after.vtc.get(name, 0.0)
            assert now >= was or settled, f"virtual counter {name} went down: {was} -> {now}"
        assert after.vtc == self.counters, f"vtc {after.vtc} != model {self.counters}"
        assert after.served == self.served, f"served {after.served} != model {self.served}"
        # input pending per tenant: present exactly while the tenant has something in flight
        pending = {t: self.pending(t) for t in TENANTS if self.tenant_load(t)[0]}
        assert after.pending.keys() <= pending.keys(), (after.pending, pending)
        for tenant, value in pending.items():
            assert after.pending.get(tenant, 0.0) == value, (tenant, after.pending, pending)
        assert after.vfloor == self.vfloor, f"vfloor {after.vfloor} != model {self.vfloor}"

    def check_work_conserving(self) -> None:
        """No queued request stays queued while it could run, except for the pool reservation.

        Only heads can go (FCFS within a flow: a tenant in one band). The scripts' dispatch
        repeats passes over the heads in policy order (vtc: bands by band counter, then tenants
        by counter, ties by name; fcfs/shadow: by arrival) until a pass grants nothing. In a
        pass, a head whose tenant is under its limits but whose pool has no backend with room
        *reserves* the pool: heads after it in that pass that target the same pool are skipped
        (so that a stream of small requests cannot starve a large one). After any step that
        dispatched, the last pass granted nothing, so exactly this holds, in policy order:

            for every head h: h's tenant is at its limits, or no non-down backend of h's pool
            has room for h, or an earlier head (in policy order) of h's pool is blocked by the
            pool alone (its tenant under its limits).

        That is ``next_grant()`` finding nothing; `apply_grants` checked the other direction
        (each grant is the one a pass must make, so nothing overtakes a reservation).
        Steps that do not dispatch (renew, cancel of a leased id, a backend going down) change
        no load, queue nor order that could make a head fit, so the invariant carries over. A
        charge changes the order (a tenant's counter grows), so it dispatches while requests
        wait.
        (An enqueue answered "full" dispatched with the new request queued, possibly a head that
        reserved its pool; it dispatches again once the request is out of the queue.)
        The `tick` rule also checks it from the other side: a tick right after any step grants
        nothing.
        """
        head, reserved = self.next_grant()
        assert head is None, (
            f"{head.id} ({head.tenant}, {head.tok} tokens, pool {head.pool}) fits on "
            f"{self.place(head)} but stays queued (reserved pools: {reserved})"
        )
        for r in self.policy_order():
            if reserved.get(r.pool, r.id) != r.id and self.tenant_fits(r) and self.place(r):
                event("a head that fits waits behind a reservation of its pool")

    # -------------------------------------------------------------------- the end

    def teardown(self) -> None:
        try:
            if self.step_ok:
                self.drain()
        finally:
            if not self.step_ok:  # a failed step: leave a clean Redis for the fixture
                self.run(self.redis.flushdb())
            self.run(self.redis.aclose())
            self.loop.close()
            self.sync.close()

    def drain(self) -> None:
        """Cancel every queued request, release every lease: Redis must end empty."""
        while self.ids("queued", "leased"):
            for request_id in self.ids("queued"):
                if self.reqs[request_id].state == "queued":
                    self.begin()
                    out = self.run(self.scripts.cancel(request_id))
                    assert out.state == "cancelled", out
                    self.gone(request_id)
                    self.apply_grants(out.grants)
                    self.check()
            for request_id in self.ids("leased"):
                self.begin()
                out = self.run(self.scripts.release(request_id, None))
                assert out.state == "released", out
                self.gone(request_id)
                self.apply_grants(out.grants)
                self.check()
        left = self.run(inflight_state(self.redis, self.prefix))
        assert not left, f"admission state left after everything ended: {sorted(left)}"


def _id_order(request_id: str) -> int:
    return int(request_id[1:])


@pytest.mark.parametrize("policy", ["vtc", "fcfs", "shadow"])
def test_random_operations_keep_every_admission_invariant(redis_url: str, policy: str) -> None:
    """A sync test: the machine runs the async scripts on an event loop of its own.

    A few seconds per policy: each test must stay well under 15 s, as pytest-redis' server
    drops clients idle that long (``redis_timeout``) and the ``redis_url`` fixture's own client
    idles for the whole test before its final check.
    """
    run_state_machine_as_test(
        lambda: AdmissionMachine(redis_url, policy),  # type: ignore[arg-type]  # a factory
        settings=settings(
            max_examples=20,
            stateful_step_count=40,
            deadline=None,
            database=None,
            # NOSHRINK=1 with --hypothesis-seed=N: the failing steps at once, unshrunk (shrinking
            # a long failing sequence against Redis can take minutes)
            phases=[Phase.generate] if os.environ.get("NOSHRINK") else list(Phase),
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


# ------------------------------------------------------------------------------ examples


def _one_backend(redis_url: str, mc: int, mt: int, tenants: dict[str, dict]) -> Settings:
    """Pool ``p`` with one backend ``b`` of ``mc`` requests and ``mt`` tokens."""
    backend = {"url": "http://127.0.0.1:9", "models": ["m"], "max_concurrency": mc}
    config: dict[str, Any] = {
        "redis": {"url": redis_url},
        "pools": {"p": {"backends": {"b": {**backend, "max_inflight_tokens": mt}}}},
        "tenants": tenants,
    }
    return Settings(**config)


async def _domain(redis: GatewayRedis, settings_: Settings) -> tuple[AdmissionScripts, str]:
    keys = AdmissionKeys.of(settings_.redis.key_prefix)
    await publish_config(redis, keys, settings_)
    prefix = keys.prefix
    policy = AdmissionPolicy(order=settings_.admission.policy)
    return AdmissionScripts(redis, prefix, TTL_MS, MAX_GRANTS, policy), prefix


def _hash(h: dict) -> dict[str, str]:
    return {_s(k): _s(v) for k, v in h.items()}


async def test_a_second_release_is_a_no_op(redis_url: str) -> None:
    redis = GatewayRedis.from_url(redis_url)
    scripts, prefix = await _domain(redis, _one_backend(redis_url, 1, 1000, {"a": {}, "b": {}}))
    first = await scripts.enqueue(ticket("r1", "a", 10, 5.0, "p", ""), "o")
    second = await scripts.enqueue(ticket("r2", "b", 20, 5.0, "p", ""), "o")
    assert (first.state, first.backend, first.grants) == ("granted", "b", [])  # nobody waits
    assert (second.state, second.grants) == ("queued", [])

    released = await scripts.release("r1", 30.0)
    assert (released.state, released.grants) == ("released", [("r2", "b")])
    assert _hash(await redis.hgetall(prefix + "tload")) == {"b:r": "1", "b:t": "20"}
    assert _hash(await redis.hgetall(prefix + "bload")) == {"b:r": "1", "b:t": "20"}
    counters = _hash(await redis.hgetall(prefix + "vtc"))
    assert float(counters["a"]) == 30.0  # 5 at dispatch + 25 more at release

    again = await scripts.release("r1", 30.0)
    assert (again.state, again.backend, again.grants) == ("gone", "", [])
    assert _hash(await redis.hgetall(prefix + "tload")) == {"b:r": "1", "b:t": "20"}
    assert _hash(await redis.hgetall(prefix + "bload")) == {"b:r": "1", "b:t": "20"}
    assert _hash(await redis.hgetall(prefix + "vtc")) == counters
    assert (await scripts.charge("r1", 10.0)).state == "gone"

    assert (await scripts.release("r2", None)).state == "released"
    assert (await scripts.release("r2", None)).state == "gone"
    assert await redis.hgetall(prefix + "tload") == {}
    assert await redis.hgetall(prefix + "bload") == {}
    await redis.aclose()


async def test_cancel_of_a_granted_request_answers_leased_with_its_backend(redis_url: str) -> None:
    redis = GatewayRedis.from_url(redis_url)
    scripts, prefix = await _domain(redis, _one_backend(redis_url, 1, 1000, {"a": {}}))
    assert (await scripts.enqueue(ticket("r1", "a", 10, 1.0, "p", ""), "o")).state == "granted"
    assert (await scripts.enqueue(ticket("r2", "a", 10, 1.0, "p", ""), "o")).state == "queued"

    cancelled = await scripts.cancel("r1")  # granted meanwhile: the caller holds the lease
    assert (cancelled.state, cancelled.backend, cancelled.grants) == ("leased", "b", [])
    assert _hash(await redis.hgetall(prefix + "granted")) == {"r1": "b"}
    assert _hash(await redis.hgetall(prefix + "tload")) == {"a:r": "1", "a:t": "10"}

    withdrawn = await scripts.cancel("r2")  # still queued: leaves the queue
    assert (withdrawn.state, withdrawn.backend, withdrawn.grants) == ("cancelled", "", [])
    assert await redis.hkeys(prefix + "req") == []
    assert (await scripts.cancel("r2")).state == "gone"

    assert (await scripts.release("r1", None)).state == "released"
    assert (await scripts.cancel("r1")).state == "gone"
    await redis.aclose()


async def test_a_request_larger_than_the_backend_runs_alone(redis_url: str) -> None:
    """150 tokens on a 100-token backend: runs only on an idle backend, and alone."""
    redis = GatewayRedis.from_url(redis_url)
    tenants = {t: {"max_inflight_tokens": 1000} for t in ("a", "b", "c")}
    scripts, prefix = await _domain(redis, _one_backend(redis_url, 3, 100, tenants))

    big = await scripts.enqueue(ticket("big", "a", 150, 1.0, "p", ""), "o")
    assert (big.state, big.backend) == ("granted", "b")
    assert _hash(await redis.hgetall(prefix + "bload")) == {"b:r": "1", "b:t": "150"}
    small = await scripts.enqueue(ticket("small", "b", 10, 1.0, "p", ""), "o")
    assert (small.state, small.grants) == ("queued", [])  # 1 of 3 slots used, but no tokens left
    assert (await scripts.tick()) == []

    done = await scripts.release("big", None)
    assert (done.state, done.grants) == ("released", [("small", "b")])

    # Now the large one waits for the backend to drain, and reserves it while it waits: a small
    # request of another tenant queued behind it (in fair order) does not overtake it.
    big2 = await scripts.enqueue(ticket("big2", "a", 150, 1.0, "p", ""), "o")
    assert (big2.state, big2.grants) == ("queued", [])
    small2 = await scripts.enqueue(ticket("small2", "c", 10, 1.0, "p", ""), "o")
    assert (small2.state, small2.grants) == ("queued", [])
    assert (await scripts.release("small", None)).grants == [("big2", "b")]
    assert _hash(await redis.hgetall(prefix + "bload")) == {"b:r": "1", "b:t": "150"}
    assert (await scripts.release("big2", None)).grants == [("small2", "b")]
    assert (await scripts.release("small2", None)).grants == []
    await redis.aclose()


async def test_an_expired_lease_is_reclaimed_and_its_capacity_granted(redis_url: str) -> None:
    redis = GatewayRedis.from_url(redis_url)
    scripts, prefix = await _domain(redis, _one_backend(redis_url, 1, 1000, {"a": {}, "b": {}}))
    assert (await scripts.enqueue(ticket("dead", "a", 10, 1.0, "p", ""), "o1")).state == ("granted")
    assert (await scripts.enqueue(ticket("next", "b", 20, 1.0, "p", ""), "o2")).state == ("queued")
    assert await scripts.tick() == []  # renewed in time: nothing to reclaim

    await redis.zadd(prefix + "exp", {"dead": 0}, xx=True)  # its owner stopped renewing it
    assert await scripts.tick() == [("next", "b")]
    assert [_s(k) for k in await redis.hkeys(prefix + "lease")] == ["next"]
    assert _hash(await redis.hgetall(prefix + "bload")) == {"b:r": "1", "b:t": "20"}
    assert _hash(await redis.hgetall(prefix + "tload")) == {"b:r": "1", "b:t": "20"}
    assert await redis.hget(prefix + "stats", "reclaimed") == b"1"

    # the late owner of the reclaimed lease finds it gone and frees nothing
    assert await scripts.renew(["dead", "next"]) == ["dead"]
    assert (await scripts.charge("dead", 5.0)).state == "gone"
    assert (await scripts.release("dead", None)).state == "gone"
    assert _hash(await redis.hgetall(prefix + "bload")) == {"b:r": "1", "b:t": "20"}
    assert (await scripts.release("next", None)).state == "released"
    await redis.aclose()


async def test_a_charge_that_reorders_the_queue_dispatches_the_head_that_now_fits(
    redis_url: str,
) -> None:
    """a's big head waits for room and holds the pool back for b's small head behind it (in
    fair order, by name on equal counters); once a is charged for streamed output, b's head
    comes first, fits, and runs at once, not at the next release."""
    redis = GatewayRedis.from_url(redis_url)
    scripts, _ = await _domain(redis, _one_backend(redis_url, 2, 100, {"a": {}, "b": {}}))
    running = await scripts.enqueue(ticket("r0", "a", 25, 0.0, "p", ""), "o")
    big = await scripts.enqueue(ticket("r1", "a", 90, 0.0, "p", ""), "o")
    small = await scripts.enqueue(ticket("r2", "b", 10, 0.0, "p", ""), "o")
    assert (running.state, big.state, small.state) == ("granted", "queued", "queued")
    assert small.grants == []  # the pool is reserved for a's head, which came first

    charged = await scripts.charge("r0", 4.5)
    assert (charged.state, charged.grants) == ("charged", [("r2", "b")])

    assert (await scripts.release("r0", None)).grants == [("r1", "b")]  # 10 + 90 fit
    for request_id in ("r1", "r2"):
        assert (await scripts.release(request_id, None)).state == "released"
    await redis.aclose()
