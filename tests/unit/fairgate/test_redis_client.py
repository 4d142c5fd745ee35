"""fairgate/redis_client.py: scripts by SHA (sent whole if Redis lacks them), the deadline."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from fairgate.redis_client import Script, connect, deadline, text
from fairgate.settings import RedisConfig
from tests.unit.fake_redis import Error, FakeRedis

SOURCE = "return {KEYS, ARGV}"
SHA = hashlib.sha1(SOURCE.encode()).hexdigest()


async def test_a_script_redis_lacks_is_sent_whole_once_then_by_sha(fake_redis: FakeRedis) -> None:
    client = connect(RedisConfig(url=fake_redis.url()))
    script = Script(client, SOURCE)
    assert script.sha == SHA
    assert await script(["k1", "k2"], [7, "x"]) == [[b"k1", b"k2"], [b"7", b"x"]]
    assert await script(["k3"], []) == [[b"k3"], []]
    assert fake_redis.names() == ["EVALSHA", "EVAL", "EVALSHA"]
    assert fake_redis.commands[0] == [b"EVALSHA", SHA.encode(), b"2", b"k1", b"k2", b"7", b"x"]
    assert fake_redis.commands[1] == [b"EVAL", SOURCE.encode(), b"2", b"k1", b"k2", b"7", b"x"]
    assert fake_redis.scripts == {SHA.encode(): SOURCE.encode()}
    await client.aclose()


async def test_a_script_error_other_than_noscript_reaches_the_caller(
    fake_redis: FakeRedis,
) -> None:
    fake_redis.answers[b"EVALSHA"] = lambda command: Error("ERR Error running script: boom")
    client = connect(RedisConfig(url=fake_redis.url()))
    with pytest.raises(ResponseError, match="boom"):
        await Script(client, SOURCE)(["k"], [])
    assert fake_redis.names() == ["EVALSHA"]  # not loaded: Redis knew it
    await client.aclose()


async def test_the_client_closes_its_script_channel(fake_redis: FakeRedis) -> None:
    client = connect(RedisConfig(url=fake_redis.url()))
    assert await client.scripts.execute("ECHO", "x") == b"x"
    await client.aclose()
    await fake_redis.until(lambda: fake_redis.open_connections == 0)  # the server saw it go


async def test_deadline_turns_an_expired_wait_into_redis_timeout_error() -> None:
    with pytest.raises(RedisTimeoutError, match="within 0.01 s") as caught:
        async with deadline(0.01):
            await asyncio.Event().wait()
    assert isinstance(caught.value, RedisError)  # callers catching RedisError see it


async def test_deadline_lets_a_prompt_call_through() -> None:
    async with deadline(10):
        result = await asyncio.sleep(0, "done")
    assert result == "done"


@pytest.mark.parametrize(("value", "expected"), [(b"abc", "abc"), ("abc", "abc"), (3, "3")])
def test_text_of_a_reply(value: bytes | str, expected: str) -> None:
    assert text(value) == expected
