"""Redis deployments a test starts on loopback: a Cluster, a primary watched by Sentinels, a
server that speaks only TLS to an ACL user.

Every process is a real ``redis-server`` (Sentinels too: ``redis-server --sentinel``) on free
loopback ports, without persistence, with its files in the test's temporary directory, and
stopped (or killed) when the context that started it ends. What a test does to them while
traffic flows (kill a primary, fail over, migrate a slot) is async, so that gateways running
in the test's own event loop keep serving meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis, RedisCluster
from redis.crc import key_slot

from loadtest.services import free_ports, log_tail, wait_listening
from tests.conftest import RunningGateway, inflight_state

#: Seconds a Cluster node or a Sentinel waits before calling a silent primary down: short, so
#: that a failover takes a couple of seconds in a test.
DOWN_AFTER_MS = 1000


def redis_version() -> tuple[int, int] | None:
    """The major and minor version of the ``redis-server`` on PATH; None if there is none."""
    server = shutil.which("redis-server")
    if server is None:
        return None
    out = subprocess.run([server, "--version"], capture_output=True, text=True, check=False)
    found = re.search(r"v=(\d+)\.(\d+)", out.stdout)
    return (int(found[1]), int(found[2])) if found else None


def require_redis_7(what: str) -> None:
    """Skip unless ``redis-server`` 7 or later and ``redis-cli`` are on PATH (Cluster tests:
    fairgate uses sharded pub/sub there, which Redis 7 introduced)."""
    version = redis_version()
    if version is None or shutil.which("redis-cli") is None:
        pytest.skip(f"{what}: redis-server and redis-cli are not installed")
    if version < (7, 0):
        pytest.skip(f"{what}: needs redis-server 7 or later, found {version[0]}.{version[1]}")


@dataclass
class Server:
    """One ``redis-server`` process (a data node or a Sentinel)."""

    workdir: Path
    port: int
    args: list[str]
    name: str
    process: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.workdir / f"{self.name}.log"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, tls_port: int | None = None) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                ["redis-server", *self.args],
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_listening(tls_port or self.port, self.process, timeout_s=10)
        except RuntimeError as exc:
            raise RuntimeError(f"{self.name}: {exc}\n{log_tail(self.log)}") from None

    def kill(self) -> None:
        """SIGKILL: gone at once, nothing flushed, connections reset."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def client(self) -> Redis:
        return Redis(host="127.0.0.1", port=self.port)


