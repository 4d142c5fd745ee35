"""The load-test kit behind ``fairgate loadtest``: scenarios, modes, measurements, reports.

A scenario (``config/loadtest/*.yaml``, :mod:`loadtest.kit.scenario`) declares tenants, their
arrival processes and request shapes. The kit runs it in several *modes* with the same seed
(straight to the engines, through fairgate with ``fcfs``, with ``vtc``, with ``vtc`` and isolated
pools; :mod:`loadtest.kit.modes`), each against processes it starts for that run alone
(:mod:`loadtest.kit.stack`), and turns what the clients saw into figures
(:mod:`loadtest.kit.metrics`, :mod:`loadtest.kit.targets`), a JSON file, a Markdown section of
BENCHMARKS.md and PNG plots (:mod:`loadtest.kit.report`, :mod:`loadtest.kit.plots`).

One concept per module; only :mod:`loadtest.kit.stack` starts processes, and only
:mod:`loadtest.kit.client` speaks HTTP to the system under test.
"""
