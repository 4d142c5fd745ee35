"""Every Redis key and pub/sub channel fairgate uses, named in one place.

All names start with ``redis.key_prefix`` (``fairgate`` by default), so several deployments
can share one Redis. Keys that scripts touch together share a Redis Cluster hash tag (the part
in braces) and so one slot: the admission domain (``{adm}``) and each model's estimation state
(``{est:<model>}``). The admission scripts receive the domain's prefix as ``KEYS[1]`` and
derive their keys from it; ``admission/lua/lib/state.lua`` lists them all, and the ones Python reads
or writes directly are the properties of :class:`AdmissionKeys`.

This module imports nothing of fairgate: every package may use it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AdmissionKeys:
    """The admission domain's keys: ``prefix`` is ``<key_prefix>:{adm}:``."""

    prefix: str

    @classmethod
    def of(cls, key_prefix: str) -> AdmissionKeys:
        return cls(f"{key_prefix}:{{adm}}:")

    def config(self, table: str) -> str:
        """A configuration entry the scripts read: ``tenants``, ``backends``, ``pools``,
        ``lend``, ``bands`` (hashes), ``grace`` (string)."""
        return f"{self.prefix}cfg:{table}"

    def grants_channel(self, owner: str) -> str:
        """The channel on which one replica hears of grants to its waiters."""
        return f"{self.prefix}grants:{owner}"

    @property
    def contended_channel(self) -> str:
        """The channel on which every replica hears that requests started to wait."""
        return f"{self.prefix}contended"

    @property
    def down(self) -> str:
        """backend -> ms until which it takes no work (health)."""
        return f"{self.prefix}down"

    @property
    def drained(self) -> str:
        """backend -> 1 while an operator drains it."""
        return f"{self.prefix}drained"

    @property
    def backend_load(self) -> str:
        """``<backend>:r`` / ``<backend>:t`` -> requests / tokens in flight."""
        return f"{self.prefix}bload"

    @property
    def granted(self) -> str:
        """request id -> backend, for owners that poll instead of hearing pub/sub."""
        return f"{self.prefix}granted"

    @property
    def stats(self) -> str:
        """Counters of admission events (grants, reclaimed, timeouts, holds...)."""
        return f"{self.prefix}stats"

    def directory(self, table: str) -> str:
        """The tenant directory, the truth the admin API changes: ``tenants`` (tenant ->
        json {version, config}), ``keys`` (key id -> json record with its digest),
        ``key_used`` (key id -> last use, epoch s), ``version`` (string, bumped by every
        change) and ``seeded`` (set once the config file's tenants were written).

        In the admission slot, so that a change and the scripts' view of it (``cfg:tenants``,
        ``cfg:bands``) are written in one transaction."""
        return f"{self.prefix}dir:{table}"

    @property
    def directory_channel(self) -> str:
        """The channel on which every replica hears that the directory changed."""
        return f"{self.prefix}dir:changed"

    def quota(self, tenant: str) -> str:
        """One tenant's quota state: limit -> GCRA theoretical arrival time, ms.

        In the admission slot, so that the scripts that queue, run or release a request take
        and correct its charge in the same step (``admission/lua/lib/quota.lua``)."""
        return f"{self.prefix}quota:{tenant}"

    @property
    def queued(self) -> str:
        """tenant -> requests queued; ``pool:<pool>`` -> requests queued for a pool."""
        return f"{self.prefix}queued"

    @property
    def tenant_load(self) -> str:
        """``<tenant>:r`` / ``<tenant>:t`` -> requests / tokens in flight."""
        return f"{self.prefix}tload"

    @property
    def counters(self) -> str:
        """tenant -> virtual counter (service / weight); ``band:<band>`` -> band counter;
        ``p:<tenant>`` -> input charged but not yet delivered (counter units)."""
        return f"{self.prefix}vtc"

    @property
    def served(self) -> str:
        """tenant -> service charged to it since Redis started (service units, only grows but
        for settlements returning an overcharge): what recent shares are sampled from."""
        return f"{self.prefix}served"

    @property
    def leases(self) -> str:
        """request id -> json of a granted request (tenant ``t``, backend ``b``, tokens
        ``tok``...)."""
        return f"{self.prefix}lease"

    @property
    def engine(self) -> str:
        """``<backend>:busy`` -> ms until which its engine takes no work; ``<backend>:tokens``
        -> KV tokens its engine reports in use."""
        return f"{self.prefix}engine"


def model_tag(key_prefix: str, model: str) -> str:
    """The prefix (and Redis Cluster hash tag) of one model's estimation state."""
    return f"{key_prefix}:{{est:{model}}}"


def output_history(key_prefix: str, model: str, tenant: str, kind: str) -> tuple[str, str]:
    """The lists of recent output lengths: the tenant's and the model's (``kind``: chat or
    reasoning)."""
    tag = model_tag(key_prefix, model)
    return f"{tag}:out:tenant:{tenant}:{kind}", f"{tag}:out:all:{kind}"


def calibration(key_prefix: str, model: str) -> str:
    """The hash of a model's prompt-count correction."""
    return f"{model_tag(key_prefix, model)}:calib"


def usage(key_prefix: str, tenant: str, day: str) -> str:
    """The hash of one tenant's usage on one UTC day (``YYYY-MM-DD``): ``<model>\\0<counter>``
    -> count, the counters being ``requests``, ``prompt_tokens``, ``completion_tokens`` and
    ``rejected:<reason>`` (:mod:`tenants.usage`).

    One Redis Cluster hash tag per tenant (``{usage:<tenant>}``): a tenant's days share a slot,
    so a range is read from one node, while tenants spread over the cluster.
    """
    return f"{key_prefix}:{{usage:{tenant}}}:{day}"


def usage_batches(key_prefix: str, tenant: str, day: str) -> str:
    """The hash beside :func:`usage`'s: the number of the last batch each replica added to
    that day (so that a batch sent again after a lost answer is added once)."""
    return f"{usage(key_prefix, tenant, day)}:batches"
