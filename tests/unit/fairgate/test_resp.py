"""fairgate/resp.py: the pipelined script channel, against a RESP server written for the test.

What it sends on a new connection (nothing but ``AUTH`` and ``SELECT``, and only when the URL
asks for them), the TLS context it builds from a ``rediss://`` URL, replies matched to callers
by position, redis-py's exception types, and what callers hear when the server dies, stops
answering or speaks nonsense: the error, and the next command on a fresh connection.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.exceptions import (
    AskError,
    AuthenticationError,
    BusyLoadingError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from fairgate.redis_client import connect
from fairgate.resp import RedisAddress, RespChannel
from fairgate.settings import RedisConfig
from tests.unit.config import CA_PATH, CERT, CERT_KEY, ENCRYPTED_KEY
from tests.unit.fake_redis import HANGUP, OK, SILENCE, Error, FakeRedis, Raw, Status

# ------------------------------------------------------------------ the address, from a URL


def address(url: str, timeout_s: float = 2.0) -> RedisAddress:
    """Where the gateway's script channel connects for ``redis.url`` (as ``connect`` builds it)."""
    return connect(RedisConfig(url=url, timeout_s=timeout_s)).scripts.endpoint


def test_address_takes_credentials_database_and_timeout_from_the_url() -> None:
    endpoint = address("redis://al:s3cret@10.1.2.3:6380/5", timeout_s=0.7)
    assert (endpoint.host, endpoint.port, endpoint.path, endpoint.db) == ("10.1.2.3", 6380, None, 5)
    assert (endpoint.username, endpoint.password) == ("al", "s3cret")
    assert endpoint.timeout_s == 0.7
    assert endpoint.ssl is None


def test_address_of_a_password_only_url_has_no_username() -> None:
    endpoint = address("redis://:s3cret@127.0.0.1:6379/0")
    assert (endpoint.username, endpoint.password, endpoint.db) == (None, "s3cret", 0)


def test_address_of_a_unix_socket_url() -> None:
    endpoint = address("unix:///run/redis/redis.sock?db=2")
    assert (endpoint.path, endpoint.db) == ("/run/redis/redis.sock", 2)


def test_rediss_verifies_the_server_certificate_and_its_name_by_default() -> None:
    context = address("rediss://127.0.0.1:6379/0").ssl
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname


def test_rediss_with_cert_reqs_none_verifies_nothing() -> None:
    context = address("rediss://127.0.0.1:6379/0?ssl_cert_reqs=none").ssl
    assert context is not None
    assert context.verify_mode == ssl.CERT_NONE
    assert not context.check_hostname


def test_rediss_with_check_hostname_false_verifies_the_certificate_only() -> None:
    context = address(f"rediss://127.0.0.1:6379/0?ssl_check_hostname=false&ssl_ca_certs={CERT}").ssl
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert not context.check_hostname


# --------------------------------------------------------------------------- the handshake


async def test_a_url_with_user_password_and_database_sends_auth_then_select(
    fake_redis: FakeRedis,
) -> None:
    fake_redis.username, fake_redis.password = "al", "s3cret"
    channel = RespChannel(address(fake_redis.url(auth="al:s3cret@", db=3)))
    assert await channel.execute("ECHO", "hi") == b"hi"
    assert fake_redis.connections == [
        [[b"AUTH", b"al", b"s3cret"], [b"SELECT", b"3"], [b"ECHO", b"hi"]]
    ]
    await channel.close()


async def test_a_password_only_url_sends_auth_with_the_password_alone(
    fake_redis: FakeRedis,
) -> None:
    fake_redis.password = "s3cret"
    channel = RespChannel(address(fake_redis.url(auth=":s3cret@")))
    assert await channel.execute("ECHO", "hi") == b"hi"
    assert fake_redis.connections == [[[b"AUTH", b"s3cret"], [b"ECHO", b"hi"]]]
    await channel.close()


async def test_a_plain_url_sends_no_handshake_at_all(fake_redis: FakeRedis) -> None:
    channel = RespChannel(address(fake_redis.url()))
    assert await channel.execute("ECHO", "hi") == b"hi"
    assert fake_redis.connections == [[[b"ECHO", b"hi"]]]  # no HELLO, no CLIENT SETNAME
    await channel.close()


async def test_a_wrong_password_is_an_authentication_error_each_time(
    fake_redis: FakeRedis,
) -> None:
    fake_redis.password = "s3cret"
    channel = RespChannel(address(fake_redis.url(auth=":wrong@")))
    for _ in range(2):
        with pytest.raises(AuthenticationError, match="WRONGPASS"):
            await channel.execute("ECHO", "hi")
    # the command never left: each attempt was a new connection that stopped at AUTH
    assert [names[0][0] for names in fake_redis.connections] == [b"AUTH", b"AUTH"]
    assert [b"ECHO", b"hi"] not in fake_redis.commands
    await channel.close()


