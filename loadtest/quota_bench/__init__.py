"""Quotas across replicas: a minute of overload, and how close to the limits the admitted load is.

``python -m loadtest.quota_bench [--window S] [--write BENCHMARKS.md]`` (``make bench``)

Three ``fairgate serve`` processes share one Redis and one simulated engine. Two tenants
overload their quotas through every replica at once: ``rpm`` is limited to
:data:`~loadtest.quota_bench.workload.REQUESTS_PER_MINUTE` requests a minute, ``tpm`` to
:data:`~loadtest.quota_bench.workload.TOKENS_PER_MINUTE` tokens a minute (each also has a far
higher limit of the other kind, checked on every request and never binding). Once a tenant's
first refusal shows that its initial burst is spent, its requests and tokens (by the engine's
usage) are counted over the measurement window and compared with the limit's rate.

Why the window starts at the first refusal: GCRA lets a tenant that was idle for a whole period
spend that period's budget at once (the burst), then admits exactly the limit's rate. Over any
window of T seconds it admits at most ``rate * T + burst``; in sustained overload, after the
burst, ``rate * T`` within one request (or one request's tokens) plus what the clients' gaps
leave unused. The limit's rate, not the burst, is what the window measures.

The package keeps the parts apart: :mod:`~loadtest.quota_bench.workload` (the tenants, their
quotas, the overloading clients), :mod:`~loadtest.quota_bench.measurement` (the windows and
their figures), :mod:`~loadtest.quota_bench.stack` (the processes started),
:mod:`~loadtest.quota_bench.rendering` (its BENCHMARKS.md section) and
:mod:`~loadtest.quota_bench.cli`. ``tests/integration/test_admission_replicas.py`` drives the
same overload for a shorter window.
"""
