"""The simulator speaks the OpenAI API the way vLLM does: checked with the official client."""

from __future__ import annotations

import json

import openai
import pytest

from estimators.prompt_tokens import count_chat_prompt
from estimators.tokenizer import default_tokenizer
from tests.conftest import RunningSim, StartSim

MESSAGES = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "Name three prime numbers, please."},
]


@pytest.fixture
async def sim(start_sim: StartSim) -> RunningSim:
    return await start_sim(time_scale=100.0)


@pytest.fixture
def client(sim: RunningSim) -> openai.AsyncOpenAI:
    return sim.client()


async def test_chat_usage_matches_the_tokenizer(client: openai.AsyncOpenAI) -> None:
    reply = await client.chat.completions.create(
        model="llama-3-8b", messages=MESSAGES, max_tokens=12, extra_body={"ignore_eos": True}
    )
    tokenizer = default_tokenizer()
    assert reply.object == "chat.completion"
    assert reply.usage.prompt_tokens == count_chat_prompt(MESSAGES, tokenizer)
    assert reply.usage.completion_tokens == 12
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 12
    assert reply.choices[0].finish_reason == "length"
    assert reply.choices[0].message.role == "assistant"
    assert tokenizer.count(reply.choices[0].message.content) == 12


async def test_chat_stream_with_usage_chunk(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="llama-3-8b",
        messages=MESSAGES,
        max_tokens=7,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = [chunk async for chunk in stream]
    opening, *tokens, final = chunks
    assert opening.choices[0].delta.role == "assistant" and opening.choices[0].delta.content == ""
    assert len(tokens) == 7 and all(c.choices[0].delta.content for c in tokens)
    assert [c.choices[0].finish_reason for c in tokens] == [None] * 6 + ["length"]
    assert final.choices == [] and final.usage.completion_tokens == 7
    assert final.usage.prompt_tokens == count_chat_prompt(MESSAGES, default_tokenizer())
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1 and opening.object == "chat.completion.chunk"


async def test_stream_without_include_usage_has_no_usage_chunk(sim: RunningSim) -> None:
    body = {
        "model": "llama-3-8b",
        "messages": MESSAGES,
        "max_tokens": 3,
        "stream": True,
        "ignore_eos": True,
    }
    async with sim.http.post(f"{sim.url}/v1/chat/completions", json=body) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        raw = (await resp.read()).decode()
    assert raw.endswith("\n\ndata: [DONE]\n\n")
    events = [e.removeprefix("data: ") for e in raw.strip().split("\n\n")]
    chunks = [json.loads(e) for e in events[:-1]]
    assert len(chunks) == 4  # the opening chunk and three tokens
    assert all("usage" not in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"][0]["delta"] == {
        "content": chunks[-1]["choices"][0]["delta"]["content"]
    }


async def test_text_completions_stream_and_not(client: openai.AsyncOpenAI) -> None:
    prompt = "Once upon a time"
    reply = await client.completions.create(
        model="llama-3-8b", prompt=prompt, max_tokens=5, extra_body={"ignore_eos": True}
    )
    assert reply.object == "text_completion"
    assert reply.usage.prompt_tokens == default_tokenizer().count(prompt)
    assert reply.usage.completion_tokens == 5
    stream = await client.completions.create(
        model="llama-3-8b",
        prompt=[1, 2, 3, 4],
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = [c async for c in stream]
    assert len(chunks) == 5  # no opening chunk for text completions: four tokens, then usage
    assert all(c.choices[0].text for c in chunks[:4])
    assert chunks[3].choices[0].finish_reason == "length"
    assert chunks[-1].usage.prompt_tokens == 4 and chunks[-1].usage.completion_tokens == 4


async def test_output_length_is_deterministic_and_capped(client: openai.AsyncOpenAI) -> None:
    async def ask(max_tokens: int) -> tuple[int, str]:
        reply = await client.chat.completions.create(
            model="llama-3-8b", messages=MESSAGES, max_tokens=max_tokens
        )
        return reply.usage.completion_tokens, reply.choices[0].finish_reason

    natural, reason = await ask(10_000)
    assert reason == "stop" and 1 <= natural < 10_000
    assert await ask(10_000) == (natural, "stop")
    assert await ask(natural - 1 or 1) == (max(natural - 1, 1), "length")


async def test_a_declared_max_tokens_apart_from_where_the_output_stops(
    client: openai.AsyncOpenAI,
) -> None:
    """``sim_output_tokens`` plays the model's end of sequence: a client may declare 4,096 and
    get 100 (the load-test kit's over-declaring tenants), or declare nothing at all."""

    async def ask(**body: object) -> tuple[int, str]:
        reply = await client.chat.completions.create(
            model="llama-3-8b", messages=MESSAGES, extra_body=body
        )
        return reply.usage.completion_tokens, reply.choices[0].finish_reason

    assert await ask(max_tokens=4096, sim_output_tokens=100) == (100, "stop")
    assert await ask(sim_output_tokens=1500) == (1500, "stop")  # no max_tokens: the context
    assert await ask(max_tokens=50, sim_output_tokens=100) == (50, "length")
    stream = await client.chat.completions.create(
        model="llama-3-8b",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"max_tokens": 4096, "sim_output_tokens": 7},
    )
    chunks = [c async for c in stream]
    assert chunks[-1].usage.completion_tokens == 7


async def test_models_health_and_tokenize(start_sim: StartSim) -> None:
    sim = await start_sim(models=["llama-3-8b", "llama-3-8b-instruct"])
    client = sim.client()
    models = await client.models.list()
    assert [m.id for m in models.data] == ["llama-3-8b", "llama-3-8b-instruct"]
    async with sim.http.get(f"{sim.url}/health") as resp:
        assert resp.status == 200
    async with sim.http.post(f"{sim.url}/tokenize", json={"prompt": "hello world"}) as resp:
        body = await resp.json()
    assert body["count"] == 2 == len(body["tokens"]) and body["max_model_len"] == 131072
    async with sim.http.post(f"{sim.url}/tokenize", json={"messages": MESSAGES}) as resp:
        body = await resp.json()
    assert body["count"] == count_chat_prompt(MESSAGES, default_tokenizer())


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (
            {"model": "llama-3-8b", "messages": MESSAGES, "max_tokens": -1},
            400,
            "max_tokens must be at least 1",
        ),
        ({"model": "llama-3-8b"}, 400, "Field required (parameter=messages)"),
        ({"model": "llama-3-8b", "messages": "hi"}, 400, "messages"),
        ({"model": "llama-3-8b", "messages": [{"role": "user", "content": 5}]}, 400, "content"),
        ({"model": "nope", "messages": MESSAGES}, 404, "The model `nope` does not exist"),
        (
            {"model": "llama-3-8b", "messages": MESSAGES, "max_tokens": 131073},
            400,
            "max_tokens=131073 cannot be greater than max_model_len=131072",
        ),
        (
            {
                "model": "llama-3-8b",
                "messages": MESSAGES,
                "stream_options": {"include_usage": True},
            },
            400,
            "stream",
        ),
        ([1, 2], 400, "JSON object"),
    ],
)
async def test_bad_chat_requests_get_vllm_style_errors(
    sim: RunningSim, body: object, status: int, fragment: str
) -> None:
    async with sim.http.post(f"{sim.url}/v1/chat/completions", json=body) as resp:
        assert resp.status == status
        error = (await resp.json())["error"]
    assert fragment in error["message"]
    assert error["code"] == status