async def test_a_server_that_never_answers_the_handshake_is_a_connection_error(
    fake_redis: FakeRedis,
) -> None:
    fake_redis.password = "s3cret"
    fake_redis.answers[b"AUTH"] = lambda command: SILENCE
    channel = RespChannel(address(fake_redis.url(auth=":s3cret@"), timeout_s=0.1))
    with pytest.raises(RedisConnectionError, match="cannot connect"):
        await channel.execute("ECHO", "hi")
    await channel.close()


async def test_a_unix_socket_url_connects_there_and_selects_its_database(tmp_path: Path) -> None:
    async with FakeRedis(unix_path=str(tmp_path / "redis.sock")) as fake:
        channel = RespChannel(address(f"unix://{tmp_path}/redis.sock?db=4"))
        assert await channel.execute("ECHO", "local") == b"local"
        assert fake.connections == [[[b"SELECT", b"4"], [b"ECHO", b"local"]]]
        await channel.close()


async def test_nothing_listening_is_a_connection_error_naming_the_address() -> None:
    async with FakeRedis() as gone:
        url = gone.url()
    channel = RespChannel(address(url))
    where = f"127.0.0.1:{gone.port}"
    with pytest.raises(RedisConnectionError, match=f"cannot connect to Redis at {where}"):
        await channel.execute("ECHO", "hi")
    await channel.close()


# --------------------------------------------------------------------------------- replies


async def test_replies_reach_their_callers_by_position_over_one_connection(
    fake_redis: FakeRedis,
) -> None:
    channel = RespChannel(address(fake_redis.url()))
    words = [f"w{i}" for i in range(200)]
    replies = await asyncio.gather(*(channel.execute("ECHO", word) for word in words))
    assert replies == [word.encode() for word in words]
    assert len(fake_redis.connections) == 1  # the first callers shared one connection attempt
    assert fake_redis.connections[0] == [[b"ECHO", word.encode()] for word in words]
    await channel.close()


async def test_replies_are_as_hiredis_parses_them(fake_redis: FakeRedis) -> None:
    fake_redis.answers[b"INT"] = lambda command: 42
    fake_redis.answers[b"NIL"] = lambda command: None
    fake_redis.answers[b"LIST"] = lambda command: [b"a", 1, [b"b"]]
    fake_redis.answers[b"STATUS"] = lambda command: Status("QUEUED")
    channel = RespChannel(address(fake_redis.url()))
    assert await channel.execute("INT") == 42
    assert await channel.execute("NIL") is None
    assert await channel.execute("LIST") == [b"a", 1, [b"b"]]
    assert await channel.execute("STATUS") == b"QUEUED"
    await channel.close()


async def test_arguments_of_every_type_are_sent_as_redis_strings(fake_redis: FakeRedis) -> None:
    fake_redis.answers[b"ARGS"] = lambda command: command[1:]
    channel = RespChannel(address(fake_redis.url()))
    assert await channel.execute("ARGS", "s", b"\x00b", 7, 1.5) == [b"s", b"\x00b", b"7", b"1.5"]
    await channel.close()


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ("NOSCRIPT No matching script.", NoScriptError),
        ("WRONGPASS invalid username-password pair", AuthenticationError),
        ("NOAUTH Authentication required.", AuthenticationError),
        ("NOPERM no permissions to run it", AuthenticationError),
        ("ERR Error running script", ResponseError),
    ],
)
async def test_error_replies_are_redis_py_exceptions_and_the_connection_stays(
    fake_redis: FakeRedis, message: str, kind: type[RedisError]
) -> None:
    fake_redis.answers[b"FAIL"] = lambda command: Error(message)
    channel = RespChannel(address(fake_redis.url()))
    with pytest.raises(kind, match=message.split()[0]):
        await channel.execute("FAIL")
    assert await channel.execute("ECHO", "after") == b"after"
    assert len(fake_redis.connections) == 1
    await channel.close()


# ------------------------------------------------------------------------ a dead connection


async def test_a_server_that_hangs_up_mid_call_fails_every_command_in_flight(
    fake_redis: FakeRedis,
) -> None:
    fake_redis.password = "s3cret"
    fake_redis.answers[b"DIE"] = lambda command: HANGUP
    channel = RespChannel(address(fake_redis.url(auth=":s3cret@", db=2)))
    assert await channel.execute("ECHO", "before") == b"before"
    results = await asyncio.gather(
        channel.execute("ECHO", "a"),
        channel.execute("DIE"),
        channel.execute("ECHO", "b"),
        return_exceptions=True,
    )
    assert results[0] == b"a"  # answered before the server went
    assert all(isinstance(result, RedisConnectionError) for result in results[1:]), results
    # the next command connects again, handshake included
    assert await channel.execute("ECHO", "after") == b"after"
    assert fake_redis.connections[1] == [
        [b"AUTH", b"s3cret"],
        [b"SELECT", b"2"],
        [b"ECHO", b"after"],
    ]
    await channel.close()


