"""fairgate's configuration: one pydantic settings model, read from YAML, overridden by env.

Everything an operator declares lives here: the engine pools and their backends, the tenants
with their weights, limits and keys, the Redis that holds shared state, and the listener.
The gateway, the admission configuration in Redis and the CLI all import these models rather than
re-declaring them, so a field means the same thing everywhere.

Precedence (highest first): ``FAIRGATE_*`` environment variables (nested with ``__``, e.g.
``FAIRGATE_TENANTS__ACME__WEIGHT=3``), then ``REDIS_URL`` for ``redis.url``, then the YAML
file, then the defaults below. Pools, backends and tenants are mappings keyed by name so that
an environment variable can override one field of one entry without restating the rest.

Every model forbids unknown fields: a typo such as ``wieght`` is an error at start-up, not a
silently ignored default. :func:`load_settings` turns validation failures into a
:class:`ConfigError` whose lines each name the offending field by its dotted path.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    FilePath,
    HttpUrl,
    IPvAnyNetwork,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    PrivateAttr,
    SecretStr,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from fairgate.kv_capacity import CapacityConfig, CapacityError, plan_capacity
from fairgate.strict_model import StrictModel

#: Names of pools, backends and tenants: safe in Redis keys, metric labels and env var names.
Name = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
#: Model ids as engines spell them (``meta-llama/Llama-3.1-8B-Instruct``, ``qwen3:8b``).
ModelId = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=r"^\S+$")]
#: Stored key digests: ``sha256:`` followed by 64 lowercase hex digits.
KeyHash = Annotated[str, StringConstraints(pattern=r"^sha256:[0-9a-f]{64}$")]

EngineKind = Literal["vllm", "sglang", "tgi", "llamacpp", "ollama", "openai"]


#: Ids of API keys: ``key_`` and 4 to 40 lowercase letters or digits.
KeyId = Annotated[str, StringConstraints(pattern=r"^key_[a-z0-9]{4,40}$")]


def key_id_of(digest: str) -> str:
    """The id of a key declared by its digest alone: part of the digest, stable everywhere."""
    return "key_" + digest.removeprefix("sha256:")[:16]


def hash_api_key(key: str) -> str:
    """The digest under which an API key is stored; keys themselves are never persisted."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def _redis_scheme(url: str) -> str:
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("must start with redis://, rediss:// or unix://")
    return url


class SimulatorSpec(StrictModel):
    """Run a simulated engine for this backend under ``fairgate up`` (demo and development)."""

    profile: str = Field(
        description="A bundled engine profile's name (h100-llama3-8b, one of "
        "loadtest/simulator/profiles/) or a profile YAML file, relative to the config file."
    )
    time_scale: PositiveFloat = Field(1.0, description="Simulated seconds per wall second.")
    seed: int = 0


class BackendConfig(StrictModel):
    """One inference engine: where it listens, what it serves, how much it may hold at once."""

    url: HttpUrl = Field(description="Base URL of the engine's OpenAI API, without /v1.")
    models: list[ModelId] = Field(min_length=1, description="Model ids this engine serves.")
    engine: EngineKind = Field("vllm", description="Engine type: selects its adapter.")
    max_concurrency: PositiveInt = Field(64, description="Requests in flight at once.")
    max_inflight_tokens: PositiveInt = Field(
        200_000, description="Estimated prompt + output tokens in flight at once."
    )
    max_prefill_tokens: PositiveInt | None = Field(
        None,
        description="Prompt tokens of requests still in prefill at once on this engine (until "
        "their first output token; a non-streamed request until it ends), so that long "
        "prefills run one after another instead of stalling every decode together; one "
        "prompt larger than the cap still runs alone. Unset: no cap.",
    )
    api_key: SecretStr | None = Field(
        None, description="Bearer token fairgate sends to this engine (hosted APIs)."
    )
    forward_priority: bool = Field(
        False,
        description="Send each request's priority in the engine's own priority field (vLLM "
        "with --scheduling-policy priority, SGLang with --enable-priority-scheduling), so the "
        "engine orders what it holds as fairgate does.",
    )
    ca_file: FilePath | None = Field(
        None,
        description="An https:// engine's certificate is verified against this CA bundle (PEM) "
        "instead of the system's trust store (an engine with a private CA).",
    )
    connect_timeout_s: PositiveFloat = Field(5.0, description="TCP connect timeout.")
    read_timeout_s: PositiveFloat = Field(
        600.0,
        description="Longest silence between two reads of a response (also a stream: there "
        "checked by one watchdog per process, and only while the relay waits on the engine).",
    )
    simulator: SimulatorSpec | None = None
    capacity: CapacityConfig | None = Field(
        None,
        description="GPU and model: derive max_concurrency and max_inflight_tokens from "
        "KV-cache memory where they are not given.",
    )

    #: Budgets derived from ``capacity`` rather than given (engine-reported capacity may
    #: replace these at run time, see backends/engine_load.effective_budget).
    _derived: frozenset[str] = PrivateAttr(default=frozenset())

    @property
    def derived_budgets(self) -> frozenset[str]:
        """Which of max_concurrency / max_inflight_tokens were derived from ``capacity``."""
        return self._derived

    @model_validator(mode="after")
    def _derive_budgets(self) -> BackendConfig:
        """Budgets the file does not give come from the capacity, if it declares one."""
        missing = {"max_concurrency", "max_inflight_tokens"} - self.model_fields_set
        if self.capacity is None or not missing:
            return self
        try:
            plan = plan_capacity(self.capacity)
        except CapacityError as exc:
            raise ValueError(f"capacity: {exc}") from None
        for name in missing:  # the model is frozen; this is still its construction
            self.__dict__[name] = getattr(plan, name)
        self._derived = frozenset(missing)
        return self


