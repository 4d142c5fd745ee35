"""Behaviour of the configuration model (fairgate/settings.py) and `fairgate check-config`."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from fairgate.settings import ConfigError, Settings, hash_api_key, host_port, load_settings

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_CONFIG = REPO_ROOT / "config" / "fairgate.yaml"
EXAMPLE_KEYS = {
    "hobby": "fg-demo-hobby-key",
    "startup": "fg-demo-startup-key",
    "enterprise": "fg-demo-enterprise-key",
}
KEY_HASH = re.compile(r"^sha256:[0-9a-f]{64}$")


# --------------------------------------------------------------------------- helpers


def _is_fairgate_env(name: str) -> bool:
    return name.upper().startswith("FAIRGATE_") or name.upper() == "REDIS_URL"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may see FAIRGATE_* or REDIS_URL from the environment it was started in."""
    for name in list(os.environ):
        if _is_fairgate_env(name):
            monkeypatch.delenv(name)


def minimal_config() -> dict[str, Any]:
    """A small valid configuration: one pool with one backend, one tenant with one key."""
    return {
        "pools": {
            "interactive": {
                "backends": {"x": {"url": "http://127.0.0.1:9001", "models": ["m"]}},
            },
        },
        "tenants": {"t": {"weight": 1, "api_keys": ["fg-t-key"]}},
    }


def example_config() -> dict[str, Any]:
    """The shipped config/fairgate.yaml as plain data, to be modified by a test."""
    return yaml.safe_load(EXAMPLE_CONFIG.read_text(encoding="utf-8"))


def write_config(
    tmp_path: Path, content: dict[str, Any] | str, name: str = "fairgate.yaml"
) -> Path:
    """Write a config (data is dumped as YAML, a str is written verbatim) and return its path."""
    path = tmp_path / name
    text = content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False)
    path.write_text(text, encoding="utf-8")
    return path


def load(tmp_path: Path, content: dict[str, Any] | str) -> Settings:
    return load_settings(write_config(tmp_path, content))


def config_error(tmp_path: Path, content: dict[str, Any] | str) -> str:
    """Load a config that must be rejected and return the ConfigError's message."""
    with pytest.raises(ConfigError) as excinfo:
        load(tmp_path, content)
    return str(excinfo.value)


def rename(mapping: dict[str, Any], old: str, new: str) -> None:
    mapping[new] = mapping.pop(old)


def add_second_pool(
    cfg: dict[str, Any], backend: str = "y", url: str = "http://127.0.0.1:9002"
) -> None:
    cfg["pools"]["reasoning"] = {"backends": {backend: {"url": url, "models": ["m"]}}}