def data_node_args(port: int, *extra: str) -> list[str]:
    """A data node: loopback, no persistence, replicas synced at once (not after 5 s)."""
    args = ["--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
    return [*args, "--repl-diskless-sync-delay", "0", *extra]


async def until(check: object, within_s: float, what: str) -> None:
    """Poll the async ``check()`` every 50 ms until it is true; fail naming ``what``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while True:
        with contextlib.suppress(Exception):
            if await check():  # type: ignore[operator]
                return
        if loop.time() > deadline:
            raise AssertionError(f"{what}: not within {within_s} s")
        await asyncio.sleep(0.05)


# ------------------------------------------------------------------------------ Cluster


@dataclass
class Cluster:
    """A Redis Cluster of ``len(primaries)`` shards, each with ``replicas`` (or none)."""

    primaries: list[Server]
    replicas: list[Server]
    servers: list[Server] = field(default_factory=list)

    @property
    def seed_url(self) -> str:
        return f"redis://{self.primaries[0].address}"

    def client(self) -> RedisCluster:
        """A plain redis-py Cluster client (what a test inspects the cluster with)."""
        return RedisCluster(host="127.0.0.1", port=self.primaries[0].port)

    async def owner(self, key: str) -> Server:
        """The server that owns ``key``'s slot now (asked of a live node)."""
        slot = key_slot(key.encode())
        for server in self.servers:
            if not server.running:
                continue
            async with server.client() as client:
                for start, end, primary, *_ in await client.execute_command("CLUSTER SLOTS"):
                    if start <= slot <= end:
                        return self.server(int(primary[1]))
        raise AssertionError(f"no live node knows the owner of slot {slot}")

    def server(self, port: int) -> Server:
        return next(s for s in self.servers if s.port == port)

    async def replica_of(self, primary: Server) -> Server:
        async with primary.client() as client:
            info = await client.info("replication")
        return self.server(int(info["slave0"]["port"]))

    async def healthy(self) -> bool:
        """Every live node sees the cluster ok, and every replica is in sync."""
        for server in self.servers:
            if server.running:
                async with server.client() as client:
                    info = await client.execute_command("CLUSTER INFO")
                if info["cluster_state"] != "ok":
                    return False
                async with server.client() as client:
                    replication = await client.info("replication")
                if replication["role"] == "slave" and replication["master_link_status"] != "up":
                    return False  # a replica not yet in sync could not take over
        return True

    async def wait_healthy(self, within_s: float = 20.0) -> None:
        await until(self.healthy, within_s, "the cluster is ok on every node")

    async def migrate_slot(self, slot: int, source: Server, target: Server, hold_s: float) -> None:
        """Move ``slot`` as ``redis-cli --cluster reshard`` does (importing, migrating, keys
        moved by MIGRATE, the new owner announced), staying ``hold_s`` in the migrating state
        after the keys moved: the window in which the source answers ``ASK``."""
        async with source.client() as src, target.client() as dst:
            source_id = (await src.execute_command("CLUSTER MYID")).decode()
            target_id = (await dst.execute_command("CLUSTER MYID")).decode()
            await dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source_id)
            await src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target_id)
            while keys := await src.execute_command("CLUSTER GETKEYSINSLOT", slot, 10):
                await src.execute_command(
                    "MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "REPLACE", "KEYS", *keys
                )
            await asyncio.sleep(hold_s)
            for server in self.servers:  # the new owner, then everyone else
                if server.running:
                    async with server.client() as client:
                        await client.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)


@contextlib.contextmanager
def redis_cluster(workdir: Path, shards: int = 3, replicas: int = 0) -> Iterator[Cluster]:
    """Start a cluster (``redis-cli --cluster create``) and stop every node afterwards."""
    require_redis_7("Redis Cluster")
    count = shards * (1 + replicas)
    ports = free_ports(2 * count)  # each node's clients port and its cluster bus port
    servers = [
        Server(
            workdir / f"node-{i}",
            ports[2 * i],
            data_node_args(
                ports[2 * i],
                *("--cluster-enabled", "yes", "--cluster-port", str(ports[2 * i + 1])),
                *("--cluster-config-file", "nodes.conf"),
                *("--cluster-node-timeout", str(DOWN_AFTER_MS)),
                *("--cluster-replica-validity-factor", "0"),  # any replica may take over
            ),
            f"node-{i}",
        )
        for i in range(count)
    ]
    try:
        for server in servers:
            server.start()
        create = ["redis-cli", "--cluster", "create", *(s.address for s in servers)]
        create += ["--cluster-replicas", str(replicas), "--cluster-yes"]
        done = subprocess.run(create, capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{done.stdout}{done.stderr}")
        # redis-cli makes the first ``shards`` nodes primaries, in the order given
        yield Cluster(servers[:shards], servers[shards:], servers)
    finally:
        for server in servers:
            server.stop()


# ----------------------------------------------------------------------------- Sentinel


@dataclass
class SentinelGroup:
    """A primary, its replica, and three Sentinels watching them as :attr:`MASTER`."""

    MASTER = "fairgate-primary"

    primary: Server
    replica: Server
    sentinels: list[Server]

    @property
    def addresses(self) -> list[str]:
        return [s.address for s in self.sentinels]

    async def primary_port(self) -> int:
        """The port of the primary, as the first live Sentinel names it now."""
        for sentinel in self.sentinels:
            if sentinel.running:
                async with sentinel.client() as client:
                    _, port = await client.execute_command(
                        "SENTINEL GET-MASTER-ADDR-BY-NAME", self.MASTER
                    )
                return int(port)
        raise AssertionError("no Sentinel is running")

    async def ready(self) -> bool:
        """The replica is in sync and every Sentinel knows the others and the replica."""
        async with self.primary.client() as client:
            info = await client.info("replication")
        if info.get("connected_slaves") != 1 or info["slave0"]["state"] != "online":
            return False
        for sentinel in self.sentinels:
            async with sentinel.client() as client:
                state = await client.execute_command("SENTINEL MASTER", self.MASTER)
            if int(state["num-other-sentinels"]) != 2 or int(state["num-slaves"]) != 1:
                return False
        return True


@contextlib.contextmanager
def sentinel_group(workdir: Path) -> Iterator[SentinelGroup]:
    """Start the primary, the replica, three Sentinels; stop them all afterwards."""
    if redis_version() is None:
        pytest.skip("Sentinel: redis-server is not installed")
    primary_port, replica_port, *sentinel_ports = free_ports(5)
    primary = Server(workdir / "primary", primary_port, data_node_args(primary_port), "primary")
    replica = Server(
        workdir / "replica",
        replica_port,
        data_node_args(replica_port, "--replicaof", "127.0.0.1", str(primary_port)),
        "replica",
    )
    sentinels = []
    for i, port in enumerate(sentinel_ports):
        conf = workdir / f"sentinel-{i}" / "sentinel.conf"
        conf.parent.mkdir(parents=True)
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\n"
            f"sentinel monitor {SentinelGroup.MASTER} 127.0.0.1 {primary_port} 2\n"
            f"sentinel down-after-milliseconds {SentinelGroup.MASTER} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {SentinelGroup.MASTER} 10000\n"
            f"sentinel parallel-syncs {SentinelGroup.MASTER} 1\n"
        )
        sentinels.append(Server(conf.parent, port, [str(conf), "--sentinel"], f"sentinel-{i}"))
    group = SentinelGroup(primary, replica, sentinels)
    try:
        primary.start()
        replica.start()
        _wait_in_sync(replica)  # then the Sentinels' first look at the primary lists it
        for sentinel in sentinels:
            sentinel.start()
        yield group
    finally:
        for server in (*sentinels, replica, primary):
            server.stop()


