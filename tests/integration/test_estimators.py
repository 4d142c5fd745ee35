"""Cost estimates before a request runs, and how they learn from what engines report."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from estimators.estimator import CostEstimator
from estimators.feedback import OBSERVE_LUA
from estimators.history import OutputEstimate
from estimators.prompt_tokens import count_chat_prompt
from estimators.reasoning import wants_reasoning
from estimators.tokenizer import HuggingFaceTokenizer, default_tokenizer
from fairgate.redis_client import GatewayRedis
from fairgate.settings import ModelConfig, Settings
from tests.conftest import RunningSim, StartSim, read_until

MODEL = "llama-3-8b"
LONG_DOCUMENT = " ".join(
    f"Section {i}: the quarterly revenue of unit {i % 7} grew by {i * 3 % 17} percent while "
    "costs stayed flat, which the board attributes to the new routing layer."
    for i in range(300)
)
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
#: Realistic chat requests: short chat, long document, tool use, multi-turn, an image.
CORPUS: list[dict[str, Any]] = [
    {"messages": [{"role": "user", "content": "Hi! What's a good name for a cat?"}]},
    {
        "messages": [
            {"role": "system", "content": "You summarise documents for executives."},
            {"role": "user", "content": f"Summarise:\n\n{LONG_DOCUMENT}"},
        ]
    },
    {
        "messages": [{"role": "user", "content": "Weather in Oslo?"}],
        "tools": [WEATHER_TOOL],
    },
    {
        "messages": [
            {"role": "user", "content": "Weather in Oslo?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": -3, "sky": "snow"}'},
            {"role": "assistant", "content": "It is -3 °C and snowing in Oslo."},
            {"role": "user", "content": "And tomorrow? Answer in French, please."},
        ],
        "tools": [WEATHER_TOOL],
    },
    {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this picture?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                ],
            }
        ]
    },
]


def settings_for(redis_url: str, **sections: Any) -> Settings:
    return Settings(
        redis={"url": redis_url},
        pools={"p": {"backends": {"b": {"url": "http://127.0.0.1:9", "models": [MODEL]}}}},
        **sections,
    )


@pytest.fixture
def estimator(redis_url: str, redis: Redis) -> CostEstimator:
    return CostEstimator(
        settings_for(redis_url, estimation={"refresh_s": 0, "feedback_flush_s": 0}), redis
    )


@pytest.fixture(scope="session")
def small_bpe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real tokenizer.json with a tiny vocabulary (few merges): it counts about 3x cl100k."""
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=70, special_tokens=["[UNK]"])
    corpus = [
        LONG_DOCUMENT,
        *(m["content"] for r in CORPUS for m in r["messages"] if isinstance(m.get("content"), str)),
    ]
    tokenizer.train_from_iterator(corpus * 5, trainer)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tokenizer.save(str(path))
    return path


# ------------------------------------------------------------------------- prompt tokens


async def test_prompt_estimates_equal_the_simulators_counts_on_the_corpus(
    start_sim: StartSim, estimator: CostEstimator
) -> None:
    """Stated tolerance: exact. The simulator counts with the same tokenizer and template."""
    sim = await start_sim(time_scale=200.0)
    client = sim.client()
    for request in CORPUS:
        cost = await estimator.estimate("t", MODEL, request)
        reply = await client.chat.completions.create(model=MODEL, max_tokens=1, **request)
        assert cost.prompt_tokens == reply.usage.prompt_tokens, request["messages"][-1]
        assert cost.prompt_source == "tiktoken"


async def test_a_models_own_tokenizer_json_is_used(
    redis_url: str, redis: Redis, small_bpe: Path
) -> None:
    settings = settings_for(redis_url, models={MODEL: {"tokenizer": str(small_bpe)}})
    estimator = CostEstimator(settings, redis)
    text = "the quarterly revenue grew while costs stayed flat"
    cost = await estimator.estimate("t", MODEL, {"messages": [{"role": "user", "content": text}]})
    own = len(Tokenizer.from_file(str(small_bpe)).encode(text, add_special_tokens=False).ids)
    assert cost.prompt_source == "tokenizer"
    assert cost.prompt_tokens == own + 5 + 5  # Llama 3 template: one message, one reply header
    assert own != default_tokenizer().count(text)


