"""How many tokens a simulated request generates when it does not set ``ignore_eos``.

Lengths are log-normal (the shape of real chat output lengths) and deterministic: the same
seed and the same key (the request's own ``seed`` field or its prompt) always give the same
length, whatever else the engine is doing. ``ignore_eos`` requests get exactly ``max_tokens``,
as in vLLM's own benchmarks.
"""

from __future__ import annotations

import math
import random

from loadtest.simulator.profile import OutputLengths


def output_length(cfg: OutputLengths, engine_seed: int, key: str, max_tokens: int) -> int:
    """A length in ``[1, max_tokens]``."""
    rng = random.Random(f"{engine_seed}:{key}")
    drawn = rng.lognormvariate(math.log(cfg.median), cfg.sigma)
    return max(1, min(max_tokens, round(drawn)))
