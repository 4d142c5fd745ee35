"""Admission cost and throughput through one Redis.

``python -m loadtest.admission_bench [--duration S] [--requests N] [--write BENCHMARKS.md]``

1. **Uncontended cost**: one request at a time, ``Admission.acquire`` then ``Lease.release``
   (each one Lua script call), as a gateway does it: the latency admission adds per request;
   and the same with lease reuse (a finished lease passes to the next request of its flow: no
   script call on the request's path, one in the background).
2. **Decisions per second** from one and from three processes sharing one Redis, with budgets
   that never bind (every request granted at once; with and without lease reuse), with
   budgets that do (requests queue, grants arrive by pub/sub from other processes' releases),
   with a stream's output charges between acquire and release, and of engine load reports;
   each with the CPU Redis' main thread spent per decision, hence what one Redis (one Cluster
   shard, where all admission runs) carries: docs/scaling.md.

Each process runs the real ``Admission`` client (pub/sub listener and upkeep included) against
a private redis-server, on the same machine's CPUs.

The package keeps the parts apart: :mod:`~loadtest.admission_bench.workload` (the settings, the
tickets, the request loops), :mod:`~loadtest.admission_bench.measurement` (the runs, returning
a typed ``Results``), :mod:`~loadtest.admission_bench.rendering` (its BENCHMARKS.md section)
and :mod:`~loadtest.admission_bench.cli` (also the entry point of the worker processes).
"""
