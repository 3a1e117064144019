"""Settings, read once at startup and passed into `create_app`.

Sources, strongest first: explicit arguments (the CLI), `IRGW_*` environment variables,
then an optional TOML file (`--config FILE` / `IRGW_CONFIG_FILE`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from gateway.output.policies import PolicyName

# A policy by name (gateway/output/policies.py holds what each one does).
OutputPolicy = PolicyName

_DEFAULT_SCHEMAS_DIR = Path(__file__).resolve().parent.parent / "schemas"


class Settings(BaseSettings):
    # An empty variable is unset: `IRGW_HOST=` must not mean "every interface".
    model_config = SettingsConfigDict(env_prefix="IRGW_", extra="forbid", env_ignore_empty=True)

    # -- the upstream vLLM server
    upstream_url: str = "http://127.0.0.1:8000"
    upstream_api_key: SecretStr | None = None
    upstream_headers: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="Extra headers on every request to vLLM, e.g. Modal's proxy-auth "
        "Modal-Key/Modal-Secret (JSON object in IRGW_UPSTREAM_HEADERS).",
    )
    upstream_model: str | None = Field(
        default=None,
        description="Model used for schema aliases; default: the first model vLLM lists.",
    )
    connect_deadline_s: float = Field(
        default=30.0,
        ge=0,
        description="How long to keep retrying refused connections (vLLM booting, cold start).",
    )
    upstream_timeout_s: float = Field(default=300.0, gt=0, description="Read timeout → 504.")
    upstream_pool_size: int = Field(default=256, ge=1)

    # -- listening
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    keepalive_timeout_s: int = Field(
        default=75,
        ge=1,
        description="How long an idle client connection stays open. Longer than clients' own "
        "idle expiry (httpx and the openai client 5 s, aiohttp 15 s), so the client always "
        "closes first: a request sent just as the server closes the connection is lost.",
    )
    ready_probe: Literal["always", "with_key"] = Field(
        default="always",
        description="When `GET /readyz` asks vLLM for its `/version`: `always`, or only for "
        "a caller with a valid key (`with_key`; others get the gateway's own readiness). "
        "`with_key` where vLLM scales to zero (Modal): a probe wakes a GPU, and uptime "
        "monitors and scanners probe without keys.",
    )
    canary: bool = Field(
        default=True,
        description="Prove that vLLM enforces schemas: a tiny constrained request on chat and "
        "completions at startup and every `canary_interval_s`; `/readyz` fails while the "
        "answer ignores the schema. Off (`IRGW_CANARY=off`) for upstreams that are not vLLM.",
    )
    canary_interval_s: float = Field(
        default=300.0, ge=10,
        description="How long a passing canary verdict is trusted (a failing or inconclusive "
        "one is checked again after at most 15 s).",
    )
    canary_timeout_s: float = Field(
        default=20.0, gt=0,
        description="How long one canary run (both requests) may take; then no verdict.",
    )
    canary_max_tokens: int = Field(
        default=32, ge=8, le=512,
        description="max_tokens of each canary request: a constrained answer needs about a "
        "dozen tokens, free text runs to the limit.",
    )
    request_body_timeout_s: float = Field(
        default=120.0,
        gt=0,
        description="How long a request body sent in pieces may take from its first piece to "
        "its last; then 408 and the connection closes. The read timeout bounds each gap; this "
        "bounds the whole, so a trickled body cannot hold the body budget.",
    )
    request_read_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="How long a request may stall mid-way (nothing of its head or body "
        "arriving); then 408 and the connection closes. Without it a client that stops "
        "mid-request holds its connection (and, past the head, a task) forever.",
    )
    request_head_timeout_s: float = Field(
        default=20.0,
        gt=0,
        description="How long a request head (request line and headers) may take to arrive "
        "whole, from its first byte, or from the connection's opening for its first request; "
        "then 408 and the connection closes (a connection that sent nothing is just closed). "
        "A head dripped a byte at a time never trips the read timeout; this deadline it does "
        "(nginx's client_header_timeout).",
    )
    max_request_head_bytes: int = Field(
        default=32 * 1024,
        ge=1024,
        description="Largest request head (request line and headers together); 431 beyond "
        "(nginx's large_client_header_buffers: 4 x 8 KiB).",
    )
    max_request_headers: int = Field(
        default=100, ge=1, description="Most header fields in one request; 431 beyond."
    )
    max_connections: int = Field(
        default=4096,
        ge=1,
        description="Open client connections, idle ones included; a connection past it gets "
        "a 503 (retry-after: 1) and is closed at once, logged at most every 10 s. Keep it "
        "under the process's file-descriptor limit (ulimit -n) less the upstream pool.",
    )
    write_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="How long a client may leave what it is sent unread (the connection's "
        "buffer above its high-water mark) before it is dropped: its request, and the vLLM "
        "call behind it, are cancelled and its in-flight slot freed (nginx's send_timeout).",
    )
    shutdown_grace_s: float = Field(
        default=25.0,
        ge=0,
        description="On SIGTERM or Ctrl-C: how long requests in flight (streams included) may "
        "run on before they are cancelled, and their vLLM calls with them. Under the 30 s "
        "that Kubernetes and most platforms wait before SIGKILL, so that the cancelling "
        "(which frees vLLM's slots and settles token limits) still happens.",
    )
    max_request_bytes: int = Field(
        default=2 * 1024 * 1024,
        ge=1024,
        description="Largest request body accepted (413 beyond): a 32k-token prompt is ~128 KB, "
        "a 128k-token one ~512 KB; JSON escaping can double it.",
    )
    max_body_bytes_in_flight: int = Field(
        default=16 * 1024 * 1024,
        ge=1024,
        description="The bodies of all requests in progress together, in bytes; a request "
        "whose body does not fit gets a 503 (retry-after: 1). A parsed body holds several "
        "times its size (25-30x for a body of tiny JSON values: bench/results/body_memory.md), "
        "for as long as its request runs. At least IRGW_MAX_REQUEST_BYTES.",
    )

    # -- schemas and output checking
    schemas_dir: Path = _DEFAULT_SCHEMAS_DIR
    output_policy: OutputPolicy | None = Field(
        default=None, description="Overrides every schema's own policy when set (a key "
        "allowed to may still choose one per request: x-irgw-output-policy)."
    )
    max_retries: int = Field(
        default=2, ge=0, le=5, description="Further calls to vLLM after a failed check under "
        "`retry` and `reask`, each reserved against the key's limits before it runs.",
    )
    adhoc_output_policy: OutputPolicy = "repair"
    adhoc_schema_max_bytes: int = Field(
        default=131_072,
        ge=1024,
        description="Largest ad-hoc schema (bytes of its compact JSON); 400 invalid_schema "
        "beyond. A pydantic model's schema is a few KB; register bigger ones.",
    )
    adhoc_schema_max_depth: int = Field(
        default=64,
        ge=4,
        le=200,
        description="Deepest nesting of an ad-hoc schema's JSON; 400 invalid_schema beyond.",
    )
    adhoc_schema_max_nodes: int = Field(
        default=10_000,
        ge=16,
        description="Most JSON values (objects, arrays, strings, numbers...) in an ad-hoc "
        "schema; 400 invalid_schema beyond.",
    )
    adhoc_schema_cache_size: int = Field(
        default=256,
        ge=0,
        description="Compiled ad-hoc schemas kept (LRU, by exact text) so that a resent schema "
        "is not compiled again; 0 compiles every time.",
    )
    default_max_tokens: int = Field(
        default=1024,
        ge=1,
        description="Sent to vLLM when a request sets no max_tokens and is structured (so the "
        "GPU is never held until the context is full) or comes from a key with a token limit "
        "(so its answer can be reserved: the TPM is a cap, not an average); clipped to what "
        "the key's max_tokens cap and TPM allow for the request's n x prompts.",
    )

    models_cache_s: float = Field(
        default=5.0,
        ge=0,
        description="How long `GET /v1/models` reuses vLLM's model list before asking again "
        "(0: every call; each call also counts against the key's requests per minute).",
    )
    metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="Serve `/metrics` on this port (on `metrics_host`) instead of the public "
        "one, where it is then a 404. Unset: `/metrics` is on the public port, without a key.",
    )
    metrics_host: str = Field(default="127.0.0.1", description="Where `metrics_port` listens.")

    # -- keys and limits
    auth_enabled: bool = True
    keys_backend: Literal["file", "redis"] = Field(
        default="file",
        description="Where keys live: `file` (IRGW_KEYS_FILE, one host) or `redis` "
        "(IRGW_REDIS_URL, shared by every replica; changes seen within keys_refresh_s).",
    )
    keys_file: Path | None = None
    keys_refresh_s: float = Field(
        default=0.25, gt=0, le=1.0,
        description="How often a replica asks the Redis key store whether keys changed "
        "(one GET; the request path never waits for Redis).",
    )
    keys_redis_prefix: str = Field(default="irgw:keys:", min_length=1)
    ratelimit_backend: Literal["memory", "redis"] = "memory"
    redis_url: str | None = None
    redis_failure_policy: Literal["open", "closed"] = "open"
    usage_backend: Literal["off", "sqlite", "redis"] = Field(
        default="off",
        description="Usage accounting per key, schema and UTC day: `sqlite` (IRGW_USAGE_FILE, "
        "one instance) or `redis` (IRGW_REDIS_URL, every replica adds to the same counts).",
    )
    usage_file: Path | None = None
    usage_flush_s: float = Field(
        default=2.0, gt=0, le=60,
        description="How often usage counts are written (and on shutdown): what a crash can "
        "lose, at most, per process.",
    )
    usage_max_pending_rows: int = Field(
        default=10_000, ge=1,
        description="(day, key, schema) rows held while the usage store cannot be written; "
        "past it the oldest are dropped (logged).",
    )
    usage_retention_days: int = Field(default=400, ge=1, description="Redis usage expiry.")
    usage_redis_prefix: str = Field(default="irgw:usage:", min_length=1)
    cache_backend: Literal["off", "memory", "redis"] = Field(
        default="off",
        description="The response cache for deterministic checked answers (opt-in per key "
        "with `cache`, or per schema with IRGW_CACHE_SCHEMAS): `memory` or `redis` (shared).",
    )
    cache_schemas: list[str] = Field(
        default_factory=list,
        description="Schema names whose deterministic requests are cached for every key "
        '(JSON list, e.g. ["function_ir"]).',
    )
    cache_ttl_s: float = Field(default=300.0, gt=0, le=86400 * 7)
    cache_max_entries: int = Field(default=1000, ge=1, description="The memory cache's bound.")
    cache_max_entry_bytes: int = Field(default=256 * 1024, ge=1024,
                                       description="Larger answers are not cached.")
    cache_redis_prefix: str = Field(default="irgw:cache:", min_length=1)
    max_inflight: int = Field(default=16, ge=1, description="Requests in flight to vLLM.")
    queue_size: int = Field(default=16, ge=0, description="Requests waiting for a slot.")
    queue_timeout_s: float = Field(default=5.0, ge=0)

    huge_pages: bool = Field(
        default=True,
        description="`serve` restarts itself with Python objects on transparent huge pages "
        "(gateway/server/runtime.py) where glibc and the kernel allow it.",
    )
    log_level: str = "info"
    # -- seeing inside it (gateway/observe/; traces are configured by OTEL_* variables)
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="`text`: readable lines (make dev). `json`: one JSON object per line, "
        "and one `request` line per generation request (ids, schema, outcome, tokens, times).",
    )
    log_content: bool = Field(
        default=False,
        description="Put the request's messages and the answer into JSON request lines "
        "(truncated, under a `content` field). Off: no content is ever logged.",
    )
    log_content_max_chars: int = Field(
        default=2000, ge=0, le=100_000,
        description="How much of each (request, answer) a request line keeps when "
        "`log_content` is on.",
    )
    metrics_key_labels: bool = Field(
        default=False,
        description="Also count requests and tokens per API key id (`irgw_key_*` metrics).",
    )
    metrics_max_keys: int = Field(
        default=100, ge=1, le=10_000,
        description="With `metrics_key_labels`: key ids beyond this many share one label, "
        "`(other)`, so the number of series stays bounded.",
    )
    config_file: Path | None = None

    @model_validator(mode="after")
    def _check_body_limits(self) -> Settings:
        if self.max_body_bytes_in_flight < self.max_request_bytes:
            raise ValueError(
                f"max_body_bytes_in_flight ({self.max_body_bytes_in_flight}) is below "
                f"max_request_bytes ({self.max_request_bytes}): no such request could run")
        return self

    @field_validator("upstream_url")
    @classmethod
    def _check_upstream_url(cls, value: str) -> str:
        # Checked here, so a typo stops `serve` with a message instead of failing at startup.
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"must be http(s)://host[:port], got {value!r}")
        try:
            parts.port  # noqa: B018  (reading it is the check: a bad port raises)
        except ValueError as exc:
            raise ValueError(f"{exc}, in {value!r}") from None
        return value.rstrip("/")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = _config_file_from(init_settings, env_settings)
        if config_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)


def _config_file_from(*sources: PydanticBaseSettingsSource) -> Path | None:
    for source in sources:
        value = source().get("config_file")
        if value:
            path = Path(value)
            if not path.is_file():
                raise FileNotFoundError(f"config file not found: {path}")
            return path
    return None