async def test_engine_tokenize_gives_the_engines_exact_count(
    start_sim: StartSim, start_gateway: Any, redis_url: str
) -> None:
    from tests.conftest import gateway_config

    sim = await start_sim(time_scale=200.0)
    config = gateway_config(redis_url, {"interactive": [sim.url]})
    config["pools"]["interactive"]["tokenize"] = "engine"
    gateway = await start_gateway(config)
    raw = await gateway.client().chat.completions.with_raw_response.create(
        model=MODEL, max_tokens=3, **CORPUS[3]
    )
    assert int(raw.headers["x-fairgate-estimate-prompt-tokens"]) == raw.parse().usage.prompt_tokens


async def test_a_token_id_prompt_is_its_own_exact_count_without_asking_the_engine(
    estimator: CostEstimator,
) -> None:
    asked: list[dict[str, Any]] = []

    async def engine_count(body: dict[str, Any]) -> int | None:
        asked.append(body)
        return 7

    ids = await estimator.estimate("t", MODEL, {"prompt": [5] * 300}, True, engine_count)
    batch = await estimator.estimate("t", MODEL, {"prompt": [[1, 2], [3]]}, True, engine_count)
    embedding = await estimator.estimate("t", MODEL, {"input": [9] * 12}, False, engine_count)
    assert [(c.prompt_tokens, c.prompt_source) for c in (ids, batch, embedding)] == [
        (300, "token_ids"), (3, "token_ids"), (12, "token_ids"),
    ]  # fmt: skip
    assert asked == []  # vLLM answers 400 to /tokenize of a list: never asked
    text = await estimator.estimate("t", MODEL, {"prompt": ["hello", [1, 2]]}, True, engine_count)
    assert (text.prompt_source, len(asked)) == ("engine", 1)
    # exact counts teach the prompt correction nothing
    await estimator.observe("t", MODEL, ids, {"prompt_tokens": 300}, completed=True)
    assert estimator.calibration.cached_factor(MODEL) in (None, 1.0)


async def test_calibration_learns_the_ratio_to_the_models_tokenizer(
    estimator: CostEstimator, small_bpe: Path
) -> None:
    """tiktoken counts; the engine (a small BPE) reports more; the factor closes the gap."""
    engine = HuggingFaceTokenizer(small_bpe)
    template = ModelConfig().template
    rng = random.Random(7)
    sentences = LONG_DOCUMENT.split(". ")

    def request() -> dict[str, Any]:
        text = ". ".join(rng.sample(sentences, 5))
        return {"messages": [{"role": "user", "content": text}]}

    def error(cost: Any, body: dict[str, Any]) -> float:
        actual = count_chat_prompt(body["messages"], engine, template)
        return abs(cost.prompt_tokens - actual) / actual

    first = request()
    before = error(await estimator.estimate("t", MODEL, first), first)
    for _ in range(40):
        body = request()
        cost = await estimator.estimate("t", MODEL, body)
        actual = count_chat_prompt(body["messages"], engine, template)
        await estimator.observe("t", MODEL, cost, {"prompt_tokens": actual}, completed=True)
    body = request()
    after = error(await estimator.estimate("t", MODEL, body), body)
    assert before > 0.3 and after < 0.05
    report = await estimator.calibration.report(MODEL, "prompt")
    assert report.observations == 40 and report.factor > 1.3
    assert sum(report.errors.values()) == 40


async def test_long_prompts_are_tokenized_off_the_event_loop(redis_url: str, redis: Redis) -> None:
    body = {"messages": [{"role": "user", "content": " hello" * 128_000}]}

    async def ticks_during_estimate(off_loop_chars: int) -> int:
        estimator = CostEstimator(
            settings_for(redis_url, estimation={"off_loop_chars": off_loop_chars}), redis
        )
        await estimator.estimate("t", MODEL, {"messages": [{"role": "user", "content": "warm"}]})
        ticks = 0
        done = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not done.is_set():
                await asyncio.sleep(0)
                ticks += 1

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0)  # the ticker is running
        start = ticks
        cost = await estimator.estimate("t", MODEL, body)
        done.set()
        await task
        assert cost.prompt_tokens == 128_000 + 10
        return ticks - start

    assert await ticks_during_estimate(off_loop_chars=16_000) > 1
    assert await ticks_during_estimate(off_loop_chars=10_000_000) <= 1  # on the loop: blocked


# ------------------------------------------------------------------------- output tokens