def _wait_in_sync(replica: Server, within_s: float = 10.0) -> None:
    with SyncRedis(host="127.0.0.1", port=replica.port) as client:
        deadline = time.monotonic() + within_s
        while client.info("replication").get("master_link_status") != "up":
            if time.monotonic() > deadline:
                raise RuntimeError(f"{replica.name} not in sync within {within_s} s")
            time.sleep(0.05)


# ---------------------------------------------------------------------------------- TLS


#: What fairgate's Redis user may do (docs/redis.md): its own keys and channels (the default
#: ``key_prefix``), every command but the dangerous ones.
ACL_RULES = ["~fairgate:*", "&fairgate:*", "+@all", "-@dangerous"]
#: A second user, allowed everything: what the test inspects the server as.
INSPECTOR = "inspector"


@dataclass
class TlsRedis:
    """A redis-server that takes TLS connections only, with an ACL user besides ``default``."""

    server: Server
    port: int
    user: str
    password: str


@contextlib.contextmanager
def tls_redis(
    workdir: Path, cert: Path, key: Path, user: str, password: str, client_certs: bool = False
) -> Iterator[TlsRedis]:
    """TLS on a free port (plain TCP off), ``cert``/``key`` its certificate, which is also the
    CA it trusts for client certificates (required with ``client_certs``, else optional). The
    ``default`` user is disabled; ``user`` has :data:`ACL_RULES` (and :data:`INSPECTOR`, with
    the same password, every right)."""
    if redis_version() is None:
        pytest.skip("TLS: redis-server is not installed")
    (tls_port,) = free_ports(1)
    args = ["--bind", "127.0.0.1", "--port", "0", "--tls-port", str(tls_port)]
    args += ["--tls-cert-file", str(cert), "--tls-key-file", str(key)]
    args += ["--tls-ca-cert-file", str(cert)]
    args += ["--tls-auth-clients", "yes" if client_certs else "optional"]
    args += ["--save", "", "--appendonly", "no"]
    args += ["--user", "default", "off", "--user", user, "on", f">{password}", *ACL_RULES]
    args += ["--user", INSPECTOR, "on", f">{password}", "~*", "&*", "+@all"]  # for the test
    server = Server(workdir, tls_port, args, "tls-redis")
    try:
        try:
            server.start(tls_port)
        except RuntimeError as exc:
            if "TLS" in str(exc) or "tls" in str(exc):
                pytest.skip(f"TLS: this redis-server was built without TLS support ({exc})")
            raise
        yield TlsRedis(server, tls_port, user, password)
    finally:
        server.stop()


