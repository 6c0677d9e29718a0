"""Settings: production refuses weak secrets; development generates one once."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from app.core.settings import Settings, parse_dns_servers


def test_production_without_secret_refuses_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WARTA_ENV", "production")
    monkeypatch.delenv("WARTA_SECRET_KEY", raising=False)
    with pytest.raises(ValidationError, match="WARTA_SECRET_KEY is required"):
        Settings(_env_file=None)  # type: ignore[call-arg]


@pytest.mark.parametrize("secret", ["changethis", "short-secret"])
def test_production_with_weak_secret_refuses(monkeypatch: pytest.MonkeyPatch, secret: str) -> None:
    monkeypatch.setenv("WARTA_ENV", "production")
    monkeypatch.setenv("WARTA_SECRET_KEY", secret)
    with pytest.raises(ValidationError, match="WARTA_SECRET_KEY"):
        Settings(_env_file=None)  # type: ignore[call-arg]


def test_production_with_strong_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WARTA_ENV", "production")
    monkeypatch.setenv("WARTA_SECRET_KEY", "s" * 48)
    assert Settings(_env_file=None).effective_secret_key() == "s" * 48  # type: ignore[call-arg]


def test_development_secret_is_generated_once(tmp_path: Path) -> None:
    settings = Settings(var_dir=tmp_path / "var", secret_key="", _env_file=None)  # type: ignore[call-arg]
    first = settings.effective_secret_key()
    assert len(first) >= 48
    assert settings.effective_secret_key() == first
    assert (tmp_path / "var" / "secret_key").stat().st_mode & 0o077 == 0


def test_every_setting_is_described() -> None:
    for name, field in Settings.model_fields.items():
        assert field.description, name


def test_log_settings_default_to_readable_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WARTA_LOG_LEVEL", raising=False)
    monkeypatch.delenv("WARTA_LOG_FORMAT", raising=False)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (settings.log_level, settings.log_format) == ("INFO", "text")


def test_log_settings_ignore_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WARTA_LOG_LEVEL", "debug")
    monkeypatch.setenv("WARTA_LOG_FORMAT", "JSON")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (settings.log_level, settings.log_format) == ("DEBUG", "json")


@pytest.mark.parametrize(
    ("name", "value"), [("WARTA_LOG_LEVEL", "loud"), ("WARTA_LOG_FORMAT", "xml")]
)
def test_unknown_log_settings_are_refused(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=name.removeprefix("WARTA_").lower()):
        Settings(_env_file=None)  # type: ignore[call-arg]


def test_webhook_dns_servers_are_ip_and_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WARTA_WEBHOOK_DNS_SERVERS", "127.0.0.1:5353, [::1]:54, 9.9.9.9")
    assert parse_dns_servers(Settings(_env_file=None).webhook_dns_servers) == [  # type: ignore[call-arg]
        ("127.0.0.1", 5353),
        ("::1", 54),
        ("9.9.9.9", 53),
    ]
    for bad in ("dns.example.com", "1.2.3.4:0", "[::1", "1.2.3.4:x"):
        monkeypatch.setenv("WARTA_WEBHOOK_DNS_SERVERS", bad)
        with pytest.raises(ValidationError, match="webhook_dns_servers"):
            Settings(_env_file=None)  # type: ignore[call-arg]