async def test_output_history_converges_to_the_true_distribution(
    estimator: CostEstimator,
) -> None:
    rng = random.Random(1)
    lengths = sorted(round(rng.lognormvariate(5.7, 0.6)) for _ in range(4000))
    true_p50, true_p90 = lengths[2000], lengths[3600]
    body = {"messages": [{"role": "user", "content": "hi"}]}
    first = await estimator.estimate("t", MODEL, body)
    assert (first.expected_output, first.likely_output) == (256, 1024)  # the prior
    for _ in range(200):
        cost = await estimator.estimate("t", MODEL, body)
        actual = round(rng.lognormvariate(5.7, 0.6))
        await estimator.observe("t", MODEL, cost, {"completion_tokens": actual}, completed=True)
    learned = await estimator.estimate("t", MODEL, body)
    assert abs(learned.expected_output / true_p50 - 1) < 0.15
    assert abs(learned.likely_output / true_p90 - 1) < 0.2


async def test_concurrent_observations_go_as_one_batch_and_none_is_lost(
    redis_url: str, redis: Redis
) -> None:
    """Observations within ``feedback_flush_s`` share one script call; each still lands."""
    settings = settings_for(redis_url, estimation={"refresh_s": 0, "feedback_flush_s": 0.05})
    estimator = CostEstimator(settings, redis)
    body = {"messages": [{"role": "user", "content": "hi"}]}
    cost = await estimator.estimate("a", MODEL, body)
    await redis.script_load(OBSERVE_LUA)  # so that the batch is one EVALSHA, not NOSCRIPT + retry
    before = _script_calls(await redis.info("commandstats"))
    outputs = {"a": [10, 20, 30], "b": [40, 50]}
    factors = await asyncio.gather(
        *(
            estimator.observe(
                tenant, MODEL, cost, {"prompt_tokens": 2 * cost.prompt_tokens,
                                      "completion_tokens": n}, completed=True
            )
            for tenant, lengths in outputs.items()
            for n in lengths
        )
    )  # fmt: skip
    assert _script_calls(await redis.info("commandstats")) - before == 1  # one EVALSHA
    assert {seen.prompt_factor for seen in factors} == {2.0}  # all heard the batch's factor
    for tenant, lengths in outputs.items():
        own, _ = estimator.history.keys(tenant, MODEL, "chat")
        assert sorted(int(v) for v in await redis.lrange(own, 0, -1)) == lengths
    _, everyone = estimator.history.keys("a", MODEL, "chat")
    assert sorted(int(v) for v in await redis.lrange(everyone, 0, -1)) == [10, 20, 30, 40, 50]
    report = await estimator.calibration.report(MODEL, "prompt")
    assert report.observations == 5


async def test_a_batch_of_observations_leaves_what_one_call_each_would(redis: Redis) -> None:
    """observe.lua reads the calibration hash once and writes it once per batch: the factors,
    means, counts, error buckets and histories are those of one call per observation."""
    rng = random.Random(7)
    observations: list[list[Any]] = []
    for i in range(40):
        prompt_actual = rng.randint(1, 400) if i % 5 else ""  # some without a prompt count
        output_actual = rng.randint(1, 300) if i % 7 else ""  # some without an output
        raw = rng.randint(0, 400)
        observations.append(
            [2 + i % 2, 4, raw, raw + 3, prompt_actual, f"p{i % 3}",
             rng.randint(0, 300), output_actual, f"o{i % 4}"]
        )  # fmt: skip
    settings = ["0.05", "16", "60000"]

    async def run(name: str, batches: list[list[list[Any]]]) -> tuple[dict[str, str], list[Any]]:
        keys = [f"t:{{est:{name}}}:calib", f"t:{{est:{name}}}:a", f"t:{{est:{name}}}:b",
                f"t:{{est:{name}}}:all"]  # fmt: skip
        factors = []
        for batch in batches:
            args = [value for observation in batch for value in observation]
            factors.append(await redis.eval(OBSERVE_LUA, len(keys), *keys, *settings, *args))
        stored = {k.decode(): v.decode() for k, v in (await redis.hgetall(keys[0])).items()}
        lists = [await redis.lrange(key, 0, -1) for key in keys[1:]]
        return stored, [factors[-1], *lists]

    one_each, lists_one_each = await run("one", [[o] for o in observations])
    batched, lists_batched = await run("batch", [observations[:25], observations[25:]])
    sums = [name for name in one_each if name.endswith("abs_pct_error_sum")]
    assert sums and one_each.keys() == batched.keys()
    for name in sums:  # summed in another order: equal but for the last bits
        assert float(batched.pop(name)) == pytest.approx(float(one_each.pop(name)), rel=1e-12)
    assert batched == one_each
    assert lists_batched == lists_one_each
    assert len(lists_batched[3]) == 16  # trimmed to the history size