class PoolConfig(StrictModel):
    """A set of interchangeable engines that serve one class of work."""

    description: str = ""
    backends: dict[Name, BackendConfig] = Field(min_length=1)
    tokenize: Literal["local", "engine"] = Field(
        "local",
        description="Count prompt tokens locally, or ask the engine's /tokenize (exact, a round "
        "trip; falls back to local counting if the engine cannot answer).",
    )
    affinity: Literal["off", "header", "prefix"] = Field(
        "off",
        description="Send a session's requests to the same engine (prefix-cache hits): header "
        "= sessions named by X-Fairgate-Session; prefix = also conversations recognised by "
        "their opening messages.",
    )
    affinity_slack_tokens: NonNegativeInt = Field(
        32_768,
        description="A session keeps its engine while that engine holds at most this many "
        "more outstanding tokens than the least loaded one.",
    )
    lend_to: dict[Name, PositiveInt] = Field(
        default_factory=dict,
        description="Bounded lending: while this pool has nothing of its own queued, requests "
        "waiting for another pool may run on its engines, at most this many at once per "
        "borrowing pool. Its own work takes the capacity back first (nothing new is lent while "
        "it queues; lent work is never preempted). Off by default: lending to the interactive "
        "pool is harmless, lending from it lets long prefills in.",
    )

    @property
    def models(self) -> frozenset[str]:
        """Every model id some backend of this pool serves."""
        return frozenset(m for b in self.backends.values() for m in b.models)


class ChatTemplate(StrictModel):
    """Tokens a model family's chat template adds around the message contents."""

    tokens_per_message: NonNegativeInt = Field(description="Role markers around each message.")
    tokens_per_request: NonNegativeInt = Field(
        description="Begin token and the header that opens the assistant's reply."
    )
    tokens_per_name: NonNegativeInt = 1
    tokens_per_image: NonNegativeInt = Field(
        576, description="Charge per image part (one 336 px LLaVA-style tile)."
    )
    tokens_per_audio: NonNegativeInt = Field(750, description="Charge per audio part.")


#: Template overheads of common model families, by name.
CHAT_TEMPLATES: dict[str, ChatTemplate] = {
    # <|start_header_id|>role<|end_header_id|>\n\n ... <|eot_id|>; <|begin_of_text|> + reply header
    "llama3": ChatTemplate(tokens_per_message=5, tokens_per_request=5),
    # <|im_start|>role\n ... <|im_end|>\n; reply header <|im_start|>assistant\n (Qwen, Yi, ...)
    "chatml": ChatTemplate(tokens_per_message=5, tokens_per_request=3),
    # [INST] ... [/INST] and </s>; <s>
    "mistral": ChatTemplate(tokens_per_message=3, tokens_per_request=1),
    "none": ChatTemplate(tokens_per_message=0, tokens_per_request=0, tokens_per_name=0),
}


def _known_template(value: object) -> object:
    if isinstance(value, str) and value not in CHAT_TEMPLATES:
        raise ValueError(f"unknown chat template {value!r} (known: {', '.join(CHAT_TEMPLATES)})")
    return value


class ModelConfig(StrictModel):
    """What fairgate knows about a model, to estimate the cost of its requests."""

    tokenizer: Path | None = Field(
        None, description="A Hugging Face tokenizer.json; tiktoken cl100k_base if unset."
    )
    chat_template: Annotated[str | ChatTemplate, BeforeValidator(_known_template)] = Field(
        "llama3", description="A template name, or its overhead in tokens."
    )
    reasoning: bool = Field(False, description="Every request to this model reasons.")
    context_length: PositiveInt = Field(
        131_072,
        description="Prompt + output limit: caps the output of requests without max_tokens; "
        "for a model described here, a prompt beyond it is refused before it queues.",
    )

    @field_validator("tokenizer")
    @classmethod
    def _tokenizer_exists(cls, path: Path | None) -> Path | None:
        if path is not None and not path.is_file():
            raise ValueError(f"no tokenizer file at {path}")
        return path

    @property
    def template(self) -> ChatTemplate:
        value = self.chat_template
        return CHAT_TEMPLATES[value] if isinstance(value, str) else value


class OutputPrior(StrictModel):
    """Output lengths assumed before any history exists."""

    p50: PositiveInt
    p90: PositiveInt

    @model_validator(mode="after")
    def _ordered(self) -> OutputPrior:
        if self.p90 < self.p50:
            raise ValueError(f"p90 ({self.p90}) must not be below p50 ({self.p50})")
        return self


