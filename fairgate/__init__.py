"""fairgate: a multi-tenant fairness gateway for LLM inference.

This package holds what every part shares: the configuration model (:mod:`fairgate.settings`),
the OpenAI error envelope (:mod:`fairgate.openai_errors`) and the command line
(:mod:`fairgate.cli`). The request path lives in ``gateway``, ``estimators``, ``backends`` and
``admission``; the simulator and load tests in ``loadtest``.
"""

__version__ = "0.1.0"