def _script_calls(stats: dict[str, Any]) -> int:
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def test_reasoning_has_its_own_history_and_new_tenants_start_from_the_model(
    estimator: CostEstimator,
) -> None:
    chat = {"messages": [{"role": "user", "content": "hi"}]}
    think = {**chat, "reasoning_effort": "high"}
    for _ in range(50):
        cost = await estimator.estimate("old", MODEL, chat)
        await estimator.observe("old", MODEL, cost, {"completion_tokens": 40}, completed=True)
    assert (await estimator.estimate("old", MODEL, chat)).expected_output <= 60
    reasoning = await estimator.estimate("old", MODEL, think)
    assert reasoning.reasoning and reasoning.expected_output == 2048  # untouched prior
    newcomer = await estimator.estimate("new", MODEL, chat)
    assert 40 < newcomer.expected_output < 256  # from the model's history, not the prior
    aborted = await estimator.estimate("old", MODEL, think)
    await estimator.observe("old", MODEL, aborted, {"completion_tokens": 3}, completed=False)
    assert (await estimator.estimate("old", MODEL, think)).expected_output == 2048


async def test_output_is_capped_by_max_tokens_or_the_context(redis_url: str, redis: Redis) -> None:
    settings = settings_for(redis_url, models={MODEL: {"context_length": 1000}})
    estimator = CostEstimator(settings, redis)
    capped = await estimator.estimate(
        "t", MODEL, {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100}
    )
    assert (capped.expected_output, capped.likely_output, capped.max_output) == (100, 100, 100)
    uncapped = await estimator.estimate("t", MODEL, {"prompt": [1] * 400})
    assert uncapped.max_output == 600 and uncapped.likely_output == 600
    assert uncapped.weighted == 1.0 * 400 + 2.0 * 256
    embedding = await estimator.estimate("t", MODEL, {"input": ["a", "b"]}, generates=False)
    assert (embedding.expected_output, embedding.max_output) == (0, 0)


async def test_every_choice_is_estimated_and_learned_as_one_choice(
    estimator: CostEstimator,
) -> None:
    """``n: 3`` generates three outputs from one prompt: three times the output, one prompt;
    the history learns the length of one choice."""
    hello = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100}
    one = await estimator.estimate("t", MODEL, hello)
    three = await estimator.estimate("t", MODEL, {**hello, "n": 3})
    assert three.prompt_tokens == one.prompt_tokens and three.choices == 3
    assert (three.expected_output, three.likely_output, three.max_output) == (
        3 * one.expected_output,
        3 * one.likely_output,
        300,
    )
    best = await estimator.estimate("t", MODEL, {"prompt": "x", "n": 2, "best_of": 5})
    assert best.choices == 5  # best_of candidates are generated, n of them returned
    for odd in ({"n": 0}, {"n": "3"}, {"n": True}, {"n": -2}):
        assert (await estimator.estimate("t", MODEL, {**hello, **odd})).choices == 1
    for _ in range(40):  # three choices of 30 tokens each: one choice is 30 tokens long
        await estimator.observe("t", MODEL, three, {"completion_tokens": 90}, completed=True)
    learned = await estimator.estimate("t", MODEL, hello)
    assert 30 <= learned.expected_output <= 40  # 30, shrunk a little toward the prior; not 90


async def test_requests_that_arrive_together_read_a_history_once(
    redis_url: str, redis: Redis
) -> None:
    """200 requests at once, nothing read yet: one read of the history and the factor, which
    every one of them hears (issue 17: a stampede of reads at each expiry under load)."""
    estimator = CostEstimator(settings_for(redis_url, estimation={"refresh_s": 60}), redis)
    tenant, everyone = estimator.history.keys("t", MODEL, "chat")
    await redis.rpush(tenant, *[40] * 100)
    await redis.rpush(everyone, *[40] * 100)
    await redis.config_resetstat()
    hello = {"messages": [{"role": "user", "content": "hi"}]}
    costs = await asyncio.gather(*(estimator.estimate("t", MODEL, hello) for _ in range(200)))
    assert {cost.expected_output for cost in costs} == {41}  # 40, a little toward the prior
    stats = await redis.info("commandstats")
    assert stats["cmdstat_lrange"]["calls"] == 2  # the tenant's list and the model's, once
    assert stats["cmdstat_hget"]["calls"] == 1  # the prompt correction factor, once
    await estimator.close()


