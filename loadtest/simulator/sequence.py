"""One request inside the simulated engine, and the clock readings that describe its life."""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass, field


class SeqStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"
    ABORTED = "aborted"


@dataclass(eq=False)
class Sequence:
    """A request's progress through the engine.

    Tokens known to the engine are the prompt plus the output generated so far; the engine has
    computed (holds KV for) ``num_computed`` of them. When it has computed all of them, the
    next token is sampled. A preempted sequence drops its KV and recomputes everything,
    including the output it had already produced, as vLLM does.
    """

    seq_id: str
    prompt_tokens: int
    target_output: int  # tokens generated before the sequence stops
    stop_reason: str  # finish_reason once target_output is reached: "length" or "stop"
    arrival: float  # simulated seconds
    tenant: str | None = None  # the X-Fairgate-Tenant header it came with, if any
    output_tokens: int = 0
    num_computed: int = 0
    status: SeqStatus = SeqStatus.WAITING
    first_scheduled: float | None = None
    first_token: float | None = None
    previous_token: float | None = None
    last_token: float | None = None
    finished: float | None = None
    finish_reason: str | None = None
    preemptions: int = 0
    #: Receives the output token count after each new token, then ``None`` once it ends.
    outbox: asyncio.Queue[int | None] = field(default_factory=asyncio.Queue, repr=False)

    @property
    def num_tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens

    @property
    def remaining(self) -> int:
        """Tokens known but not yet computed."""
        return self.num_tokens - self.num_computed

    @property
    def is_decoding(self) -> bool:
        """True when the next step computes just the last sampled token."""
        return self.output_tokens > 0 and self.remaining == 1

    @property
    def done(self) -> bool:
        return self.status in (SeqStatus.FINISHED, SeqStatus.ABORTED)

    def timeline(self) -> dict[str, object]:
        """What happened to this request, in simulated seconds (for tests and reports)."""
        ttft = None if self.first_token is None else self.first_token - self.arrival
        return {
            "id": self.seq_id,
            "tenant": self.tenant,
            "status": self.status.value,
            "prompt_tokens": self.prompt_tokens,
            "output_tokens": self.output_tokens,
            "arrival": self.arrival,
            "first_scheduled": self.first_scheduled,
            "first_token": self.first_token,
            "finished": self.finished,
            "ttft": ttft,
            "finish_reason": self.finish_reason,
            "preemptions": self.preemptions,
        }