async def test_a_server_that_stops_answering_times_out_every_caller_then_reconnects(
    fake_redis: FakeRedis,
) -> None:
    fake_redis.answers[b"STALL"] = lambda command: SILENCE
    channel = RespChannel(address(fake_redis.url(), timeout_s=0.1))
    async with asyncio.timeout(30):  # only against a hang: the channel's own deadline decides
        results = await asyncio.gather(
            channel.execute("STALL"),
            channel.execute("ECHO", "behind"),
            return_exceptions=True,
        )
    assert [type(result) for result in results] == [RedisTimeoutError, RedisTimeoutError]
    assert "did not answer within 0.1 s" in str(results[0])
    assert await channel.execute("ECHO", "after") == b"after"
    assert len(fake_redis.connections) == 2
    await channel.close()


async def test_a_stopped_server_is_a_connection_error_and_a_new_one_is_used_when_back(
    fake_redis: FakeRedis,
) -> None:
    channel = RespChannel(address(fake_redis.url()))
    assert await channel.execute("ECHO", "before") == b"before"
    await fake_redis.stop()
    with pytest.raises(RedisConnectionError):
        await channel.execute("ECHO", "while down")
    async with FakeRedis() as back:  # the same channel, pointed at a live server again
        channel.endpoint = RedisAddress(port=back.port)
        assert await channel.execute("ECHO", "after") == b"after"
    await channel.close()


async def test_a_server_speaking_nonsense_fails_the_callers_and_is_left(
    fake_redis: FakeRedis,
) -> None:
    fake_redis.answers[b"GARBLE"] = lambda command: Raw(b"?what\r\n")
    channel = RespChannel(address(fake_redis.url()))
    with pytest.raises(RedisConnectionError, match="lost"):
        await channel.execute("GARBLE")
    assert await channel.execute("ECHO", "after") == b"after"
    assert len(fake_redis.connections) == 2
    await channel.close()


async def test_a_caller_that_gives_up_does_not_receive_or_steal_a_late_reply(
    fake_redis: FakeRedis,
) -> None:
    release = asyncio.Event()

    async def slow(command: list[bytes]) -> bytes:
        await release.wait()
        return b"slow"

    fake_redis.answers[b"SLOW"] = slow
    channel = RespChannel(address(fake_redis.url()))
    gives_up = asyncio.ensure_future(channel.execute("SLOW"))
    await fake_redis.until(lambda: [b"SLOW"] in fake_redis.commands)
    gives_up.cancel()
    waits = asyncio.ensure_future(channel.execute("ECHO", "mine"))
    await fake_redis.until(lambda: [b"ECHO", b"mine"] in fake_redis.commands)
    release.set()
    assert await waits == b"mine"
    assert gives_up.cancelled()
    assert len(fake_redis.connections) == 1  # a caller giving up costs no connection
    await channel.close()


async def test_close_fails_what_is_in_flight_and_the_next_command_reconnects(
    fake_redis: FakeRedis,
) -> None:
    fake_redis.answers[b"STALL"] = lambda command: SILENCE
    channel = RespChannel(address(fake_redis.url()))
    stuck = asyncio.ensure_future(channel.execute("STALL"))
    await fake_redis.until(lambda: [b"STALL"] in fake_redis.commands)
    await channel.close()
    with pytest.raises(RedisConnectionError, match="channel closed"):
        await stuck
    assert await channel.execute("ECHO", "again") == b"again"
    assert len(fake_redis.connections) == 2
    await channel.close()


# ---------------------------------------------------------------------------------- TLS


