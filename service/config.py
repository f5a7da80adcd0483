"""All coordinator settings in one pydantic-settings class (env prefix ``ARCHSEARCH_``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATA_DIR = Path.home() / ".archsearch"


class Settings(BaseSettings):
    """Coordinator settings. Every field can be set as ``ARCHSEARCH_<FIELD>``.

    Raises ``pydantic.ValidationError`` (naming the field) for an unusable value, e.g. a
    database URL of an unsupported dialect or a port outside 1..65535.
    """

    model_config = SettingsConfigDict(env_prefix="ARCHSEARCH_", extra="ignore")

    data_dir: Path = Field(DEFAULT_DATA_DIR, description="Where the embedded SQLite file lives.")
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL; default sqlite:///<data_dir>/archsearch.db. "
        "PostgreSQL: postgresql+psycopg://user@host:5432/db",
    )
    sqlite_busy_timeout_ms: int = Field(30_000, ge=0)
    db_pool_size: int = Field(10, ge=1, le=1000, description="Connections kept per process.")
    db_max_overflow: int = Field(
        30,
        ge=0,
        le=1000,
        description="Extra connections under load (PostgreSQL: mind "
        "max_connections across coordinator processes).",
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    admin_token: SecretStr | None = Field(
        None, description="Bootstrap admin bearer token (required unless open_reads-only use)."
    )
    open_reads: bool = Field(
        False, description="Allow GET routes and the dashboard without a token."
    )
    lease_seconds: float = Field(60.0, gt=0)
    max_attempts: int = Field(3, ge=1)
    reaper_interval_seconds: float = Field(5.0, gt=0)
    max_body_bytes: int = Field(1_048_576, ge=1024)
    suggest_processes: int = Field(
        1,
        ge=0,
        le=64,
        description="Processes that run the suggester (TPE) apart from the "
        "request threads; 0 runs it in the coordinator process itself.",
    )
    log_level: str = "info"

    @field_validator("database_url")
    @classmethod
    def _known_dialect(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("sqlite", "postgresql")):
            raise ValueError(
                "database_url must start with sqlite:// or postgresql+psycopg://, "
                f"got {value.split(':', 1)[0]!r}"
            )
        if value.startswith("postgresql://") or value.startswith("postgres://"):
            raise ValueError("database_url must name the driver: postgresql+psycopg://...")
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        levels = ("critical", "error", "warning", "info", "debug", "trace")
        if value.lower() not in levels:
            raise ValueError(f"log_level must be one of {levels}, got {value!r}")
        return value.lower()

    @model_validator(mode="after")
    def _admin_token_strength(self) -> Settings:
        token = self.admin_token.get_secret_value() if self.admin_token else None
        if token is not None and len(token) < 16:
            raise ValueError("admin_token must be at least 16 characters")
        return self

    @property
    def resolved_database_url(self) -> str:
        """The URL actually used: the configured one, or the SQLite file in data_dir."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'archsearch.db').resolve()}"

    @property
    def is_sqlite(self) -> bool:
        return self.resolved_database_url.startswith("sqlite")


@lru_cache
def get_settings() -> Settings:
    """Process-wide settings read once from the environment."""
    return Settings()
