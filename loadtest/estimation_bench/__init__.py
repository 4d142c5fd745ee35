"""Cost estimation on this machine: its speed, its effect on the event loop, and its accuracy.

``python -m loadtest.estimation_bench [--requests N] [--seed S] [--write BENCHMARKS.md]``
(``make bench``)

Every estimate goes through :class:`estimators.estimator.CostEstimator` against a private
``redis-server`` that this benchmark starts on a free loopback port and stops at the end, so
Redis round trips, Lua scripts and caches are the real ones. Three measurements:

1. **Time per estimate** of a chat prompt of about 100, 8,000 and 128,000 tokens, with the
   default tokenizer (tiktoken ``cl100k_base``) and with a Hugging Face ``tokenizer.json``.
   These figures depend on this machine's speed.
2. **Event-loop stall** while a 128,000-token prompt is estimated: a ticker sleeping 1 ms in a
   loop records its largest gap. The same count forced onto the loop is the contrast that shows
   what counting in a worker thread buys every other request on the replica.
3. **Accuracy** on a seeded multi-tenant workload sent to the engine simulator over HTTP, each
   estimate followed by ``observe`` with the engine's ``usage``, as the gateway does: how far
   prompt and output estimates are from the truth, early and once history has accumulated.
   The simulator counts prompts with the estimator's own tokenizer and template, so its prompt
   figures are exact by construction; a second pass therefore compares the tiktoken estimate
   with the Hugging Face tokenizer's count, with and without the learned correction factor.

Prompts are real text: docstrings (prose) and source code of Python's standard library, so the
workload is the same on every machine with the same Python version.

The package keeps the parts apart: :mod:`~loadtest.estimation_bench.workload` (the corpus, the
tokenizer file, the seeded multi-tenant requests), :mod:`~loadtest.estimation_bench.measurement`
(the three runs, returning a typed ``Results``), :mod:`~loadtest.estimation_bench.figures` (the
accuracy figures computed from it), :mod:`~loadtest.estimation_bench.rendering` (its
BENCHMARKS.md section) and :mod:`~loadtest.estimation_bench.cli`.
"""