# ------------------------------------------------------------------------------ traffic

MODEL = "llama-3-8b"
MESSAGES = [{"role": "user", "content": "Write a haiku about failovers."}]
#: Short leases for the failover tests: what a dead primary's lost writes leave behind (leases
#: its replica never heard were released) expires within seconds.
LEASE_TTL_S = 2.0


async def chat(gateway: RunningGateway, key: str = "key-a") -> Any:
    return await gateway.client(key).chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=3, extra_body={"ignore_eos": True}
    )


@dataclass
class Traffic:
    """Requests sent in a loop through several gateways while the cluster changes."""

    gateways: list[RunningGateway]
    key: str = "key-a"
    outcomes: list[tuple[float, str]] = field(default_factory=list)  # when each ended, how
    #: when each of ``outcomes`` was sent, in the same order
    sent: list[float] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _stopping: bool = False

    def start(self, loops: int = 6) -> None:
        self._tasks = [
            asyncio.create_task(self._loop(self.gateways[i % len(self.gateways)]))
            for i in range(loops)
        ]

    async def stop(self) -> None:
        """Let every loop finish the request it is in (a request cancelled by its client may
        still have been served and counted by the gateway, unknown to the outcomes), then end."""
        self._stopping = True
        _, late = await asyncio.wait(self._tasks, timeout=30)
        for task in late:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _loop(self, gateway: RunningGateway) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            sent = loop.time()
            try:
                await chat(gateway, self.key)
                outcome = "200"
            except openai.APIStatusError as exc:
                outcome = f"{exc.status_code} {exc.code}"
            except openai.APIConnectionError:
                outcome = "no response"  # the gateway dropped the connection: never expected
            self.outcomes.append((loop.time(), outcome))
            self.sent.append(sent)
            await asyncio.sleep(0.01)

    def since(self, at: float) -> list[str]:
        """How the requests that ended at ``at`` or later ended."""
        return [outcome for when, outcome in self.outcomes if when >= at]

    def sent_since(self, at: float) -> list[str]:
        """How the requests sent at ``at`` or later ended (after a recovery: one sent before
        it, waiting out a Redis timeout, may end after it with the failure it met)."""
        return [o for sent, (_, o) in zip(self.sent, self.outcomes, strict=True) if sent >= at]

    async def serving(self, within_s: float = 10.0) -> float:
        """Wait until 10 requests in a row succeed; when the first of them ended."""
        loop = asyncio.get_running_loop()

        async def ten_in_a_row() -> bool:
            tail = self.outcomes[-10:]
            return len(tail) == 10 and all(o == "200" for _, o in tail)

        await until(ten_in_a_row, within_s, "10 requests in a row served")
        return self.outcomes[-10][0] if self.outcomes else loop.time()


def allowed(fail_mode: str) -> set[str]:
    """What a client may see while admission's Redis is unreachable: nothing but success,
    or (fail closed) admission's 503."""
    return {"200"} | ({"503 admission_unavailable"} if fail_mode == "closed" else set())


async def drained(client: Redis | RedisCluster) -> None:
    """Every admission counter, lease and queue is gone (the redis_url fixture's promise),
    within what the leases of lost writes take to expire."""
    left: dict[str, object] = {}

    async def empty() -> bool:
        nonlocal left
        left = await inflight_state(client)  # type: ignore[arg-type]
        return not left

    try:
        await until(empty, 3 * LEASE_TTL_S + 5, "admission state drained")
    except AssertionError:
        raise AssertionError(f"admission state left in Redis: {left}") from None


async def subscribers(client: Redis, channel: str, sharded: bool = False) -> int:
    """How many connections of the server ``client`` talks to listen on ``channel``."""
    ((_, count),) = await (
        client.pubsub_shardnumsub(channel) if sharded else client.pubsub_numsub(channel)
    )
    return int(count)