def server_tls(require_client_cert: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(CERT, CERT_KEY)
    if require_client_cert:
        context.load_verify_locations(CERT)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


@pytest.fixture
async def tls_redis() -> AsyncIterator[FakeRedis]:
    async with FakeRedis(tls=server_tls()) as fake:
        yield fake


async def test_rediss_with_the_servers_ca_connects_over_tls(tls_redis: FakeRedis) -> None:
    channel = RespChannel(address(tls_redis.url("rediss", query=f"ssl_ca_certs={CERT}")))
    assert await channel.execute("ECHO", "sealed") == b"sealed"
    await channel.close()


async def test_rediss_with_a_ca_directory_connects_over_tls(tls_redis: FakeRedis) -> None:
    """``ssl_ca_path``: a directory of CA certificates named by subject hash, as redis-py reads."""
    channel = RespChannel(address(tls_redis.url("rediss", query=f"ssl_ca_path={CA_PATH}")))
    assert await channel.execute("ECHO", "sealed") == b"sealed"
    await channel.close()


async def test_rediss_refuses_a_server_certificate_it_cannot_verify(tls_redis: FakeRedis) -> None:
    channel = RespChannel(address(tls_redis.url("rediss")))  # the system's CAs only
    with pytest.raises(RedisConnectionError, match="certificate verify failed"):
        await channel.execute("ECHO", "sealed")
    assert tls_redis.commands == []
    await channel.close()


async def test_rediss_with_cert_reqs_none_connects_to_any_server(tls_redis: FakeRedis) -> None:
    channel = RespChannel(address(tls_redis.url("rediss", query="ssl_cert_reqs=none")))
    assert await channel.execute("ECHO", "sealed") == b"sealed"
    await channel.close()


async def test_rediss_presents_the_client_certificate_of_the_url() -> None:
    async with FakeRedis(tls=server_tls(require_client_cert=True)) as fake:
        query = f"ssl_ca_certs={CERT}&ssl_certfile={CERT}&ssl_keyfile={CERT_KEY}"
        channel = RespChannel(address(fake.url("rediss", query=query)))
        assert await channel.execute("ECHO", "mutual") == b"mutual"
        await channel.close()


async def test_rediss_unlocks_an_encrypted_client_key_with_the_urls_password() -> None:
    async with FakeRedis(tls=server_tls(require_client_cert=True)) as fake:
        query = (
            f"ssl_ca_certs={CERT}&ssl_certfile={CERT}&ssl_keyfile={ENCRYPTED_KEY}"
            "&ssl_password=key-secret"
        )
        channel = RespChannel(address(fake.url("rediss", query=query)))
        assert await channel.execute("ECHO", "mutual") == b"mutual"
        await channel.close()


# ------------------------------------------------------- Cluster redirections, failovers


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        ("MOVED 3999 127.0.0.1:6381", MovedError),
        ("ASK 3999 127.0.0.1:6381", AskError),
        ("TRYAGAIN Multiple keys request during rehashing of slot", TryAgainError),
        ("CLUSTERDOWN The cluster is down", ClusterDownError),
        ("LOADING Redis is loading the dataset in memory", BusyLoadingError),
    ],
)
async def test_cluster_and_failover_replies_are_redis_py_exceptions(
    fake_redis: FakeRedis, reply: str, kind: type[Exception]
) -> None:
    fake_redis.answers[b"GET"] = lambda command: Error(reply)
    channel = RespChannel(address(fake_redis.url()))
    with pytest.raises(kind) as raised:
        await channel.execute("GET", "k")
    if isinstance(raised.value, AskError):  # MOVED too: where the slot went
        assert (raised.value.slot_id, raised.value.host, raised.value.port) == (
            3999,
            "127.0.0.1",
            6381,
        )
    assert await channel.execute("ECHO", "still") == b"still"  # the connection stays
    assert len(fake_redis.connections) == 1
    await channel.close()


async def test_asking_goes_just_before_its_command_on_one_connection(
    fake_redis: FakeRedis,
) -> None:
    fake_redis.answers[b"ASKING"] = lambda command: OK
    channel = RespChannel(address(fake_redis.url()))
    replies = await asyncio.gather(
        channel.execute("ECHO", "a"),
        channel.execute_asking("ECHO", "b"),
        channel.execute("ECHO", "c"),
    )
    assert replies == [b"a", b"b", b"c"]
    assert fake_redis.connections == [
        [[b"ECHO", b"a"], [b"ASKING"], [b"ECHO", b"b"], [b"ECHO", b"c"]]
    ]
    await channel.close()


async def test_a_demoted_primary_is_left_and_the_next_command_goes_where_located() -> None:
    """Sentinel: the channel asks where the primary is whenever it connects; a READONLY
    reply (the server it talks to became a replica) fails what was in flight and drops the
    connection, so the next command reaches the primary located anew."""
    async with FakeRedis() as old, FakeRedis() as new:
        old.answers[b"SET"] = lambda command: Error(
            "READONLY You can't write against a read only replica."
        )
        primaries = [old.port, new.port]
        located: list[int] = []

        async def locate() -> tuple[str, int]:
            located.append(primaries[min(len(located), 1)])
            return "127.0.0.1", located[-1]

        channel = RespChannel(address("redis://unused:1/0"), locate)
        assert await channel.execute("ECHO", "before") == b"before"
        with pytest.raises(RedisConnectionError, match="replica"):
            await channel.execute("SET", "k", "v")
        assert await channel.execute("ECHO", "after") == b"after"
        assert located == [old.port, new.port]
        assert new.commands == [[b"ECHO", b"after"]]
        await old.until(lambda: old.open_connections == 0)  # left for good
        await channel.close()
