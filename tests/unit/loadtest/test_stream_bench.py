"""The slow-stream benchmark's arithmetic: schedules, added gaps, pauses, pooled rounds, the
processes of the scale turn."""

from __future__ import annotations

import pytest

from loadtest.stream_bench import measurement
from loadtest.stream_bench.client import Stream
from loadtest.stream_bench.measurement import (
    PAUSE_DELAY_S,
    PAUSE_STREAMS,
    SCALE_STREAMS,
    Turn,
    TurnResult,
    analyse,
    pauses,
)
from loadtest.stream_bench.stack import Target
from loadtest.stream_bench.workload import LLM, SLOW, Shape

SHAPE = Shape(4, 0.1, 0.2)


def test_a_seed_gives_the_same_offsets_within_the_shape() -> None:
    offsets = SHAPE.offsets(7)
    assert offsets == SHAPE.offsets(7)
    assert offsets != SHAPE.offsets(8)
    assert offsets[0] == 0.0 and len(offsets) == SHAPE.chunks
    gaps = [b - a for a, b in zip(offsets, offsets[1:], strict=False)]
    assert all(SHAPE.min_interval_s <= gap <= SHAPE.max_interval_s for gap in gaps)
    assert Shape.of_user(LLM.user) == LLM


def _stream(seed: int, sent: float, delays: dict[int, float] | None = None) -> Stream:
    """A stream whose chunks arrived on schedule 10 ms after it was sent, chunk i late by
    ``delays[i]`` (and those after it with it, as a stalled relay makes them), then usage and
    [DONE] with the last."""
    late = 0.0
    arrivals = []
    for i, offset in enumerate(SHAPE.offsets(seed)):
        late = max(late, (delays or {}).get(i, 0.0))
        arrivals.append(sent + 0.01 + offset + late)
    return Stream(seed, sent, arrivals + [arrivals[-1]] * 2, 200, True)


def _result() -> TurnResult:
    return TurnResult(Turn("fairgate", 100, SHAPE), 1.0, 10.0)


def test_on_schedule_adds_nothing_and_counts_each_content_chunk() -> None:
    result = _result()
    analyse([_stream(seed, sent=1.0 + seed) for seed in range(3)], SHAPE, 0.0, 100.0, result)
    assert result.chunks == 3 * SHAPE.chunks  # not the usage chunk, not [DONE]
    assert len(result.gaps) == 3 * (SHAPE.chunks - 1)
    assert max(abs(gap) for gap in result.gaps) < 1e-9
    assert [round(t, 6) for t in result.ttfb] == [0.01] * 3
    assert result.pauses == [] and result.errors == 0


def test_only_the_window_counts() -> None:
    result = _result()
    analyse([_stream(0, sent=1.0)], SHAPE, 1.0, 1.0 + 0.01 + SHAPE.offsets(0)[1] + 1e-6, result)
    assert result.chunks == 2 and len(result.gaps) == 1 and len(result.ttfb) == 1


def test_many_streams_delayed_together_are_one_pause_and_a_few_are_none() -> None:
    # the third chunk of every stream is due at a different time; a stall holds each one
    # until the same moment, as a collector's pause would
    stall_end = 5.0
    together = []
    for seed in range(PAUSE_STREAMS):
        due = 1.0 + 0.01 + SHAPE.offsets(seed)[2]
        together.append(_stream(seed, sent=1.0, delays={2: stall_end - due}))
    result = _result()
    analyse(together, SHAPE, 0.0, 100.0, result)
    assert len(result.pauses) == 1
    pause = result.pauses[0]
    assert pause.streams == PAUSE_STREAMS
    assert pause.worst >= PAUSE_DELAY_S
    few = _result()
    analyse(together[: PAUSE_STREAMS - 1], SHAPE, 0.0, 100.0, few)
    assert few.pauses == []


def test_delays_far_apart_are_separate_pauses() -> None:
    delayed = [(1.0 + i * 0.001, 0.1, i) for i in range(PAUSE_STREAMS)]
    delayed += [(9.0 + i * 0.001, 0.3, i) for i in range(PAUSE_STREAMS)]
    found = pauses(delayed, start=0.0)
    assert [(round(p.at, 3), p.streams, p.worst) for p in found] == [
        (1.0, PAUSE_STREAMS, 0.1),
        (9.0, PAUSE_STREAMS, 0.3),
    ]


def test_rounds_pool_their_figures() -> None:
    first, second = _result(), _result()
    first.chunks, second.chunks = 100, 300
    first.cpu, second.cpu = {"gateway": 0.01}, {"gateway": 0.03}
    first.rss_added, second.rss_added = [1_000_000.0], [3_000_000.0]
    first.add(second)
    assert first.window_s == 20.0
    assert first.cpu_per_chunk() == 0.04 / 400
    assert first.rss_per_1000 == 2_000_000.0 / 100 * 1000  # the median round, per 1,000


@pytest.mark.parametrize(
    ("open_files", "processes", "paths"),
    [
        (65_536, 1, ["forwarder", "fairgate", "baseline"]),
        (20_000, 2, ["forwarder", "fairgate"]),  # the baseline may not know --workers
        (4_000, 7, ["forwarder", "fairgate"]),
    ],
)
def test_the_scale_turn_holds_every_stream_through_as_many_processes_as_files_ask(
    monkeypatch: pytest.MonkeyPatch, open_files: int, processes: int, paths: list[str]
) -> None:
    monkeypatch.setattr(measurement, "open_files", lambda: open_files)
    planned = measurement.turns(
        [100], ["forwarder", "fairgate", "baseline", "control"], 1, scale=True
    )  # the control: not at scale
    scale = [turn for turn in planned if turn.shape == SLOW]
    assert scale == [Turn(path, SCALE_STREAMS, SLOW, processes) for path in paths]
    assert all(turn.processes == 1 for turn in planned if turn.shape != SLOW)


def test_streams_longer_than_the_window_count_their_first_chunks_from_the_ramp() -> None:
    sent_before = [_stream(seed, sent=1.0 + seed) for seed in range(3)]
    in_window = TurnResult(Turn("forwarder", 3, SHAPE), 0.0, 1.0)
    analyse(sent_before, SHAPE, 10.0, 100.0, in_window)
    assert in_window.ttfb == []  # none was sent in the window
    since_ramp = TurnResult(Turn("forwarder", 3, SHAPE), 0.0, 1.0)
    analyse(sent_before, SHAPE, 10.0, 100.0, since_ramp, sent_from=0.0)
    assert len(since_ramp.ttfb) == 3


def test_each_path_takes_its_turns_once_however_many_processes_serve_it() -> None:
    targets = [
        Target("forwarder", 1, {"gateway": (10,)}),
        Target("fairgate", 2, {"gateway": (20,), "redis": (30,)}),
        Target("forwarder", 3, {"gateway": (11, 12)}),  # the scale turn's
        Target("fairgate", 4, {"gateway": (21, 22), "redis": (30,)}),
    ]
    assert measurement.paths_of(targets) == ["forwarder", "fairgate"]
