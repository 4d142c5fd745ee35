"""Proxy overhead: the latency and throughput fairgate's proxy path adds, next to a bare forwarder.

``python -m loadtest.proxy_overhead [--duration S] [--baseline REV] [--write BENCHMARKS.md]``
(``make bench``, without ``--baseline``)

One upstream that answers instantly is reached three ways, side by side in one run: directly,
through a minimal aiohttp forwarder, and through fairgate (``fairgate serve``, with its own
Redis), as a tenant without quotas and as one with quotas far above the load (what checking and
correcting them costs). The upstream costs almost nothing, so whatever a path adds above
"direct" is that path's own cost. The forwarder (one shared client session, no auth, no parsing,
streams relayed with ``iter_any``) is the floor for any Python proxy on aiohttp, so fairgate is
judged against it rather than against zero: its added p50 latency should stay within a multiple
of the forwarder's and its throughput within a fraction of it (the ``TARGET_*`` constants of
:mod:`~loadtest.proxy_overhead.measurement`).

Every server runs in its own process on loopback, on uvloop and behind the same
:func:`fairgate.serving.serve`, so the three paths differ only in their request handlers. The
load generator runs in this process: a closed loop of N workers, each sending its next request
as soon as the previous one is done, for a fixed time per cell after a warm-up, the paths
taking turns in short slices. All processes share this machine's CPUs, so absolute figures
depend on it; the ratios between paths measured in the same run are the result, and the CPU
time each path's processes spend per request explains them. With ``--baseline REV``, one more
path is fairgate served from that git revision's code (:mod:`loadtest.revisions`), taking turns
with the others: before and after in the same run
(:mod:`~loadtest.proxy_overhead.before_after`).

Every process this benchmark starts is stopped when it ends, also on an error or Ctrl-C.

The package keeps the parts apart: :mod:`~loadtest.proxy_overhead.workload` (what is sent and
the servers that answer), :mod:`~loadtest.proxy_overhead.stack` (the processes started),
:mod:`~loadtest.proxy_overhead.measurement` (the load, returning a typed ``Run``),
:mod:`~loadtest.proxy_overhead.rendering` (its BENCHMARKS.md section, from the ``Run``) and
:mod:`~loadtest.proxy_overhead.cli`.
"""
