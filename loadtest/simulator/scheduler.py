"""Continuous batching as vLLM's V1 scheduler does it, without a GPU.

Each step has a token budget (``max_num_batched_tokens``). Running sequences are served first,
in arrival order: a decoding sequence needs one token of budget, a sequence still in prefill
takes as much of its prompt as the budget allows (chunked prefill). If a running sequence
cannot get the KV blocks it needs, the newest running sequence is preempted (its blocks freed,
back to the front of the queue, recomputed later). Then, if nothing was preempted, waiting
sequences are admitted in FCFS order while budget, ``max_num_seqs`` and KV blocks allow; the
first one that does not fit stops admission (head-of-line blocking inside the engine).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from loadtest.simulator.kv_cache import BlockPool
from loadtest.simulator.profile import SchedulerLimits
from loadtest.simulator.sequence import SeqStatus, Sequence


@dataclass
class StepPlan:
    """The work of one engine step: which sequences compute how many tokens."""

    work: list[tuple[Sequence, int]] = field(default_factory=list)
    prefill_tokens: int = 0
    decode_tokens: int = 0
    context_tokens: int = 0
    preempted: list[Sequence] = field(default_factory=list)

    def add(self, seq: Sequence, new_tokens: int) -> None:
        self.work.append((seq, new_tokens))
        if seq.is_decoding:
            self.decode_tokens += new_tokens
        else:
            self.prefill_tokens += new_tokens
        self.context_tokens += seq.num_computed + new_tokens


class Scheduler:
    """Decides each step's batch and applies its results."""

    def __init__(self, limits: SchedulerLimits, kv: BlockPool) -> None:
        self.limits = limits
        self.kv = kv
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def abort(self, seq: Sequence) -> bool:
        """Drop ``seq`` wherever it is and free its KV; False if it had already ended."""
        if seq.done:
            return False
        if seq.status is SeqStatus.RUNNING:
            self.running.remove(seq)
        else:
            self.waiting.remove(seq)
        self.kv.free(seq.seq_id)
        seq.status = SeqStatus.ABORTED
        seq.finish_reason = "abort"
        return True

    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    def schedule(self, now: float) -> StepPlan | None:
        """Plan the next step, or None when there is nothing to compute."""
        plan = StepPlan()
        budget = self._schedule_running(plan, self.limits.max_num_batched_tokens)
        if not plan.preempted:
            self._admit_waiting(plan, budget, now)
        return plan if plan.work else None

    def _chunk(self, seq: Sequence, budget: int) -> int:
        new = min(seq.remaining, budget)
        threshold = self.limits.long_prefill_token_threshold
        if 0 < threshold < new and not seq.is_decoding:
            new = threshold
        return new

    def _schedule_running(self, plan: StepPlan, budget: int) -> int:
        index = 0
        while index < len(self.running) and budget > 0:
            seq = self.running[index]
            new = self._chunk(seq, budget)
            if not self._make_room(seq, seq.num_computed + new, plan):
                break  # seq itself was preempted: it was the newest
            self.kv.grow(seq.seq_id, seq.num_computed + new)
            plan.add(seq, new)
            budget -= new
            index += 1
        return budget

    def _make_room(self, seq: Sequence, tokens: int, plan: StepPlan) -> bool:
        """Preempt the newest running sequences until ``seq`` fits; False if ``seq`` went."""
        while not self.kv.can_grow(seq.seq_id, tokens):
            victim = self.running.pop()
            self._preempt(victim)
            plan.preempted.append(victim)
            if victim is seq:
                return False
        return True

    def _preempt(self, seq: Sequence) -> None:
        self.kv.free(seq.seq_id)
        seq.num_computed = 0
        seq.status = SeqStatus.WAITING
        seq.preemptions += 1
        self.waiting.appendleft(seq)

    def _admit_waiting(self, plan: StepPlan, budget: int, now: float) -> None:
        while self.waiting and budget > 0 and len(self.running) < self.limits.max_num_seqs:
            seq = self.waiting[0]
            new = self._chunk(seq, budget)
            if not self.kv.can_grow(seq.seq_id, seq.num_computed + new):
                break
            self.waiting.popleft()
            self.kv.grow(seq.seq_id, seq.num_computed + new)
            seq.status = SeqStatus.RUNNING
            if seq.first_scheduled is None:
                seq.first_scheduled = now
            self.running.append(seq)
            plan.add(seq, new)
            budget -= new

    def complete(self, plan: StepPlan, now: float) -> list[Sequence]:
        """Apply a finished step: returns the sequences that produced a token in it."""
        produced = []
        for seq, new in plan.work:
            if seq.status is not SeqStatus.RUNNING:
                continue  # aborted while the step ran
            seq.num_computed += new
            if seq.remaining:
                continue  # prefill not finished yet
            seq.output_tokens += 1
            if seq.first_token is None:
                seq.first_token = now
            seq.previous_token, seq.last_token = seq.last_token, now
            produced.append(seq)
            if seq.output_tokens >= seq.target_output:
                self._finish(seq, now)
        return produced

    def _finish(self, seq: Sequence, now: float) -> None:
        self.running.remove(seq)
        self.kv.free(seq.seq_id)
        seq.status = SeqStatus.FINISHED
        seq.finish_reason = seq.stop_reason
        seq.finished = now
