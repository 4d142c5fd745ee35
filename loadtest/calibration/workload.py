"""The workload of the simulator's calibration: the requests each figure is measured with."""

from __future__ import annotations

from estimators.tokenizer import default_tokenizer

#: Prompts whose TTFT is measured alone: one short step, one prefill chunk, several chunks.
TTFT_PROMPTS = (100, 8_000, 28_000)
#: Decode batches: 64 x 128-token prompts fill exactly one 8,192-token step, so all decode in step.
DECODE_BATCHES = (1, 64)
DECODE_PROMPT_TOKENS = 128
DECODE_OUTPUT_TOKENS = 1_024
#: Head-of-line blocking: a short prompt arriving just after a long one.
HOL_LONG_TOKENS = 28_000
HOL_SHORT_TOKENS = 100
HOL_DELAY_S = 0.001
#: Fast enough to keep the HTTP check short, slow enough for the paced steps to be meaningful.
HTTP_TIME_SCALE = 20.0
#: One cl100k token, so ``n`` repetitions are a prompt of exactly ``n`` tokens.
ONE_TOKEN_WORD = " hello"

#: (arrival time in simulated seconds, prompt tokens, output tokens)
Arrival = tuple[float, int, int]


def exact_prompt(tokens: int) -> str:
    """A prompt of exactly ``tokens`` tokens, checked: a fallback tokenizer would skew the check."""
    text = ONE_TOKEN_WORD * tokens
    counted = default_tokenizer().count(text)
    if counted != tokens:
        raise RuntimeError(
            f"{ONE_TOKEN_WORD!r} x {tokens} is {counted} tokens; is tiktoken installed?"
        )
    return text