async def test_a_stale_history_is_used_while_one_read_replaces_it(
    redis_url: str, redis: Redis
) -> None:
    """Past ``refresh_s`` the estimate a replica holds still answers at once, without I/O, and
    one read in the background brings the new history in."""
    settings = settings_for(redis_url, estimation={"refresh_s": 0.05, "prior_weight": 1})
    estimator = CostEstimator(settings, redis)
    history = estimator.history
    first = await history.estimate("t", MODEL, "chat")
    assert first.p50 == 256  # the prior: no history yet
    tenant, _ = history.keys("t", MODEL, "chat")
    await redis.rpush(tenant, *[1000] * 99)
    await asyncio.sleep(0.1)  # past refresh_s
    await redis.config_resetstat()
    assert [history.cached("t", MODEL, "chat") for _ in range(50)] == [first] * 50
    assert await history.estimate("t", MODEL, "chat") == first  # no wait for the read either

    async def held() -> OutputEstimate | None:
        return history.cached("t", MODEL, "chat")

    refreshed = await read_until(held, lambda estimate: estimate != first)
    assert refreshed is not None and refreshed.p50 > 900
    stats = await redis.info("commandstats")
    assert stats["cmdstat_lrange"]["calls"] == 2  # one read for the 51 that found it stale
    await estimator.close()


async def test_redis_down_falls_back_to_priors(unused_tcp_port: int) -> None:
    redis = GatewayRedis.from_url(f"redis://127.0.0.1:{unused_tcp_port}/0")
    estimator = CostEstimator(settings_for(f"redis://127.0.0.1:{unused_tcp_port}/0"), redis)
    cost = await estimator.estimate("t", MODEL, {"messages": [{"role": "user", "content": "hi"}]})
    assert cost.expected_output == 256 and cost.prompt_tokens == 11
    seen = await estimator.observe("t", MODEL, cost, {"prompt_tokens": 11}, completed=True)
    assert seen.prompt_factor is None  # nothing learned, nothing raised
    await redis.aclose()


@pytest.mark.parametrize(
    ("body", "model_reasons", "expected"),
    [
        ({}, False, False),
        ({}, True, True),
        ({"reasoning_effort": "low"}, False, True),
        ({"reasoning_effort": "none"}, True, False),
        ({"reasoning": {"effort": "high"}}, False, True),
        ({"reasoning": {"enabled": False}}, True, False),
        ({"chat_template_kwargs": {"enable_thinking": True}}, False, True),
        ({"chat_template_kwargs": {"enable_thinking": False}}, True, False),
        ({"chat_template_kwargs": {"thinking": True}}, False, True),
        ({"thinking": {"type": "enabled", "budget_tokens": 2000}}, False, True),
        ({"thinking": {"type": "disabled"}}, True, False),
    ],
)
def test_reasoning_requests_are_recognised(body: dict, model_reasons: bool, expected: bool) -> None:
    assert wants_reasoning(body, ModelConfig(reasoning=model_reasons)) is expected


# ------------------------------------------------------------------- through the gateway


async def test_gateway_returns_estimates_and_learns_from_usage(
    start_sim: StartSim, start_gateway: Any, redis_url: str, redis: Redis
) -> None:
    from tests.conftest import gateway_config

    sim: RunningSim = await start_sim(time_scale=200.0)
    gateway = await start_gateway(gateway_config(redis_url, {"interactive": [sim.url]}))
    client = gateway.client()
    for request in CORPUS:
        raw = await client.chat.completions.with_raw_response.create(
            model=MODEL, max_tokens=50, stream=False, **request
        )
        usage = raw.parse().usage
        assert int(raw.headers["x-fairgate-estimate-prompt-tokens"]) == usage.prompt_tokens
        assert 0 < int(raw.headers["x-fairgate-estimate-output-tokens"]) <= 50
    stream = await client.chat.completions.create(
        model=MODEL, max_tokens=50, stream=True, **CORPUS[0]
    )
    assert [c async for c in stream][-1].usage is None  # learned from, yet not shown

    for _ in range(200):  # learning happens after the responses, in the background
        history = await redis.lrange("fairgate:{est:llama-3-8b}:out:tenant:a:chat", 0, -1)
        if len(history) == len(CORPUS) + 1:
            break
        await asyncio.sleep(0.01)
    assert len(history) == len(CORPUS) + 1
    async with gateway.http.get(f"{gateway.url}/metrics") as resp:
        text = await resp.text()
    assert 'fairgate_estimate_ratio_count{kind="prompt",model="llama-3-8b"} 6.0' in text
    assert 'fairgate_estimate_correction_factor{model="llama-3-8b"} 1.0' in text
