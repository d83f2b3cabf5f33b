"""Service settings: ``CODESHERPA_*`` environment variables over an optional TOML file."""

from __future__ import annotations

import ipaddress
import os
import socket
import stat
import tempfile
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from service.shipped import default_policy

SETTINGS_FILE_VARIABLE = "CODESHERPA_SETTINGS_FILE"


def default_state_dir() -> str:
    base = os.environ.get("XDG_STATE_HOME") or tempfile.gettempdir()
    return str(Path(base) / "codesherpa")


def parse_token_pairs(text: str, source: str) -> dict[str, str]:
    """``tenant:token`` pairs, separated by commas or newlines → {token: tenant}."""
    tokens: dict[str, str] = {}
    for raw in text.replace("\n", ",").split(","):
        pair = raw.strip()
        if not pair or pair.startswith("#"):
            continue
        tenant, sep, token = pair.partition(":")
        if not sep or not tenant.strip() or not token.strip():
            raise ValueError(f"{source}: expected 'tenant:token', got an entry without both")
        if len(token.strip()) < 16:
            raise ValueError(
                f"{source}: the token of tenant '{tenant.strip()}' is shorter than 16 characters"
            )
        tokens[token.strip()] = tenant.strip()
    return tokens


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CODESHERPA_", extra="forbid")

    tokens: str = Field("", description="tenant:token pairs separated by commas")
    tokens_file: str | None = Field(None, description="the same, one pair a line (mode 0600)")
    policy: str = Field(default_factory=default_policy, description="policy file path")
    public_url: str = Field(
        "http://127.0.0.1:8000",
        description="base URL of links and manifest; default: the address the service listens on",
    )
    state_dir: str = Field(default_factory=default_state_dir, description="where workspaces live")
    max_body_bytes: int = Field(2 * 1024 * 1024, gt=0, description="largest request body")
    audit_log: str = Field("-", description="audit log file; '-' for stdout, empty for none")
    rate_limit: str = Field("600/minute", description="requests per tenant, e.g. '10/second'")
    runs_at_once_per_tenant: int = Field(4, gt=0, description="runs in progress per tenant")
    admin_token: str | None = Field(
        None, min_length=16, description="bearer token for /admin routes; unset disables them"
    )
    # Slow and idle clients (service/connection_guard.py; the numbers are in SECURITY.md).
    header_timeout_s: float = Field(
        10.0, gt=0, description="a request's whole head must arrive within this many seconds"
    )
    stall_timeout_s: float = Field(
        30.0, gt=0, description="a request body or a response that makes no progress this long ends"
    )
    sse_heartbeat_s: float = Field(
        15.0, gt=0, le=15, description="a comment line keeps an idle event stream open this often"
    )
    max_connections: int | None = Field(
        None, gt=0, description="open HTTP connections; unset: what the descriptor limit allows"
    )
    fd_reserve: int | None = Field(
        None, gt=0, description="descriptors kept for sessions and files; unset: 256 + 4 a session"
    )

    @field_validator("rate_limit")
    @classmethod
    def _parseable_rate(cls, value: str) -> str:
        from limits import parse

        try:
            parse(value)
        except ValueError:
            raise ValueError(f"not a rate such as '600/minute': {value!r}") from None
        return value

    @field_validator("public_url")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
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
        settings_file = os.environ.get(SETTINGS_FILE_VARIABLE)
        if settings_file:
            require_private(Path(settings_file), "the settings file")
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=settings_file))
        return tuple(sources)

    def listening_on(self, host: str, port: int) -> Settings:
        """These settings, with links pointing where the service listens unless set."""
        if "public_url" in self.model_fields_set:
            return self
        return self.model_copy(update={"public_url": listen_url(host, port)})

    def token_map(self) -> dict[str, str]:
        """Every configured token mapped to its tenant."""
        tokens = parse_token_pairs(self.tokens, "CODESHERPA_TOKENS")
        if self.tokens_file:
            path = Path(self.tokens_file)
            require_private(path, "the tokens file")
            tokens.update(parse_token_pairs(path.read_text(encoding="utf-8"), str(path)))
        return tokens


def require_private(path: Path, what: str) -> None:
    """Refuse a file that holds secrets when anyone but its owner may read or change it."""
    if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ValueError(f"{path}: {what} must not be open to others (chmod 600)")


def listen_url(host: str, port: int) -> str:
    """The URL of a listening address; a wildcard address is named by the host's name."""
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 - naming the wildcard, not binding it
        host = socket.gethostname()
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
