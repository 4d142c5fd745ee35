"""A soak: fairgate at saturation for ten minutes, with cancellations and a replica restart.

``python -m loadtest.soak [--duration S] [--write BENCHMARKS.md]`` (not part of ``make test``
nor ``make bench``: it takes ten minutes)

Two ``fairgate serve`` replicas share one Redis and two simulated engines. Three tenants
(weights 1, 2 and 4) keep more requests coming than the engines' budgets hold, through both
replicas, streamed and not; a share of the clients hang up on purpose, some while queued and
some mid-stream. Halfway through, one replica is SIGKILLed and started again on the same port.
The run reports every answer by kind (the expected ones: served, cancelled by the client, 429,
the restarted replica's connections refused or cut while it was down; anything else counts as
unexpected), each replica's resident memory after the warm-up and at the end, and, once the load
has stopped and the dead replica's leases had their TTL to expire, what admission still holds in
Redis (leases, queued requests, requests and tokens in flight): all zero when nothing leaked.

The parts: :mod:`~loadtest.soak.workload` (tenants, clients, what a client does),
:mod:`~loadtest.soak.stack` (the processes, and the restart), :mod:`~loadtest.soak.measurement`
(the run and its figures), :mod:`~loadtest.soak.rendering` (its BENCHMARKS.md section) and
:mod:`~loadtest.soak.cli`.
"""