def run_check_config(
    path: Path | str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `python -m fairgate.cli check-config --config PATH` as a real process."""
    child_env = {k: v for k, v in os.environ.items() if not _is_fairgate_env(k)}
    child_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "fairgate.cli", "check-config", "--config", str(path)],
        cwd=REPO_ROOT,
        env=child_env,
        capture_output=True,
        text=True,
        timeout=60,
    )


# --------------------------------------------------------------------------- the shipped config


@pytest.fixture
def example() -> Settings:
    return load_settings(EXAMPLE_CONFIG)


def test_example_config_declares_two_pools(example: Settings) -> None:
    assert set(example.pools) == {"interactive", "reasoning"}
    assert example.backends().keys() == {"interactive-0", "reasoning-0"}
    assert example.backends()["interactive-0"][0] == "interactive"
    assert example.backends()["reasoning-0"][0] == "reasoning"
    assert example.pools["interactive"].models == frozenset({"llama-3-8b"})
    assert (
        str(example.pools["interactive"].backends["interactive-0"].url) == "http://127.0.0.1:8101/"
    )


def test_example_config_declares_three_tenants_weighted_1_2_4(example: Settings) -> None:
    assert {name: t.weight for name, t in example.tenants.items()} == {
        "hobby": 1.0,
        "startup": 2.0,
        "enterprise": 4.0,
    }


def test_example_config_gives_each_tenant_its_own_key(example: Settings) -> None:
    hashes = {name: example.tenants[name].key_hashes() for name in EXAMPLE_KEYS}
    for name, key in EXAMPLE_KEYS.items():
        assert hashes[name] == [hash_api_key(key)]
    all_hashes = [h for hs in hashes.values() for h in hs]
    assert len(set(all_hashes)) == 3
    assert all(KEY_HASH.match(h) for h in all_hashes)


def test_example_config_keys_are_never_exposed_in_clear(example: Settings) -> None:
    shown = [repr(example), str(example), example.model_dump_json(), repr(example.model_dump())]
    for key in EXAMPLE_KEYS.values():
        for text in shown:
            assert key not in text


def test_hash_api_key_is_prefixed_sha256_hex() -> None:
    # FIPS 180-2 test vector for "abc".
    assert hash_api_key("abc") == (
        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    assert hash_api_key("fg-x") == "sha256:" + hashlib.sha256(b"fg-x").hexdigest()
    assert hash_api_key("fg-x") != hash_api_key("fg-y")


def test_key_hashes_combines_clear_keys_and_given_hashes(tmp_path: Path) -> None:
    cfg = minimal_config()
    given = hash_api_key("fg-other-key")
    cfg["tenants"]["t"]["api_key_hashes"] = [given]
    settings = load(tmp_path, cfg)
    assert settings.tenants["t"].key_hashes() == [hash_api_key("fg-t-key"), given]


def test_defaults_fill_in_unstated_sections(tmp_path: Path) -> None:
    cfg = minimal_config()
    del cfg["tenants"]
    settings = load(tmp_path, cfg)
    assert settings.server.port == 8080
    assert settings.server.host == "127.0.0.1"
    assert settings.redis.url == "redis://127.0.0.1:6379/0"
    assert settings.redis.key_prefix == "fairgate"
    assert settings.tenants == {}
    backend = settings.pools["interactive"].backends["x"]
    assert backend.engine == "vllm"
    assert backend.max_concurrency == 64


def test_tenant_defaults(tmp_path: Path) -> None:
    cfg = minimal_config()
    cfg["tenants"] = {"t": {}}
    tenant = load(tmp_path, cfg).tenants["t"]
    assert tenant.weight == 1.0
    assert tenant.pools is None
    assert tenant.key_hashes() == []


def test_tenant_quotas_are_optional_and_may_be_per_model(tmp_path: Path) -> None:
    cfg = minimal_config()
    cfg["tenants"]["u"] = {
        "api_keys": ["fg-u-key"],
        "quotas": {"tokens_per_minute": 1000, "models": {"m": {"requests_per_minute": 5}}},
    }
    settings = load(tmp_path, cfg)
    assert settings.tenants["t"].quotas is None
    quotas = settings.tenants["u"].quotas
    assert quotas is not None
    assert (quotas.tokens_per_minute, quotas.requests_per_minute) == (1000, None)
    assert quotas.models["m"].requests_per_minute == 5


def test_tenant_may_name_known_pools(tmp_path: Path) -> None:
    cfg = minimal_config()
    add_second_pool(cfg)
    cfg["tenants"]["t"]["pools"] = ["reasoning"]
    assert load(tmp_path, cfg).tenants["t"].pools == ["reasoning"]


@pytest.mark.parametrize("url", ["redis://h:6379/0", "rediss://h:6380/1", "unix:///run/redis.sock"])
def test_accepted_redis_schemes(tmp_path: Path, url: str) -> None:
    cfg = minimal_config()
    cfg["redis"] = {"url": url}
    assert load(tmp_path, cfg).redis.url == url


@pytest.mark.parametrize(
    ("redis", "expected"),
    [
        pytest.param(
            {"url": "rediss://u:p@10.0.0.1:6379", "mode": "cluster", "nodes": ["10.0.0.2:6379"]},
            {"mode": "cluster", "nodes": ["10.0.0.2:6379"]},
            id="cluster-with-seeds",
        ),
        pytest.param(
            {"mode": "cluster", "url": "redis://[::1]:7000/0"},
            {"mode": "cluster", "nodes": []},
            id="cluster-from-the-url-alone",
        ),
        pytest.param(
            {
                "url": "rediss://fairgate:pw@unused/2",
                "mode": "sentinel",
                "sentinels": ["s1:26379", "[fd00::5]:26379"],
                "sentinel_master": "cache",
                "sentinel_password": "sentinel-secret",
            },
            {"mode": "sentinel", "sentinels": ["s1:26379", "[fd00::5]:26379"]},
            id="sentinel",
        ),
    ],
)
def test_redis_deployments(tmp_path: Path, redis: dict[str, Any], expected: dict) -> None:
    cfg = minimal_config()
    cfg["redis"] = redis
    loaded = load(tmp_path, cfg).redis
    assert {field: getattr(loaded, field) for field in expected} == expected


def test_host_port_of_a_node_or_sentinel() -> None:
    assert host_port("10.0.0.2:6379") == ("10.0.0.2", 6379)
    assert host_port("[fd00::5]:26379") == ("fd00::5", 26379)
    assert host_port("redis-0.redis.svc:7000") == ("redis-0.redis.svc", 7000)


# --------------------------------------------------------------------------- rejected configs

Mutation = Callable[[dict[str, Any]], None]


def _set_backend(**fields: Any) -> Mutation:
    return lambda cfg: cfg["pools"]["interactive"]["backends"]["x"].update(fields)


def _set_tenant(**fields: Any) -> Mutation:
    return lambda cfg: cfg["tenants"]["t"].update(fields)


def _same_key_on_two_tenants(cfg: dict[str, Any]) -> None:
    cfg["tenants"]["u"] = {"api_keys": ["fg-t-key"]}


def _same_key_as_hash_on_two_tenants(cfg: dict[str, Any]) -> None:
    cfg["tenants"]["u"] = {"api_key_hashes": [hash_api_key("fg-t-key")]}


def _backend_name_in_two_pools(cfg: dict[str, Any]) -> None:
    add_second_pool(cfg, backend="x")


def _backend_url_in_two_pools(cfg: dict[str, Any]) -> None:
    add_second_pool(cfg, url="http://127.0.0.1:9001/")


def _two_problems(cfg: dict[str, Any]) -> None:
    cfg["tenants"]["t"]["weight"] = -1
    cfg["server"] = {"port": 70000}


INVALID_CONFIGS = [
    pytest.param(
        _set_backend(url="not a url"),
        ["pools.interactive.backends.x.url:", "valid URL", "'not a url'"],
        id="backend-url-not-a-url",
    ),
    pytest.param(
        _set_backend(url="ftp://127.0.0.1:9001"),
        ["pools.interactive.backends.x.url:", "URL scheme should be 'http' or 'https'"],
        id="backend-url-wrong-scheme",
    ),
    pytest.param(
        _set_backend(models=[]),
        ["pools.interactive.backends.x.models:", "at least 1 item"],
        id="backend-without-models",
    ),
    pytest.param(
        _set_backend(models=["llama 3"]),
        ["pools.interactive.backends.x.models.0:", "should match pattern", "'llama 3'"],
        id="model-id-with-space",
    ),
    pytest.param(
        _set_backend(engine="triton"),
        ["pools.interactive.backends.x.engine:", "'triton'"],
        id="unknown-engine",
    ),
    pytest.param(
        _set_backend(max_concurrency=0),
        ["pools.interactive.backends.x.max_concurrency:", "greater than 0"],
        id="backend-zero-concurrency",
    ),
    pytest.param(
        _set_tenant(weight=-1),
        ["tenants.t.weight:", "greater than 0", "(got -1)"],
        id="negative-weight",
    ),
    pytest.param(
        _set_tenant(weight=0),
        ["tenants.t.weight:", "greater than 0"],
        id="zero-weight",
    ),
    pytest.param(
        _set_tenant(wieght=2),
        ["tenants.t.wieght:", "Extra inputs are not permitted"],
        id="typo-in-tenant-field",
    ),
    pytest.param(
        lambda cfg: cfg.update(severs={"port": 1}),
        ["severs:", "Extra inputs are not permitted"],
        id="typo-in-top-level-section",
    ),
    pytest.param(
        lambda cfg: cfg["pools"]["interactive"]["backends"]["x"].update(max_concurency=1),
        ["pools.interactive.backends.x.max_concurency:", "Extra inputs are not permitted"],
        id="typo-in-backend-field",
    ),
    pytest.param(
        lambda cfg: cfg.pop("pools"),
        ["pools: Field required"],
        id="missing-pools",
    ),
    pytest.param(
        lambda cfg: cfg.update(pools={}),
        ["pools:", "at least 1 item"],
        id="no-pools",
    ),
    pytest.param(
        lambda cfg: cfg["pools"]["interactive"].update(backends={}),
        ["pools.interactive.backends:", "at least 1 item"],
        id="pool-without-backends",
    ),
    pytest.param(
        _set_tenant(pools=["batch"]),
        ["tenants.t.pools", "unknown pool 'batch'", "known: interactive"],
        id="tenant-refers-to-unknown-pool",
    ),
    pytest.param(
        _set_tenant(quotas={"requests_per_minute": 0}),
        ["tenants.t.quotas.requests_per_minute", "greater than 0"],
        id="quota-not-positive",
    ),
    pytest.param(
        _set_tenant(quotas={"tokens_per_minut": 100}),
        ["tenants.t.quotas.tokens_per_minut", "Extra inputs are not permitted"],
        id="quota-typo",
    ),
    pytest.param(
        _set_tenant(quotas={"models": {"m": {"tokens_per_day": -5}}}),
        ["tenants.t.quotas.models.m.tokens_per_day", "greater than 0"],
        id="model-quota-not-positive",
    ),
    pytest.param(
        _set_tenant(quotas={"models": {"gpt-x": {"requests_per_minute": 5}}}),
        ["tenants.t.quotas.models: no backend serves model 'gpt-x'", "served: m"],
        id="quota-of-unserved-model",
    ),
    pytest.param(
        _same_key_on_two_tenants,
        ["tenants:", "each API key must be unique"],
        id="same-key-on-two-tenants",
    ),
    pytest.param(
        _same_key_as_hash_on_two_tenants,
        ["tenants:", "each API key must be unique"],
        id="same-key-clear-and-hashed",
    ),
    pytest.param(
        _backend_name_in_two_pools,
        ["pools:", "each backend name must be unique", "repeats: x"],
        id="backend-name-in-two-pools",
    ),
    pytest.param(
        _backend_url_in_two_pools,
        ["pools:", "each backend url must be unique", "http://127.0.0.1:9001/"],
        id="backend-url-in-two-pools",
    ),
    pytest.param(
        lambda cfg: cfg.update(redis={"url": "http://127.0.0.1:6379/0"}),
        ["redis.url:", "must start with redis://, rediss:// or unix://"],
        id="redis-url-wrong-scheme",
    ),
    pytest.param(
        lambda cfg: cfg.update(redis={"mode": "replicated"}),
        ["redis.mode:", "'standalone', 'cluster' or 'sentinel'"],
        id="redis-mode-unknown",
    ),
    pytest.param(
        lambda cfg: cfg.update(redis={"mode": "sentinel", "sentinels": ["s1:26379"]}),
        ["redis.sentinel_master:", "required with mode: sentinel"],
        id="redis-sentinel-without-master",
    ),
    pytest.param(
        lambda cfg: cfg.update(redis={"mode": "sentinel", "sentinel_master": "m"}),
        ["redis.sentinels:", "required with mode: sentinel"],
        id="redis-sentinel-without-sentinels",
    ),
    pytest.param(
        lambda cfg: cfg.update(redis={"nodes": ["10.0.0.2:6379"]}),
        ["redis.nodes:", "only with mode: cluster"],
        id="redis-nodes-without-cluster",
    ),
    pytest.param(
        lambda cfg: cfg.update(redis={"mode": "cluster", "sentinel_master": "m"}),
        ["redis.sentinel_master:", "only with mode: sentinel"],
        id="redis-sentinel-field-in-cluster-mode",
    ),
    pytest.param(
        lambda cfg: cfg.update(redis={"mode": "cluster", "url": "redis://h:7000/3"}),
        ["redis.mode:", "database 0 only"],
        id="redis-cluster-with-a-database",
    ),
    pytest.param(
        lambda cfg: cfg.update(redis={"mode": "cluster", "url": "unix:///run/redis.sock"}),
        ["redis.mode:", "cluster connects over TCP"],
        id="redis-cluster-over-a-unix-socket",
    ),
    pytest.param(
        lambda cfg: cfg.update(redis={"mode": "cluster", "nodes": ["h:6379", "h-without-port"]}),
        ["redis.nodes.1:", "should match pattern"],
        id="redis-node-without-port",
    ),
    pytest.param(
        lambda cfg: cfg.update(redis={"mode": "cluster", "nodes": ["h:70000"]}),
        ["redis.nodes:", "port of h:70000 out of range"],
        id="redis-node-port-out-of-range",
    ),
    pytest.param(
        lambda cfg: cfg.update(redis={"key_prefix": "Fair Gate"}),
        ["redis.key_prefix:", "should match pattern"],
        id="redis-key-prefix-not-a-name",
    ),
    pytest.param(
        lambda cfg: cfg.update(server={"port": 0}),
        ["server.port:", "greater than or equal to 1"],
        id="port-zero",
    ),
    pytest.param(
        lambda cfg: cfg.update(server={"gc_full_growth": 2.0, "gc_full_growth_max": 1.0}),
        ["server:", "gc_full_growth_max must be at least gc_full_growth"],
        id="full-growth-max-below-least",
    ),
    pytest.param(
        lambda cfg: rename(cfg["pools"], "interactive", "Interactive"),
        ["pools.Interactive", "should match pattern", "'Interactive'"],
        id="pool-name-uppercase",
    ),
    pytest.param(
        lambda cfg: rename(cfg["pools"], "interactive", "my pool"),
        ["pools.my pool", "should match pattern", "'my pool'"],
        id="pool-name-with-space",
    ),
    pytest.param(
        lambda cfg: rename(cfg["pools"]["interactive"]["backends"], "x", "-x"),
        ["pools.interactive.backends.-x", "should match pattern"],
        id="backend-name-leading-dash",
    ),
    pytest.param(
        lambda cfg: rename(cfg["tenants"], "t", "Acme"),
        ["tenants.Acme", "should match pattern"],
        id="tenant-name-uppercase",
    ),
    pytest.param(
        _set_tenant(api_key_hashes=["sha256:abc"]),
        ["tenants.t.api_key_hashes.0:", "should match pattern"],
        id="malformed-key-hash",
    ),
    pytest.param(
        _two_problems,
        ["tenants.t.weight:", "server.port:", "less than or equal to 65535"],
        id="every-problem-is-reported",
    ),
]


@pytest.mark.parametrize(("mutate", "expected"), INVALID_CONFIGS)
def test_invalid_config_names_field_and_problem(
    tmp_path: Path, mutate: Mutation, expected: list[str]
) -> None:
    cfg = minimal_config()
    mutate(cfg)
    message = config_error(tmp_path, cfg)
    assert "invalid configuration" in message
    assert str(tmp_path / "fairgate.yaml") in message
    for fragment in expected:
        assert fragment in message


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(_same_key_on_two_tenants, id="duplicate-key"),
        pytest.param(_set_tenant(api_keys="fg-t-key"), id="keys-not-a-list"),
        pytest.param(_set_tenant(api_key_hashes=["fg-t-key"]), id="clear-key-given-as-hash"),
    ],
)
def test_errors_about_keys_never_show_the_key(tmp_path: Path, mutate: Mutation) -> None:
    cfg = minimal_config()
    mutate(cfg)
    message = config_error(tmp_path, cfg)
    assert "tenants" in message
    assert "fg-t-key" not in message
    assert hash_api_key("fg-t-key") not in message  # nor its stored digest


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("pools: [unclosed\n", "not valid YAML", id="invalid-yaml"),
        pytest.param("pools:\n\tinteractive: {}\n", "not valid YAML", id="tab-indented-yaml"),
        pytest.param(
            "- interactive\n- reasoning\n", "top level must be a mapping, not list", id="list"
        ),
        pytest.param("just a string\n", "top level must be a mapping, not str", id="scalar"),
        pytest.param("", "pools: Field required", id="empty-file"),
    ],
)
def test_unusable_file_content(tmp_path: Path, text: str, expected: str) -> None:
    message = config_error(tmp_path, text)
    assert expected in message
    assert str(tmp_path / "fairgate.yaml") in message


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="cannot read configuration file") as excinfo:
        load_settings(missing)
    assert str(missing) in str(excinfo.value)


# --------------------------------------------------------------------------- environment overrides


@pytest.fixture
def example_file(tmp_path: Path) -> Path:
    """The shipped config with non-default host and key prefix, to tell YAML from defaults."""
    cfg = example_config()
    cfg["server"]["host"] = "0.0.0.0"
    cfg["redis"]["key_prefix"] = "fromyaml"
    return write_config(tmp_path, cfg)


def test_env_overrides_server_port(example_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings(example_file).server.port == 8080
    monkeypatch.setenv("FAIRGATE_SERVER__PORT", "9000")
    settings = load_settings(example_file)
    assert settings.server.port == 9000
    assert settings.server.host == "0.0.0.0"  # the rest of the section still comes from YAML
    assert settings.server.max_body_bytes == 8388608


def test_env_overrides_one_field_of_one_tenant(
    example_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = load_settings(example_file)
    monkeypatch.setenv("FAIRGATE_TENANTS__HOBBY__WEIGHT", "3")
    after = load_settings(example_file)

    hobby = after.tenants["hobby"]
    assert hobby.weight == 3.0
    assert hobby.max_concurrency == 16
    assert hobby.max_inflight_tokens == 131072
    assert hobby.max_queued == 128
    assert hobby.key_hashes() == [hash_api_key("fg-demo-hobby-key")]
    assert hobby.model_dump(exclude={"weight"}) == before.tenants["hobby"].model_dump(
        exclude={"weight"}
    )
    assert set(after.tenants) == {"hobby", "startup", "enterprise"}
    assert after.tenants["startup"] == before.tenants["startup"]
    assert after.tenants["enterprise"] == before.tenants["enterprise"]
    assert after.pools == before.pools


@pytest.mark.parametrize(
    ("env", "url", "prefix"),
    [
        pytest.param({}, "redis://127.0.0.1:6390/0", "fromyaml", id="yaml"),
        pytest.param(
            {"REDIS_URL": "redis://cache.internal:6379/3"},
            "redis://cache.internal:6379/3",
            "fromyaml",
            id="redis-url-sets-url",
        ),
        pytest.param(
            {"REDIS_URL": "redis://loser:6379/0", "FAIRGATE_REDIS__URL": "rediss://winner:6380/0"},
            "rediss://winner:6380/0",
            "fromyaml",
            id="fairgate-env-wins-over-redis-url",
        ),
        pytest.param(
            {"REDIS_URL": "redis://cache.internal:6379/3", "FAIRGATE_REDIS__KEY_PREFIX": "fromenv"},
            "redis://cache.internal:6379/3",
            "fromenv",
            id="redis-url-merges-with-other-env",
        ),
    ],
)
def test_redis_url_precedence(
    example_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    url: str,
    prefix: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(example_file)
    assert (settings.redis.url, settings.redis.key_prefix) == (url, prefix)


def test_empty_redis_url_env_is_ignored(
    example_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", "")
    assert load_settings(example_file).redis.url == "redis://127.0.0.1:6390/0"


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        pytest.param(
            "FAIRGATE_SERVER__PORT", "notaport", ["server.port:", "'notaport'"], id="port-not-int"
        ),
        pytest.param("FAIRGATE_SERVER__PORT", "70000", ["server.port:"], id="port-out-of-range"),
        pytest.param(
            "FAIRGATE_TENANTS__HOBBY__WEIGHT", "-2", ["tenants.hobby.weight:"], id="negative-weight"
        ),
        pytest.param("REDIS_URL", "http://nope:6379", ["redis.url:"], id="redis-url-bad-scheme"),
        pytest.param(
            "FAIRGATE_TENANTS__HOBBY__WIEGHT", "2", ["tenants.hobby.wieght:"], id="typo-via-env"
        ),
        pytest.param(
            "FAIRGATE_SERVER", "garbage", ['field "server"', "FAIRGATE_"], id="section-not-json"
        ),
    ],
)
def test_bad_env_value_is_a_config_error(
    example_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    value: str,
    expected: list[str],
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as excinfo:
        load_settings(example_file)
    message = str(excinfo.value)
    for fragment in expected:
        assert fragment in message


# --------------------------------------------------------------------------- immutability


@pytest.mark.parametrize(
    ("target", "field", "value"),
    [
        pytest.param(lambda s: s, "pools", {}, id="settings"),
        pytest.param(lambda s: s.server, "port", 1, id="server"),
        pytest.param(lambda s: s.redis, "url", "redis://other:1/0", id="redis"),
        pytest.param(lambda s: s.pools["interactive"], "description", "x", id="pool"),
        pytest.param(
            lambda s: s.pools["interactive"].backends["interactive-0"],
            "max_concurrency",
            1,
            id="backend",
        ),
        pytest.param(
            lambda s: s.pools["interactive"].backends["interactive-0"].simulator,
            "seed",
            7,
            id="simulator",
        ),
        pytest.param(lambda s: s.tenants["hobby"], "weight", 100.0, id="tenant"),
    ],
)
def test_models_are_frozen(
    example: Settings, target: Callable[[Settings], Any], field: str, value: Any
) -> None:
    obj = target(example)
    before = getattr(obj, field)
    with pytest.raises(ValidationError, match="frozen"):
        setattr(obj, field, value)
    assert getattr(obj, field) == before


# --------------------------------------------------------------------------- fairgate check-config


def test_check_config_accepts_the_shipped_config() -> None:
    result = run_check_config(EXAMPLE_CONFIG)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"{EXAMPLE_CONFIG}: valid" in out
    assert "pool interactive: models llama-3-8b" in out
    assert "pool reasoning: models llama-3-8b" in out
    assert "backend interactive-0: http://127.0.0.1:8101/ (vllm)" in out
    assert "backend reasoning-0: http://127.0.0.1:8102/ (vllm)" in out
    assert "tenant hobby: weight 1, 1 key(s)" in out
    assert "tenant startup: weight 2, 1 key(s)" in out
    assert "tenant enterprise: weight 4, 1 key(s)" in out
    for key in EXAMPLE_KEYS.values():
        assert key not in out + result.stderr


def test_check_config_summary_reflects_env_overrides(tmp_path: Path) -> None:
    path = write_config(tmp_path, example_config())
    result = run_check_config(path, env={"FAIRGATE_TENANTS__HOBBY__WEIGHT": "3"})
    assert result.returncode == 0, result.stderr
    assert "tenant hobby: weight 3, 1 key(s)" in result.stdout


def _negative_weight() -> dict[str, Any]:
    cfg = minimal_config()
    cfg["tenants"]["t"]["weight"] = -1
    return cfg


def _duplicate_key() -> dict[str, Any]:
    cfg = minimal_config()
    _same_key_on_two_tenants(cfg)
    return cfg


@pytest.mark.parametrize(
    ("content", "env", "expected"),
    [
        pytest.param(
            _negative_weight(), {}, ["tenants.t.weight:", "greater than 0"], id="bad-field"
        ),
        pytest.param(_duplicate_key(), {}, ["each API key must be unique"], id="duplicate-key"),
        pytest.param("pools: [unclosed\n", {}, ["not valid YAML"], id="invalid-yaml"),
        pytest.param(None, {}, ["cannot read configuration file"], id="missing-file"),
        pytest.param(
            minimal_config(), {"FAIRGATE_SERVER__PORT": "notaport"}, ["server.port:"], id="bad-env"
        ),
        pytest.param(
            minimal_config(), {"FAIRGATE_SERVER": "garbage"}, ['field "server"'], id="env-not-json"
        ),
    ],
)
def test_check_config_rejects_bad_config(
    tmp_path: Path, content: dict[str, Any] | str | None, env: dict[str, str], expected: list[str]
) -> None:
    path = tmp_path / "missing.yaml" if content is None else write_config(tmp_path, content)
    result = run_check_config(path, env=env)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.startswith(f"fairgate: {path}: ")
    for fragment in expected:
        assert fragment in result.stderr
    assert "Traceback" not in result.stderr
    assert "valid\n" not in result.stdout
    assert "fg-t-key" not in result.stdout + result.stderr


def test_every_cross_section_problem_is_reported_in_one_pass(tmp_path: Path) -> None:
    """Three bad routing rules and a tenant naming an unknown pool: four lines in one error,
    each naming its field, not one problem per attempt."""
    cfg = minimal_config()
    cfg["tenants"]["t"]["pools"] = ["batch"]
    cfg["routing"] = {
        "rules": [
            {"name": "a", "pool": "nowhere"},
            {"name": "b", "pool": "interactive", "models": ["other"]},
            {"name": "c", "pool": "interactive", "tenants": ["ghost"]},
        ]
    }
    message = config_error(tmp_path, cfg)
    problems = [line for line in message.splitlines() if line.startswith("  ")]
    assert [line.split(":")[0].strip() for line in problems] == [
        "tenants.t.pools",
        "routing.rules.0.pool",
        "routing.rules.1.models",
        "routing.rules.2.tenants",
    ]