class EstimationConfig(StrictModel):
    """How request costs are estimated and how estimates learn from what engines report."""

    input_weight: PositiveFloat = Field(1.0, description="Service per prompt token (VTC wp).")
    output_weight: PositiveFloat = Field(2.0, description="Service per output token (VTC wq).")
    chat_prior: OutputPrior = OutputPrior(p50=256, p90=1024)
    reasoning_prior: OutputPrior = OutputPrior(p50=2048, p90=8192)
    history_size: PositiveInt = Field(256, description="Recent output lengths kept per key.")
    history_ttl_s: PositiveFloat = Field(7 * 86400.0, description="History of idle keys expires.")
    prior_weight: PositiveInt = Field(
        8, description="The prior counts as this many samples when blended with history."
    )
    refresh_s: NonNegativeFloat = Field(
        2.0,
        description="How long a replica reuses history and correction factors it read (then "
        "they still answer while one read in the background replaces them; 0: read every time).",
    )
    calibration_alpha: Annotated[float, Field(gt=0, le=1)] = Field(
        0.05, description="Weight of each new observation in a correction factor (EWMA)."
    )
    off_loop_chars: PositiveInt = Field(
        16_000, description="Prompts longer than this are tokenized in a worker thread."
    )
    feedback_flush_s: NonNegativeFloat = Field(
        0.02,
        description="Observations of finished requests are sent to Redis in one batch per "
        "model this often (0: at the next event-loop iteration).",
    )


class AdmissionConfig(StrictModel):
    """The fair queue: policy, leases, and what to do when Redis is unreachable."""

    policy: Literal["vtc", "fcfs", "shadow"] = Field(
        "vtc",
        description="vtc: weighted-fair between tenants; fcfs: arrival order (the baseline); "
        "shadow: dispatch in arrival order but count where vtc would have chosen differently.",
    )
    lease_ttl_s: PositiveFloat = Field(
        10.0, description="A replica that stops renewing (dies) loses its grants after this."
    )
    upkeep_interval_s: PositiveFloat = Field(
        0.5, description="How often a replica reclaims, dispatches and polls for lost grants."
    )
    charge_every_tokens: PositiveInt = Field(
        16, description="Streamed output is charged to the tenant in batches of this many tokens"
    )
    charge_interval_s: NonNegativeFloat = Field(
        0.25,
        description="... which a replica sends to Redis together, once per this many seconds "
        "(one script call per window for all its running requests, not one per charge).",
    )
    max_grants_per_call: PositiveInt = Field(32, description="Grants one script call may make.")
    lease_reuse_s: Annotated[float, Field(ge=0, le=1)] = Field(
        0.02,
        description="While nothing waits, a finished request's lease is held this long for the "
        "next request of its tenant and pool on the same replica, which then starts without a "
        "Redis round trip (0: never; see admission/reuse.py).",
    )
    return_grace_s: Annotated[float, Field(ge=0, le=5)] = Field(
        0.5,
        description="A tenant whose queue ran dry and refills within this long keeps its place "
        "in fair order (it was between two requests, not idle): it keeps what it was owed, up to "
        "eight of its requests, instead of one (docs/fairness.md).",
    )
    hold_for_next_s: Annotated[float, Field(ge=0, le=1)] = Field(
        0.5,
        description="While requests wait, a finished request's lease is held this long for its "
        "tenant's next request when that tenant is owed the next turn (0: never; see "
        "docs/fairness.md, anticipation). Never longer than hold_for_next_share of the finished "
        "request's run time.",
    )
    hold_for_next_share: Annotated[float, Field(ge=0, le=0.2)] = Field(
        0.2,
        description="The most a hold may cost: this share of the run time of the request whose "
        "lease is held.",
    )
    priority_min_share: Annotated[float, Field(gt=0, lt=0.5)] = Field(
        0.1, description="Share of capacity a lower priority band keeps under contention."
    )
    fail_mode: Literal["closed", "open"] = Field(
        "closed",
        description="With Redis unreachable: closed answers 503; open admits under per-replica "
        "limits (no fairness, no shared limits) and warns.",
    )
    engine_max_waiting: NonNegativeInt | None = Field(
        0,
        description="A backend whose engine reports more requests waiting inside it than this "
        "gets no new work until a scrape shows it drained (null: engines' queues are ignored).",
    )


def _as_list(value: object) -> object:
    """``models: llama-3-8b`` is short for ``models: [llama-3-8b]``."""
    return [value] if isinstance(value, str) else value


#: Route names the gateway gives itself: no rule matched, or the client named the pool.
RESERVED_ROUTES = frozenset({"default", "header"})


class RoutingRule(StrictModel):
    """Send the requests that match every condition given to ``pool``.

    Conditions left unset match anything; bounds are inclusive. Token figures are the
    request's estimate (:class:`estimators.cost.Cost`): ``prompt_tokens`` as counted before it
    runs, ``expected_output`` the p50 of recent outputs of the tenant and model (the prior
    until there is history), ``max_output`` its hard cap (``max_tokens`` or what is left of
    the context).
    """

    name: Name = Field(description="Shown in X-Fairgate-Route and the metrics' rule label.")
    pool: Name = Field(description="Where matching requests go.")
    models: Annotated[list[ModelId] | None, BeforeValidator(_as_list)] = Field(
        None, description="A model id or a list of them."
    )
    tenants: Annotated[list[Name] | None, BeforeValidator(_as_list)] = Field(
        None, description="A tenant id or a list of them."
    )
    min_prompt_tokens: NonNegativeInt | None = None
    max_prompt_tokens: NonNegativeInt | None = None
    min_expected_output: NonNegativeInt | None = None
    max_expected_output: NonNegativeInt | None = None
    min_max_output: NonNegativeInt | None = None
    max_max_output: NonNegativeInt | None = None
    reasoning: bool | None = Field(None, description="Match only requests that (do not) reason.")

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        if name in RESERVED_ROUTES:
            raise ValueError(f"{name!r} is reserved (the gateway's own route names)")
        return name

    @model_validator(mode="after")
    def _bounds_ordered(self) -> RoutingRule:
        for what in ("prompt_tokens", "expected_output", "max_output"):
            low, high = getattr(self, f"min_{what}"), getattr(self, f"max_{what}")
            if low is not None and high is not None and low > high:
                raise ValueError(f"min_{what} ({low}) is above max_{what} ({high})")
        return self