async def test_invalid_json_and_overlong_prompt(
    sim: RunningSim, client: openai.AsyncOpenAI
) -> None:
    async with sim.http.post(
        f"{sim.url}/v1/completions", data=b'{"model": "llama-3-8b", "prompt": '
    ) as resp:
        assert resp.status == 400
        assert "Invalid JSON" in (await resp.json())["error"]["message"]
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        await client.completions.create(
            model="llama-3-8b", prompt=list(range(131072)), max_tokens=1
        )
    with pytest.raises(openai.NotFoundError):
        await client.completions.create(model="gpt-4", prompt="hi", max_tokens=1)


async def test_output_is_capped_at_the_rest_of_the_context(start_sim: StartSim) -> None:
    sim = await start_sim(max_model_len=4096)
    client = sim.client()
    reply = await client.completions.create(
        model="llama-3-8b", prompt=[5] * 1000, max_tokens=4000, extra_body={"ignore_eos": True}
    )
    assert reply.usage.completion_tokens == 3096
    assert reply.choices[0].finish_reason == "length"


async def test_errors_name_the_parameter(sim: RunningSim) -> None:
    body = {"model": "llama-3-8b", "messages": MESSAGES, "max_tokens": 0}
    async with sim.http.post(f"{sim.url}/v1/chat/completions", json=body) as resp:
        error = (await resp.json())["error"]
    assert error["param"] == "max_tokens" and error["type"] == "BadRequestError"


async def test_embeddings_are_deterministic_and_counted(client: openai.AsyncOpenAI) -> None:
    first = await client.embeddings.create(model="llama-3-8b", input=["hello world", "bye"])
    again = await client.embeddings.create(
        model="llama-3-8b", input="hello world", encoding_format="float"
    )
    assert [d.index for d in first.data] == [0, 1]
    assert len(first.data[0].embedding) == 256
    assert first.data[0].embedding == pytest.approx(again.data[0].embedding, rel=1e-6)
    assert first.data[0].embedding != pytest.approx(first.data[1].embedding)
    assert first.usage.prompt_tokens == default_tokenizer().count("hello world") + 1
