"""Slow streams: what fairgate costs and how steadily it relays with thousands of streams open.

``python -m loadtest.stream_bench [--short] [--baseline REV] [--no-control]
[--write BENCHMARKS.md]`` (``make bench`` runs ``--short``)

Real LLM traffic is not an instant upstream: thousands of streams are open at once, each
emitting a chunk every few hundred milliseconds for seconds. What matters then is the cost per
relayed chunk, the memory per open stream, and above all that the event loop never stops: one
pause of the gateway (its garbage collector's, typically) delays every open stream at once
(issue 17). An upstream paces each stream (:mod:`~loadtest.stream_bench.workload`); a client on
raw asyncio sockets keeps K of them open (:mod:`~loadtest.stream_bench.client`) through a bare
aiohttp forwarder and through fairgate in turns, on processes pinned so that the gateway has a
core of its own (:mod:`~loadtest.stream_bench.stack`); :mod:`~loadtest.stream_bench.measurement`
returns a typed ``Run``, :mod:`~loadtest.stream_bench.rendering` its BENCHMARKS.md section,
:mod:`~loadtest.stream_bench.cli` the command. ``--baseline REV`` runs fairgate as another
revision had it too, in the same run: before and after on the same machine at the same time.

A **control** takes its turns too: the forwarder told to spend, per chunk, the CPU time fairgate
spent more than it at the same K. At a few thousand streams, latency tails follow from how busy
the core is as much as from pauses (a queue at 60% busy waits about twice as long as one at
43%); the control shows what fairgate's CPU alone makes of them, so that what fairgate's tails
hold beyond that (a pause, a wait of its own) can be read apart.

Every process this benchmark starts is stopped when it ends, also on an error or Ctrl-C.
"""