class RoutingConfig(StrictModel):
    """How requests are classified into pools (see backends/classify.py).

    Rules are tried in order and the first that matches wins, provided its pool serves the
    request's model and the tenant may use it; otherwise the request goes to the first pool
    (in file order) that serves the model and the tenant may use.
    """

    rules: list[RoutingRule] = Field(default_factory=list)


class QuotaLimits(StrictModel):
    """Rate quotas over a rolling window, enforced across replicas (:mod:`admission.quota`).

    Each is optional; one left unset does not limit. Tokens are prompt plus completion tokens,
    charged with the estimate at admission and corrected with the engine's usage at completion.
    """

    requests_per_minute: PositiveInt | None = Field(None, description="Requests per minute.")
    tokens_per_minute: PositiveInt | None = Field(None, description="Tokens per minute.")
    tokens_per_day: PositiveInt | None = Field(None, description="Tokens per rolling 24 hours.")


class QuotaConfig(QuotaLimits):
    """A tenant's quotas: over all its requests, and per model (both apply to a request)."""

    models: dict[ModelId, QuotaLimits] = Field(
        default_factory=dict, description="Quotas of one model, besides the tenant's own."
    )


class ApiKeyRecord(StrictModel):
    """A key known by its digest, with what an operator sees of it (never the secret).

    Keys made through the admin API are exported in this form (``GET /admin/v1/config``), so
    the exported file seeds them back with their ids, names and expiry.
    """

    id: KeyId = Field(description="The key's id, for listing and revoking it.")
    sha256: KeyHash = Field(description="The digest of the secret.")
    name: str = Field("", max_length=128, description="What the key is for.")
    prefix: str = Field("", max_length=16, description="The secret's first characters.")
    created_at: datetime | None = Field(None, description="When the key was made.")
    expires_at: datetime | None = Field(None, description="When it stops working, if ever.")


class TenantSettings(StrictModel):
    """A customer of the gateway: its share and its limits (what the admin API changes)."""

    weight: PositiveFloat = Field(1.0, description="Share of contended capacity.")
    priority: int = Field(
        0, ge=-100, le=100, description="Priority band; higher bands are served first."
    )
    allow_priority_header: bool = Field(
        False, description="May lower or raise (up to `priority`) its band per request."
    )
    max_concurrency: PositiveInt = Field(32, description="Requests in flight, all replicas.")
    max_inflight_tokens: PositiveInt = Field(
        262_144, description="Estimated tokens in flight, all replicas."
    )
    max_queued: NonNegativeInt = Field(256, description="Requests waiting in the queue.")
    queue_timeout_s: PositiveFloat = Field(30.0, description="Longest wait before a 429.")
    pools: list[Name] | None = Field(None, description="Pools this tenant may use; all if unset.")
    allow_pool_header: bool = Field(
        False,
        description="May name its pool per request (X-Fairgate-Pool), among those it may use; "
        "otherwise such a request gets 403.",
    )
    quotas: QuotaConfig | None = Field(
        None, description="Requests and tokens per minute or day; unlimited if unset."
    )


class TenantConfig(TenantSettings):
    """A tenant as the config file declares it: its settings and the keys that identify it."""

    api_keys: list[SecretStr] = Field(
        default_factory=list, description="Keys in clear, to seed; stored only as hashes."
    )
    api_key_hashes: list[KeyHash] = Field(
        default_factory=list, description="Keys given as sha256 digests."
    )
    keys: list[ApiKeyRecord] = Field(
        default_factory=list, description="Keys by digest with an id, name and expiry."
    )

    def key_hashes(self) -> list[str]:
        """All of this tenant's keys as stored digests."""
        return [
            *(hash_api_key(k.get_secret_value()) for k in self.api_keys),
            *self.api_key_hashes,
            *(k.sha256 for k in self.keys),
        ]

    def key_records(self) -> list[ApiKeyRecord]:
        """Every key of this tenant as a record; keys given in clear or as bare digests get an
        id derived from their digest (stable across replicas and restarts)."""
        bare = [hash_api_key(k.get_secret_value()) for k in self.api_keys] + self.api_key_hashes
        return [ApiKeyRecord(id=key_id_of(d), sha256=d, name="config") for d in bare] + self.keys

    def without_keys(self) -> TenantSettings:
        """The tenant's settings alone: what the directory stores (keys are kept apart)."""
        return TenantSettings.model_validate(
            self.model_dump(exclude={"api_keys", "api_key_hashes", "keys"}, exclude_unset=True)
        )


