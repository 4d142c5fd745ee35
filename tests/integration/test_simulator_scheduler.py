"""The continuous-batching scheduler, step by step (pure logic, no clock, no HTTP)."""

from __future__ import annotations

from loadtest.simulator.kv_cache import BlockPool
from loadtest.simulator.profile import SchedulerLimits
from loadtest.simulator.scheduler import Scheduler
from loadtest.simulator.sequence import SeqStatus, Sequence


def make(
    budget: int = 8192, seqs: int = 256, blocks: int = 10_000, threshold: int = 0
) -> Scheduler:
    limits = SchedulerLimits(
        max_num_batched_tokens=budget, max_num_seqs=seqs, long_prefill_token_threshold=threshold
    )
    return Scheduler(limits, BlockPool(blocks, 16))


def seq(name: str, prompt: int, output: int = 10) -> Sequence:
    return Sequence(name, prompt, output, "length", arrival=0.0)


def step(scheduler: Scheduler) -> dict[str, int]:
    """Run one step; return the tokens each sequence computed in it."""
    plan = scheduler.schedule(0.0)
    assert plan is not None
    scheduler.complete(plan, 0.0)
    return {s.seq_id: n for s, n in plan.work}


def test_long_prompt_is_prefilled_in_budget_sized_chunks() -> None:
    scheduler = make(budget=8192)
    long = seq("long", 20_000, output=2)
    scheduler.add(long)
    assert [step(scheduler) for _ in range(3)] == [{"long": 8192}, {"long": 8192}, {"long": 3616}]
    assert long.output_tokens == 1  # the last chunk samples the first token
    assert step(scheduler) == {"long": 1}  # then one decode step per token
    assert long.status is SeqStatus.FINISHED and scheduler.kv.used_blocks == 0


def test_running_work_goes_first_and_newcomers_get_the_leftover_budget() -> None:
    scheduler = make(budget=8192)
    scheduler.add(seq("long", 20_000))
    step(scheduler)
    scheduler.add(seq("short", 100))
    assert step(scheduler) == {"long": 8192}  # nothing left for the newcomer
    assert step(scheduler) == {"long": 3616, "short": 100}


def test_long_prefill_threshold_caps_each_chunk() -> None:
    scheduler = make(budget=8192, threshold=512)
    scheduler.add(seq("long", 2_000))
    scheduler.add(seq("short", 100))
    assert step(scheduler) == {"long": 512, "short": 100}


def test_max_num_seqs_bounds_the_batch() -> None:
    scheduler = make(seqs=2)
    for name in "abc":
        scheduler.add(seq(name, 10))
    assert set(step(scheduler)) == {"a", "b"}
    assert [s.seq_id for s in scheduler.waiting] == ["c"]


def test_fcfs_head_that_does_not_fit_blocks_smaller_ones_behind_it() -> None:
    scheduler = make(budget=100, blocks=10)  # 160 tokens of KV; budget 100 tokens a step
    scheduler.add(seq("a", 100, output=50))
    step(scheduler)  # a holds 7 blocks
    scheduler.add(seq("big", 90))  # needs 6 blocks: only 3 free
    scheduler.add(seq("tiny", 5))  # would fit, but waits behind "big" (FCFS)
    assert step(scheduler) == {"a": 1}
    assert [s.seq_id for s in scheduler.waiting] == ["big", "tiny"]


def test_when_kv_runs_out_the_newest_running_sequence_is_preempted_and_recomputed() -> None:
    scheduler = make(budget=1000, blocks=6)  # 96 tokens of KV: each fits alone, not both
    old, new = seq("old", 32, output=40), seq("new", 16, output=40)
    scheduler.add(old)
    scheduler.add(new)
    step(scheduler)  # old: 2 blocks, new: 1 block
    while new.status is SeqStatus.RUNNING:
        step(scheduler)
    assert new.preemptions == 1 and old.preemptions == 0
    assert scheduler.waiting[0] is new and new.num_computed == 0
    produced = new.output_tokens
    while old.status is SeqStatus.RUNNING:
        step(scheduler)
    assert step(scheduler) == {"new": 16 + produced}  # prompt and its output, recomputed
    while new.status is not SeqStatus.FINISHED:
        step(scheduler)
    assert (old.output_tokens, new.output_tokens) == (40, 40)
    assert scheduler.kv.used_blocks == 0


def test_abort_frees_blocks_and_a_step_in_flight_ignores_the_aborted() -> None:
    scheduler = make()
    a, b = seq("a", 100), seq("b", 100)
    scheduler.add(a)
    scheduler.add(b)
    plan = scheduler.schedule(0.0)
    assert scheduler.abort(a) and not scheduler.abort(a)  # a second abort is a no-op
    produced = scheduler.complete(plan, 1.0)
    assert produced == [b] and a.status is SeqStatus.ABORTED and a.output_tokens == 0
    assert scheduler.kv.held("a") == 0 and scheduler.kv.held("b") > 0
