"""Calibration of the engine simulator: its figures next to the published ones it is fitted to.

``python -m loadtest.calibration [--profile PATH] [--write BENCHMARKS.md]`` (``make bench``)

Every figure is measured in simulated time. The scheduler and KV pool the HTTP simulator uses
are driven directly on a virtual clock (:func:`run_virtual`), so a 1,024-token decode that the
paced server would take seconds to play out is computed in milliseconds, and the result does
not depend on how fast this machine is. One end-to-end check then runs the real aiohttp server
and reads each request's simulated timeline back, to show that the paced server agrees.

The "expected" column is the published step-time model (base + prefill and decode terms)
evaluated in closed form, independently of the scheduler: a difference means the scheduler
batches differently from the model, or the profile has a context term, which the published
reference does not.

The package keeps the parts apart: :mod:`~loadtest.calibration.workload` (the requests: prompt
sizes, decode batches, the head-of-line pair), :mod:`~loadtest.calibration.measurement` (the
virtual and HTTP runs and the closed-form model, returning a typed ``Calibration``),
:mod:`~loadtest.calibration.rendering` (its BENCHMARKS.md section) and
:mod:`~loadtest.calibration.cli`.
"""