#: ``host:port`` of a Redis Cluster node or a Sentinel (an IPv6 address in brackets).
HostPort = Annotated[
    str, StringConstraints(pattern=r"^(\[[0-9A-Fa-f:.]+\]|[^\s:\[\]/@]+):\d{1,5}$")
]


def host_port(address: str) -> tuple[str, int]:
    """``host:port`` (validated as :data:`HostPort`) as a pair, IPv6 brackets removed."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


_MODE_FIELDS = ("nodes", "sentinels", "sentinel_master", "sentinel_username", "sentinel_password")


class RedisConfig(StrictModel):
    """The Redis that holds every replica's shared state: one server, a Cluster, or a primary
    that Sentinels watch (docs/redis.md)."""

    url: Annotated[str, AfterValidator(_redis_scheme)] = Field(
        "redis://127.0.0.1:6379/0",
        description="The server (standalone), a seed node (cluster), or only the credentials, "
        "database and TLS settings (sentinel: the Sentinels name the primary).",
    )
    mode: Literal["standalone", "cluster", "sentinel"] = Field(
        "standalone",
        description="standalone: one server at url; cluster: a Redis Cluster, found from url "
        "and nodes; sentinel: the primary the sentinels name sentinel_master.",
    )
    nodes: list[HostPort] = Field(
        default_factory=list, description="cluster: more seed nodes besides url's host:port."
    )
    sentinels: list[HostPort] = Field(
        default_factory=list,
        validate_default=True,
        description="sentinel: host:port of each Sentinel.",
    )
    sentinel_master: str | None = Field(
        None,
        validate_default=True,
        description="sentinel: the name the Sentinels monitor the primary under.",
    )
    sentinel_username: str | None = Field(None, description="sentinel: the Sentinels' user.")
    sentinel_password: SecretStr | None = Field(
        None, description="sentinel: the Sentinels' password (requirepass), if they have one."
    )
    key_prefix: Name = "fairgate"
    max_connections: PositiveInt = Field(256, description="Connections per gateway process.")
    timeout_s: PositiveFloat = Field(
        2.0, description="Longest wait for a connection or an answer on the request path."
    )

    @field_validator("mode")
    @classmethod
    def _url_fits_mode(cls, mode: str, info: ValidationInfo) -> str:
        url = info.data.get("url", "")
        if mode != "standalone" and url.startswith("unix://"):
            raise ValueError(f"{mode} connects over TCP: url must be redis:// or rediss://")
        if mode == "cluster" and urlsplit(url).path.strip("/") not in ("", "0"):
            raise ValueError("a Redis Cluster has database 0 only: url must not name another")
        return mode

    @field_validator(*_MODE_FIELDS)
    @classmethod
    def _mode_fields(cls, value: object, info: ValidationInfo) -> object:
        """Each mode's own fields, and only them."""
        owner = "cluster" if info.field_name == "nodes" else "sentinel"
        if "mode" not in info.data:
            return value  # the mode itself is wrong: that error says enough
        mode = info.data["mode"]
        if value and mode != owner:
            raise ValueError(f"only with mode: {owner}")
        if not value and mode == "sentinel" and info.field_name in ("sentinels", "sentinel_master"):
            raise ValueError("required with mode: sentinel")
        for address in value if isinstance(value, list) else ():
            if not 0 < host_port(address)[1] < 65536:
                raise ValueError(f"port of {address} out of range")
        return value


class ListenerTls(StrictModel):
    """TLS on the gateway's own listener (both ports): its certificate and private key."""

    cert_file: FilePath = Field(description="The certificate chain (PEM), the server's first.")
    key_file: FilePath = Field(description="Its private key (PEM, not encrypted).")


