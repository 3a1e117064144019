"""Settings, read once at startup and passed into `create_app`.

Sources, strongest first: explicit arguments (the CLI), `IRGW_*` environment variables,
then an optional TOML file (`--config FILE` / `IRGW_CONFIG_FILE`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

OutputPolicy = Literal["repair", "retry", "error"]

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
    request_read_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="How long a request may stall mid-way (nothing of its head or body "
        "arriving); then 408 and the connection closes. Without it a client that stops "
        "mid-request holds its connection (and, past the head, a task) forever.",
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
        default=8 * 1024 * 1024,
        ge=1024,
        description="Largest request body accepted (413 beyond): a 32k-token prompt is ~128 KB.",
    )

    # -- schemas and output checking
    schemas_dir: Path = _DEFAULT_SCHEMAS_DIR
    output_policy: OutputPolicy | None = Field(
        default=None, description="Overrides every schema's own policy when set."
    )
    max_retries: int = Field(default=2, ge=0, le=5)
    adhoc_output_policy: OutputPolicy = "repair"
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
        "(gateway/runtime.py) where glibc and the kernel allow it.",
    )
    log_level: str = "info"
    config_file: Path | None = None

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
