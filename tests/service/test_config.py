import pytest
from pydantic import ValidationError

from service.config import Settings


def test_defaults_use_sqlite_file_in_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHSEARCH_DATA_DIR", str(tmp_path))
    s = Settings()
    assert s.resolved_database_url == f"sqlite:///{tmp_path.resolve() / 'archsearch.db'}"
    assert s.is_sqlite
    assert s.port == 8000 and s.host == "127.0.0.1"
    assert s.lease_seconds == 60.0


def test_environment_overrides_are_parsed(monkeypatch):
    monkeypatch.setenv("ARCHSEARCH_DATABASE_URL", "postgresql+psycopg://u@h:5432/db")
    monkeypatch.setenv("ARCHSEARCH_PORT", "9001")
    monkeypatch.setenv("ARCHSEARCH_LEASE_SECONDS", "2.5")
    monkeypatch.setenv("ARCHSEARCH_OPEN_READS", "true")
    monkeypatch.setenv("ARCHSEARCH_ADMIN_TOKEN", "a" * 32)
    s = Settings()
    assert s.resolved_database_url == "postgresql+psycopg://u@h:5432/db"
    assert not s.is_sqlite
    assert s.port == 9001
    assert s.lease_seconds == 2.5
    assert s.open_reads is True
    assert s.admin_token is not None and s.admin_token.get_secret_value() == "a" * 32
    assert "a" * 32 not in repr(s)  # secrets never printed


@pytest.mark.parametrize(
    ("env", "value", "field", "fragment"),
    [
        ("ARCHSEARCH_PORT", "70000", "port", "less than or equal to 65535"),
        ("ARCHSEARCH_LEASE_SECONDS", "0", "lease_seconds", "greater than 0"),
        ("ARCHSEARCH_DATABASE_URL", "mysql://x/y", "database_url", "must start with sqlite"),
        ("ARCHSEARCH_DATABASE_URL", "postgresql://x/y", "database_url", "name the driver"),
        ("ARCHSEARCH_LOG_LEVEL", "loud", "log_level", "must be one of"),
    ],
)
def test_bad_values_name_the_field_and_rule(monkeypatch, env, value, field, fragment):
    monkeypatch.setenv(env, value)
    with pytest.raises(ValidationError) as info:
        Settings()
    err = info.value.errors()[0]
    assert err["loc"] == (field,)
    assert fragment in err["msg"]


def test_short_admin_token_is_refused(monkeypatch):
    monkeypatch.setenv("ARCHSEARCH_ADMIN_TOKEN", "short")
    with pytest.raises(ValidationError, match="at least 16 characters"):
        Settings()