class ServerConfig(StrictModel):
    """The gateway's own HTTP listener."""

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    tls: ListenerTls | None = Field(
        None, description="Serve HTTPS with this certificate and key (plain HTTP if unset)."
    )
    trusted_proxies: list[IPvAnyNetwork] = Field(
        default_factory=list,
        description="Reverse proxies (addresses or networks) whose X-Forwarded-For is "
        "believed: the client is the rightmost address in it that is not one of them. Empty: "
        "the header is ignored and the client is the connection's peer.",
    )
    max_body_bytes: PositiveInt = Field(8 * 1024 * 1024, description="Larger bodies get 413.")
    body_timeout_s: PositiveFloat = Field(
        30.0, description="Longest wait for a request's whole body before a 408."
    )
    idle_timeout_s: PositiveFloat = Field(
        30.0,
        description="A connection that sends no whole request head this long after it opened "
        "or after its last response is closed (idle keep-alive, headers sent a byte at a time).",
    )
    client_stall_timeout_s: PositiveFloat = Field(
        30.0,
        description="Longest a streamed response's write may wait for a client that stopped "
        "reading; then its connection is closed and its request ends as a disconnected one.",
    )
    health_check_interval_s: PositiveFloat = Field(
        5.0, description="How often each backend's health endpoint is probed."
    )
    unhealthy_backoff_s: PositiveFloat = Field(
        5.0,
        description="How long a backend that refused a connection (or was ejected) is skipped; "
        "doubles with each ejection in a row, up to max_unhealthy_backoff_s.",
    )
    max_unhealthy_backoff_s: PositiveFloat = Field(
        60.0, description="The longest a failing backend is skipped at once."
    )
    eject_after_failures: PositiveInt = Field(
        3,
        description="Consecutive failed requests (engine 5xx, timeouts, deaths mid-response) "
        "after which a backend is ejected for a back-off, even though its health probe passes.",
    )
    engine_load_interval_s: PositiveFloat = Field(
        1.0, description="How often each engine's own load (its /metrics) is scraped."
    )
    admin_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Serve the admin API and status page on this port only (same host), "
        "apart from the proxy's; on the proxy's port if unset.",
    )
    workers: PositiveInt | Literal["auto"] = Field(
        1,
        description="Gateway processes on this host sharing its ports (each a full replica on "
        "the same Redis, one core each); 'auto': one per core this process may use. "
        "`fairgate serve --workers` overrides it.",
    )
    worker_grace_s: PositiveFloat = Field(
        60.0,
        description="With workers: how long a stopping worker may drain before it is killed.",
    )
    gc_freeze: bool = Field(
        True,
        description="Once started, move every object built so far out of the cyclic garbage "
        "collector's view (gc.freeze), so that its full collections walk only what requests "
        "made since: shorter pauses for every open stream.",
    )
    gc_young_threshold: PositiveInt | None = Field(
        20_000,
        description="The cyclic collector's generation-0 threshold: net allocations of "
        "container objects between two young collections. Python's own is 700; with thousands "
        "of streams open, most of a request's objects then survive a collection or two and "
        "are walked again by the full collections their promotion triggers. Null: Python's.",
    )
    gc_young_interval_s: NonNegativeFloat = Field(
        0.25,
        description="Collect the young generations this often, whatever the allocation "
        "counter says: with thousands of streams open, allocations and frees balance, the "
        "counter stays low and the young generation grows to every live stream's objects, "
        "walked at once when a collection finally runs (a pause of 50-200 ms). Collected "
        "every 0.25 s, a collection walks only what was made since the last one and is still "
        "alive (5-10 ms at 2,000 streams). "
        "0: Python's own triggers alone.",
    )
    gc_probe_every: NonNegativeInt = Field(
        8,
        description="With young collections paced: once they have found no garbage "
        "4 times in a row, a tick moves what is new out of the collector's view instead "
        "(gc.freeze, which walks nothing) and only every this-many-th tick collects, as a "
        "probe; a probe that finds garbage brings back a collection every tick. Garbage "
        "frozen meanwhile is freed by the next full collection (gc_full_growth). A request "
        "path that makes no reference cycles then costs the collector almost nothing: the "
        "young collections of 2,000 open streams walked every stream's pending read, 10-35 ms "
        "each, four times a second, and found nothing. 0: collect every tick.",
    )
    gc_full_growth: PositiveFloat = Field(
        1.0,
        description="With young collections paced, a full collection runs once the "
        "interpreter's allocated memory blocks have grown by this fraction since the last one "
        "(cyclic garbage that outlived a young collection shows as growth). Python's own "
        "trigger is then off: it counts objects promoted, which at thousands of open streams "
        "grows without the heap growing, and calls for a full collection every few seconds.",
    )
    gc_full_growth_max: PositiveFloat = Field(
        4.0,
        description="After a full collection that freed less than 1% of the heap (the growth "
        "was live objects, such as more open streams), the next waits for twice the growth, "
        "up to this; one that frees more brings gc_full_growth back. A full collection walks "
        "everything (about 300 ms at 2,000 open streams): one that frees nothing is a pause "
        "for nothing.",
    )

    @model_validator(mode="after")
    def _ports_differ(self) -> ServerConfig:
        if self.admin_port == self.port:
            raise ValueError("admin_port must differ from port (or be left unset)")
        return self

    @model_validator(mode="after")
    def _growth_in_order(self) -> ServerConfig:
        if self.gc_full_growth_max < self.gc_full_growth:
            raise ValueError("gc_full_growth_max must be at least gc_full_growth")
        return self


class AdminConfig(StrictModel):
    """Who may use the admin API: bearer tokens of its own, never a tenant's key.

    Tokens are kept only as sha256 digests and compared in constant time. With none
    configured, the admin API answers every call with 401 and says how to enable it.
    """

    tokens: list[SecretStr] = Field(
        default_factory=list, description="Admin tokens in clear (from env, preferably)."
    )
    token_hashes: list[KeyHash] = Field(
        default_factory=list, description="Admin tokens as sha256 digests."
    )
    sync_interval_s: PositiveFloat = Field(
        1.0,
        description="How often each replica checks the tenant directory's version, besides "
        "hearing changes on pub/sub.",
    )
    usage_retention_days: Annotated[int, Field(ge=1, le=3660)] = Field(
        90,
        description="How many UTC days of per-tenant usage are kept in Redis (today included); "
        "older days expire, and usage queries may not reach further back.",
    )
    usage_flush_s: Annotated[float, Field(gt=0, le=60)] = Field(
        1.0,
        description="Usage counted by a replica is written to Redis in one batch this often "
        "(or sooner, once many events are pending).",
    )

    def token_digests(self) -> list[str]:
        return [hash_api_key(t.get_secret_value()) for t in self.tokens] + self.token_hashes


class TracesConfig(StrictModel):
    """OpenTelemetry traces of inference requests, exported over OTLP/HTTP
    (docs/observability.md). Off unless configured: then the request path pays nothing.

    The standard ``OTEL_*`` variables win over these values, as in every OpenTelemetry SDK:
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT`` over ``endpoint``,
    ``OTEL_TRACES_SAMPLER`` (with ``OTEL_TRACES_SAMPLER_ARG``) over ``sample_ratio``,
    ``OTEL_SERVICE_NAME`` over ``service_name``; ``OTEL_SDK_DISABLED=true`` or
    ``OTEL_TRACES_EXPORTER=none`` turn tracing off whatever this says.
    """

    enabled: bool | None = Field(
        None,
        description="Record and export traces. Unset: on when a collector is configured, here "
        "(endpoint) or by OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT.",
    )
    endpoint: HttpUrl | None = Field(
        None,
        description="The OTLP/HTTP collector's base URL, such as http://127.0.0.1:4318 (spans "
        "go to its /v1/traces).",
    )
    sample_ratio: Annotated[float, Field(ge=0, le=1)] = Field(
        1.0,
        description="Share of new traces recorded; a request that arrives with a traceparent "
        "follows its caller's decision.",
    )
    service_name: Annotated[str, StringConstraints(min_length=1, max_length=256)] = Field(
        "fairgate", description="The service.name of the spans."
    )


class AccessLogConfig(StrictModel):
    """One JSON line per inference request (docs/metrics.md#the-access-log): who, where, how
    long, how many tokens, how it ended; never a key, a prompt or a completion."""

    enabled: bool = Field(True, description="Write the access log.")
    path: Path | None = Field(
        None,
        description="Append the lines to this file; to standard error if unset. Written by a "
        "thread of its own, so a slow disk or pipe never holds up a request.",
    )


class MetricsConfig(StrictModel):
    """What ``GET /metrics`` labels per tenant, and how fresh its shared-state gauges are
    (docs/metrics.md)."""

    max_tenants: Annotated[int, Field(ge=0, le=10_000)] = Field(
        100,
        description="Tenants (besides those listed in `tenants`) that get a label of their "
        "own, in the order this replica first sees them; the rest are counted as `_other`, so "
        "ten thousand tenants do not make ten thousand series per metric.",
    )
    tenants: list[Name] = Field(
        default_factory=list,
        description="Tenants always labelled by name (give the same list to every replica to "
        "label the same tenants everywhere once there are more than max_tenants).",
    )
    shared_state_max_age_s: Annotated[float, Field(ge=0, le=60)] = Field(
        1.0,
        description="The shared-state gauges (queues, work in flight, fairness, backends) are "
        "read from Redis at a scrape unless the last read is younger than this: several "
        "scrapers cost one read.",
    )


class TelemetryConfig(StrictModel):
    """What the gateway tells about its requests besides their responses."""

    traces: TracesConfig = TracesConfig()
    access_log: AccessLogConfig = AccessLogConfig()
    metrics: MetricsConfig = MetricsConfig()


class _RedisUrlAlias(PydanticBaseSettingsSource):
    """Reads the conventional ``REDIS_URL`` into ``redis.url``."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        url = os.environ.get("REDIS_URL")
        return {"redis": {"url": url}} if url else {}


class Settings(BaseSettings):
    """The whole configuration of one fairgate deployment."""

    model_config = SettingsConfigDict(
        env_prefix="FAIRGATE_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    server: ServerConfig = ServerConfig()
    admin: AdminConfig = AdminConfig()
    redis: RedisConfig = RedisConfig()
    pools: dict[Name, PoolConfig] = Field(min_length=1)
    tenants: dict[Name, TenantConfig] = Field(default_factory=dict)
    models: dict[ModelId, ModelConfig] = Field(default_factory=dict)
    estimation: EstimationConfig = EstimationConfig()
    admission: AdmissionConfig = AdmissionConfig()
    routing: RoutingConfig = RoutingConfig()
    telemetry: TelemetryConfig = TelemetryConfig()

    def model(self, model_id: str) -> ModelConfig:
        """The configuration of a model (defaults for one the file does not describe)."""
        return self.models.get(model_id) or _DEFAULT_MODEL

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The YAML file arrives as init kwargs; the environment must win over it.
        return env_settings, _RedisUrlAlias(settings_cls), init_settings

    @model_validator(mode="after")
    def _cross_references(self) -> Settings:
        """Checks that span sections: unique backends and keys, known pool and tenant names.

        Every problem is found in one pass and reported together, one line each, so that a
        config with three bad routing rules is not fixed one rule per attempt.
        """
        backends = [b for pool in self.pools.values() for b in pool.backends.items()]
        problems = [
            _repeats("pools", "backend name", [name for name, _ in backends]),
            _repeats("pools", "backend url", [str(b.url) for _, b in backends]),
            _repeats(
                "tenants",
                "API key",
                [h for t in self.tenants.values() for h in t.key_hashes()],
                show=False,
            ),
            *self._tenant_problems(),
            *self._routing_problems(),
            *self._lending_problems(),
        ]
        found = [problem for problem in problems if problem]
        if found:
            raise ValueError("\n".join(found))
        return self

    def _tenant_problems(self) -> Iterator[str]:
        for tenant_id, tenant in self.tenants.items():
            yield from self.tenant_problems(tenant_id, tenant)

    def tenant_problems(self, tenant_id: str, tenant: TenantSettings) -> Iterator[str]:
        """What is wrong with ``tenant`` in this deployment: pools it names must exist, and
        its quotas name only models some backend serves. Also checks the admin API's
        changes, so a tenant made at run time is held to the file's rules."""
        served = {
            m for pool in self.pools.values() for b in pool.backends.values() for m in b.models
        }
        for pool in tenant.pools or ():
            if pool not in self.pools:
                yield (
                    f"tenants.{tenant_id}.pools: unknown pool {pool!r} "
                    f"(known: {', '.join(sorted(self.pools))})"
                )
        for model in tenant.quotas.models if tenant.quotas is not None else ():
            if model not in served:
                yield (
                    f"tenants.{tenant_id}.quotas.models: no backend serves model {model!r} "
                    f"(served: {', '.join(sorted(served))})"
                )

    def _lending_problems(self) -> Iterator[str]:
        """A pool lends only to known pools whose every model all of its backends serve."""
        for name, pool in self.pools.items():
            for borrower in pool.lend_to:
                where = f"pools.{name}.lend_to"
                if borrower not in self.pools or borrower == name:
                    yield f"{where}: no other pool is named {borrower!r}"
                    continue
                for backend_name, backend in pool.backends.items():
                    missing = self.pools[borrower].models - set(backend.models)
                    if missing:
                        yield (
                            f"{where}: backend {backend_name!r} does not serve "
                            f"{', '.join(sorted(missing))} of pool {borrower!r}"
                        )

    def _routing_problems(self) -> Iterator[str]:
        """Every rule names a known pool that serves its models, and known tenants that may
        use it; rule names are unique."""
        yield _repeats("routing.rules", "rule name", [rule.name for rule in self.routing.rules])
        for index, rule in enumerate(self.routing.rules):
            where = f"routing.rules.{index}"
            pool = self.pools.get(rule.pool)
            if pool is None:
                yield (
                    f"{where}.pool: unknown pool {rule.pool!r} "
                    f"(known: {', '.join(sorted(self.pools))})"
                )
            for model in rule.models or ():
                if pool is not None and model not in pool.models:
                    yield (
                        f"{where}.models: pool {rule.pool!r} does not serve {model!r} "
                        f"(it serves: {', '.join(sorted(pool.models))})"
                    )
            for tenant_id in rule.tenants or ():
                tenant = self.tenants.get(tenant_id)
                if tenant is None:
                    yield f"{where}.tenants: unknown tenant {tenant_id!r}"
                elif tenant.pools is not None and rule.pool not in tenant.pools:
                    yield (
                        f"{where}.tenants: tenant {tenant_id!r} may not use pool {rule.pool!r} "
                        f"(tenants.{tenant_id}.pools)"
                    )

    def backends(self) -> dict[str, tuple[str, BackendConfig]]:
        """Every backend by name, with the name of its pool."""
        return {
            name: (pool_name, backend)
            for pool_name, pool in self.pools.items()
            for name, backend in pool.backends.items()
        }


_DEFAULT_MODEL = ModelConfig()


def _repeats(section: str, what: str, values: list[str], show: bool = True) -> str:
    """The problem with ``values`` if some repeat, else ''."""
    repeated = [v for v, n in Counter(values).items() if n > 1]
    if not repeated:
        return ""
    shown = f": {', '.join(sorted(repeated))}" if show else ""
    return f"{section}: each {what} must be unique, found repeats{shown}"


class ConfigError(Exception):
    """The configuration cannot be used; the message names every bad field."""


def load_settings(path: str | Path) -> Settings:
    """Read, merge with the environment and validate a configuration file.

    Raises :class:`ConfigError` with one line per problem, each naming the field by its dotted
    path (``pools.interactive.backends.sim-0.url: ...``).
    """
    source = Path(path)
    data = _read_yaml(source)
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: invalid configuration\n{describe_validation(exc)}") from None
    except SettingsError as exc:  # e.g. FAIRGATE_SERVER=x: not JSON where an object is expected
        raise ConfigError(
            f"{source}: invalid configuration\n  {exc} (check the FAIRGATE_* environment)"
        ) from None


def _read_yaml(source: Path) -> dict[str, Any]:
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read configuration file ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, not {type(data).__name__}")
    return data


def describe_validation(exc: ValidationError, at: str = "") -> str:
    """One indented line per problem, each naming its field by dotted path (under ``at``);
    secrets and whole objects are never echoed back."""
    lines = []
    for err in exc.errors(include_url=False):
        where = ".".join([at] * bool(at) + [str(part) for part in err["loc"]]) or "(top level)"
        message = err["msg"].removeprefix("Value error, ")
        if not err["loc"] and err["type"] == "value_error":
            # the cross-section checks: one line per problem, each naming its own field
            lines += [f"  {line}" for line in message.splitlines()]
            continue
        got = err.get("input")
        shown = "" if err["type"] in {"missing", "value_error"} else f" (got {got!r})"
        if isinstance(got, dict | list) or "secret" in where or "api_key" in where:
            shown = ""
        lines.append(f"  {where}: {message}{shown}")
    return "\n".join(lines)
