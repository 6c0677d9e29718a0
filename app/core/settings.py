"""Settings: one pydantic-settings class, read from the environment (prefix WARTA_) and .env."""

from __future__ import annotations

import ipaddress
import re
import secrets
import socket
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, PrivateAttr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.core.api_keys import weakness

WEAK_SECRETS = frozenset({"", "changethis", "secret", "changeme", "warta", "password"})
MIN_SECRET_LENGTH = 32
DNS_PORT = 53


class SettingsError(ValueError):
    """A setting is missing or unsafe; the message says which and why."""


class Settings(BaseSettings):
    """Every knob Warta reads; each field documents itself."""

    model_config = SettingsConfigDict(
        env_prefix="WARTA_", env_file=".env", extra="ignore", validate_default=True
    )
    _generated_secret: str | None = PrivateAttr(None)

    env: Literal["development", "production"] = Field(
        "development", description="`production` refuses weak secrets and dev conveniences."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        "INFO",
        description="Least severe log records printed: DEBUG adds every job run and routine "
        "step, INFO says what happened (a campaign started, a request served), WARNING only "
        "trouble.",
    )
    log_format: Literal["text", "json"] = Field(
        "text",
        description="`text`: one readable line per record; `json`: one JSON object per line "
        "(time, level, logger, message and any extra fields) for log collectors.",
    )
    var_dir: Path = Field(Path("var"), description="Directory for local state (created on demand).")
    database_url: str = Field(
        "sqlite+aiosqlite:///var/warta.db",
        description="SQLAlchemy async URL; postgresql+asyncpg://… at scale.",
    )
    database_pool_size: int = Field(10, ge=1, le=200, description="Connections per process.")
    redis_url: str = Field("", description="redis://host:port/db; empty starts an embedded Redis.")
    api_host: str = Field("127.0.0.1", description="HTTP listener address.")
    api_port: int = Field(8000, ge=1, le=65535, description="HTTP listener port.")
    public_url: str = Field(
        "http://127.0.0.1:8000", description="Base URL of unsubscribe, preference, tracking links."
    )
    secret_key: str = Field(
        "", description="Signs tokens and webhooks; generated into var/ in development."
    )
    bootstrap_api_key: str = Field(
        "",
        description="If set, an admin API key with exactly this token exists after start; at "
        "least 32 random characters after an optional `wk_` (a shorter one is refused).",
    )
    mta_submission: str = Field("127.0.0.1:2587", description="host:port(s) the sender submits to.")
    mta_inbound: str = Field(
        "127.0.0.1:2525", description="Inbound listener for the bounce domain."
    )
    mta_delivery: Literal["capture", "mx", "relay"] = Field(
        "capture", description="capture (Maildir var/maildir), mx (direct) or relay."
    )
    mta_relay_host: str = Field("", description="host:port of the smart host for `relay`.")
    mta_transport_map: str = Field("", description='JSON {"domain": "host:port"} next-hop map.')
    mta_dns_servers: str = Field("", description="ip[:port],… for MX/A lookups; empty = system.")
    mta_spool_dir: Path = Field(Path("var/spool"), description="The MTA's durable queue.")
    mta_processes: int = Field(
        1,
        ge=1,
        le=64,
        description="MTA processes `warta mta` starts, each with its own spool under "
        "`<spool>/instance-<i>`, sharing the listening ports (SO_REUSEPORT); one per core.",
    )
    mta_reuse_port: bool = Field(
        False,
        description="Listen with SO_REUSEPORT (set by `warta mta` for its child processes).",
    )
    mta_hostname: str = Field(
        default_factory=socket.getfqdn, description="HELO name, Message-ID and DSN Reporting-MTA."
    )
    mta_tls: Literal["none", "opportunistic", "required"] = Field(
        "opportunistic",
        description="Outbound STARTTLS: never, when offered, or always (defer without it).",
    )
    mta_tls_verify: bool = Field(
        False,
        description="Verify remote certificates; a failed handshake then defers, never plaintext.",
    )
    mta_relay_username: str = Field("", description="SMTP AUTH user for the relay host.")
    mta_relay_password: str = Field("", description="SMTP AUTH password for the relay host.")
    mta_tls_cert: str = Field(
        "", description="PEM certificate (chain) the listeners offer with STARTTLS; empty = none."
    )
    mta_tls_key: str = Field("", description="PEM private key for WARTA_MTA_TLS_CERT.")
    mta_trusted_networks: str = Field(
        "127.0.0.0/8,::1/128",
        description="CIDRs that may submit without SMTP AUTH (comma-separated).",
    )
    mta_max_message_size: int = Field(
        26_214_400, ge=1024, description="SIZE limit in bytes for submitted and inbound mail."
    )
    mta_max_recipients: int = Field(1000, ge=1, description="Recipients per SMTP transaction.")
    mta_max_connections_per_client: int = Field(
        50, ge=1, description="Concurrent SMTP connections one client address may hold."
    )
    mta_auth_max_failures: int = Field(
        10,
        ge=1,
        description="Failed SMTP AUTH attempts from one address, or for one login, before "
        "further attempts are refused with 421 (counted in Redis across MTA processes).",
    )
    mta_auth_failure_window: float = Field(
        600, gt=0, description="Seconds the SMTP AUTH failure count (and a lockout) lasts."
    )
    mta_idle_timeout: float = Field(300, gt=0, description="Seconds an idle SMTP session lives.")
    mta_dedupe_window: float = Field(
        604_800, gt=0, description="Seconds a Message-ID is remembered to refuse a second copy."
    )
    mta_shaping_rules: Path | None = Field(
        None,
        description="TOML file of per-destination shaping rules that change or extend the "
        "built-in ones (workers/mta/shaping.toml) by name.",
    )
    mta_throttle_rules: Path | None = Field(
        None,
        description="TOML file of throttling-reply rules added to the built-in ones "
        "(workers/mta/throttle_rules.toml); a same-named rule replaces one.",
    )
    bounce_domain: str = Field("bounces.localhost", description="VERP return-path domain.")
    bounce_rules: Path | None = Field(
        None,
        description="TOML file of bounce classification rules tried before the built-in ones "
        "(same shape as app/bounces/bounce_rules.toml); may re-kind classes.",
    )
    bounce_score_threshold: int = Field(
        5, ge=1, description="Soft-bounce score at which an address is suppressed."
    )
    bounce_score_quiet_days: int = Field(
        7, ge=1, description="Days without a bounce after which an address's score starts over."
    )
    bounce_complaint_scope: Literal["broadcast", "all"] = Field(
        "broadcast",
        description="Suppression scope for a complaint: broadcast keeps transactional mail.",
    )
    bounce_guard_window: int = Field(
        3600, ge=60, description="Seconds of recent sends the campaign bounce guard looks at."
    )
    bounce_guard_min_sends: int = Field(
        500, ge=1, description="Sends in the window before the bounce guard may pause a campaign."
    )
    bounce_guard_hard_rate: float = Field(
        0.05, gt=0, le=1, description="Hard-bounce share of the window's sends that pauses."
    )
    bounce_guard_complaint_rate: float = Field(
        0.003, gt=0, le=1, description="Complaint share of the window's sends that pauses."
    )
    bounce_raw_max_bytes: int = Field(
        262_144, ge=1024, description="Bytes of each report kept as evidence in the database."
    )
    bounce_poll_interval: float = Field(
        2.0, gt=0, description="Seconds between scans of the inbound Maildir for reports."
    )
    mta_retry_min: int = Field(300, ge=1, description="Seconds before the first retry.")
    mta_retry_max: int = Field(4000, ge=1, description="Longest wait between tries, seconds.")
    mta_queue_lifetime: int = Field(432000, ge=1, description="Seconds before a message fails.")
    mta_sweep_interval: float = Field(
        30,
        gt=0,
        description="Seconds between the delivery agent's sweeps of the spool for queued "
        "messages it does not hold (a safety net: each one found is logged as a warning).",
    )
    dkim_dir: Path = Field(Path("var/dkim"), description="DKIM keys as <domain>/<selector>.pem.")
    mta_signing_helper: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Make the RSA/Ed25519 step of the MTA's DKIM signatures in a helper "
        "process (one per MTA process) instead of its event loop; auto: when the process may "
        "use more than one core.",
    )
    send_rate: float = Field(
        0, ge=0, description="Messages per second for all workers; 0 = no cap."
    )
    batch_timeout: int = Field(
        20,
        ge=2,
        description="Timeout of a batch job, seconds: a batch works in slices of half this "
        "and hands the rest of its range back to the queue (its lease is WARTA_BATCH_LEASE).",
    )
    retry_base: float = Field(
        60, gt=0, description="Seconds before a deferred recipient is retried; doubles per try."
    )
    retry_max: float = Field(
        3600, gt=0, description="Longest wait, seconds, before a deferred recipient is retried."
    )
    max_attempts: int = Field(
        6, ge=1, description="Submission attempts before a deferred campaign recipient fails."
    )
    worker_batches: int = Field(4, ge=1, le=64, description="Batch jobs one worker runs at once.")
    sender_pipelining: bool = Field(
        True,
        description="Hand messages to the MTA in pipelined batches (PIPELINING + BDAT, one round "
        "trip per batch); false uses one aiosmtplib transaction per message.",
    )
    sender_connections: int = Field(
        10, ge=1, le=200, description="Persistent SMTP connections per worker process."
    )
    sender_priority_connections: int = Field(
        2,
        ge=1,
        le=50,
        description="SMTP connections per worker kept for transactional mail (beside the pool).",
    )
    max_json_bytes: int = Field(1_000_000, ge=1024, description="Largest JSON request body.")
    max_upload_bytes: int = Field(50_000_000, ge=1024, description="Largest CSV upload.")
    import_batch_size: int = Field(5000, ge=1, le=50_000, description="Rows per import flush.")
    public_cors_origins: str = Field(
        "",
        description="Origins (comma-separated, or *) whose pages may call /api/v1/public/ "
        "from a browser, e.g. https://example.com; empty = none.",
    )
    subscribe_limit_per_ip: int = Field(
        20,
        ge=0,
        description="Subscription attempts one client address may make per hour; 0 = no limit.",
    )
    subscribe_limit_per_address: int = Field(
        3,
        ge=0,
        description="Subscription attempts (confirmation mails) per email address per hour; 0 = no limit.",
    )
    optin_from_email: str = Field(
        "",
        description="From of opt-in confirmation mail, 'Name <addr>'; empty = noreply@WARTA_MTA_HOSTNAME.",
    )
    message_max_request_bytes: int = Field(
        15_000_000,
        ge=1024,
        description="Largest request body on /messages and /messages/batch (attachments).",
    )
    message_max_attachment_bytes: int = Field(
        10_000_000, ge=0, description="Decoded attachment bytes one message may carry in total."
    )
    message_max_bytes: int = Field(
        20_000_000, ge=1024, description="Largest built message (MIME) stored and sent."
    )
    message_retry_base: float = Field(
        30, gt=0, description="Seconds before a message the MTA deferred is retried; doubles."
    )
    message_max_attempts: int = Field(
        8, ge=1, description="Submission attempts before a deferred message fails."
    )
    idempotency_ttl: int = Field(
        86_400, ge=1, description="Seconds an Idempotency-Key is remembered (24 h)."
    )
    api_rate: float = Field(
        100, ge=0, description="Requests per second per API key on /messages; 0 = no limit."
    )
    api_rate_burst: int = Field(
        200, ge=1, description="Requests an idle API key may make at once on /messages."
    )
    webhook_timeout: float = Field(
        10, gt=0, description="Seconds a webhook receiver has to answer before it is a failure."
    )
    webhook_retry_base: float = Field(
        30, gt=0, description="Seconds before a failed webhook delivery is retried; doubles."
    )
    webhook_retry_max: float = Field(
        3600, gt=0, description="Longest wait between two tries of a webhook delivery."
    )
    webhook_retry_window: float = Field(
        93_600,
        gt=0,
        description="Seconds a webhook delivery is retried before it fails and the endpoint "
        "is disabled (default 26 h).",
    )
    webhook_settle: float = Field(
        2.0,
        ge=0,
        description="Seconds an event must be old before the dispatcher reads it, so events "
        "committed out of id order are not skipped.",
    )
    webhook_poll_interval: float = Field(
        0.5, gt=0, description="Seconds between two walks of the webhook dispatcher."
    )
    webhook_concurrency: int = Field(
        50, ge=1, le=1000, description="Webhook requests one worker process has in flight."
    )
    webhook_allow_private: bool = Field(
        False,
        description="Allow webhook URLs on loopback, private and link-local addresses "
        "(refused by default against SSRF; tests and single-host setups turn it on).",
    )
    webhook_dns_servers: str = Field(
        "",
        description="ip[:port],… ([ipv6]:port) that resolve webhook hosts; empty = the system "
        "resolver. Each delivery resolves its host once, checks every address and connects "
        "to a checked one, so an answer that changes between check and connection (DNS "
        "rebinding) cannot reach a private address.",
    )
    # --- admin console (/admin): sessions and sign-in throttling (docs/admin.md) ---
    admin_session_idle: int = Field(
        8 * 3600, ge=60, description="Seconds a console session lives without a request."
    )
    admin_session_lifetime: int = Field(
        7 * 86400, ge=60, description="Seconds a console session lives at most, used or not."
    )
    admin_login_max_failures: int = Field(
        10,
        ge=1,
        description="Failed sign-ins for one account within the window that lock it for the "
        "rest of the window (counted in Redis, so shared by every API process).",
    )
    admin_login_ip_max_failures: int = Field(
        50, ge=1, description="Failed sign-ins from one client address that lock the address."
    )
    admin_login_window: int = Field(
        900, ge=1, description="Seconds failed sign-ins are remembered (and a lockout lasts)."
    )

    # Performance (perf-api): the batch lease renewed by a heartbeat.
    batch_lease: float = Field(
        6.0,
        ge=1.0,
        le=300.0,
        description="Seconds a running batch job's lease lasts: a heartbeat renews it every "
        "third of this while the batch works, so a batch whose worker died is resumed by "
        "another worker within about this long.",
    )

    # Message archive and retention (docs/archive.md)
    archive_enabled: bool = Field(
        True, description="Keep the raw bytes of every message built for sending."
    )
    archive_dir: Path | None = Field(
        None,
        description="Day files of archived messages (`YYYY-MM-DD.zst`, zstd frames); "
        "empty = `archive` under WARTA_VAR_DIR (`var/archive`).",
    )
    retention_messages: int = Field(
        30, ge=0, description="Days an archived message is kept; 0 = forever."
    )
    retention_events: int = Field(400, ge=0, description="Days an event is kept; 0 = forever.")
    retention_reports: int = Field(
        90, ge=0, description="Days the raw text of a bounce or complaint report is kept."
    )
    retention_idempotency_keys: int = Field(
        1,
        ge=0,
        description="Days an Idempotency-Key is kept (never less than WARTA_IDEMPOTENCY_TTL).",
    )
    retention_webhook_deliveries: int = Field(
        30, ge=0, description="Days a finished webhook delivery is kept; 0 = forever."
    )
    retention_batch: int = Field(
        500, ge=1, le=100_000, description="Rows the retention job deletes per transaction."
    )

    @field_validator(
        "retention_messages",
        "retention_events",
        "retention_reports",
        "retention_idempotency_keys",
        "retention_webhook_deliveries",
        mode="before",
    )
    @classmethod
    def _days(cls, value: object) -> object:
        # `30d` as CONTRACT.md writes it, or a bare number of days.
        if isinstance(value, str) and value.strip().lower().endswith("d"):
            return value.strip()[:-1]
        return value

    def archive_directory(self) -> Path:
        """Where the archive's day files are."""
        return self.archive_dir if self.archive_dir is not None else self.var_dir / "archive"

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _fold_case(cls, value: object, info: ValidationInfo) -> object:
        if not isinstance(value, str):
            return value
        return value.upper() if info.field_name == "log_level" else value.lower()

    @field_validator("bootstrap_api_key")
    @classmethod
    def _check_bootstrap_key(cls, value: str) -> str:
        if value and (reason := weakness(value)):
            raise ValueError(reason)
        return value

    @field_validator("webhook_dns_servers")
    @classmethod
    def _check_dns_servers(cls, value: str) -> str:
        parse_dns_servers(value)
        return value

    @field_validator("public_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @model_validator(mode="after")
    def _check_production(self) -> Settings:
        if self.env == "production":
            if self.secret_key.strip().lower() in WEAK_SECRETS:
                raise SettingsError(
                    "WARTA_SECRET_KEY is required when WARTA_ENV=production "
                    "(generate one: python -c 'import secrets; print(secrets.token_urlsafe(48))')"
                )
            if len(self.secret_key) < MIN_SECRET_LENGTH:
                raise SettingsError(
                    f"WARTA_SECRET_KEY is too weak: use at least {MIN_SECRET_LENGTH} characters"
                )
        return self

    # --- Inbound mail (replies) and listener abuse controls (docs/inbound.md) ---
    inbound_domain: str = Field(
        "",
        description="Domain of reply addresses (reply+<token>@…); empty = the bounce domain. "
        "The inbound listener accepts mail for it and for the bounce domain.",
    )
    inbound_reply_streams: str = Field(
        "",
        description="Transactional streams whose messages get a signed Reply-To (comma list of "
        "`transactional`, `broadcast`); campaigns opt in with `track_replies`.",
    )
    inbound_spam_threshold: float = Field(
        5.0, description="A reply with a spamd score at or above this is quarantined."
    )
    inbound_dns_servers: str = Field(
        "",
        description="ip[:port],… for the SPF, DKIM and DMARC lookups of inbound mail and the "
        "DNSBL queries; empty = WARTA_MTA_DNS_SERVERS, else the system resolver.",
    )
    inbound_dns_timeout: float = Field(
        3.0, gt=0, description="Seconds one SPF/DKIM/DMARC/DNSBL lookup may take."
    )
    inbound_poll_interval: float = Field(
        2.0, gt=0, description="Seconds between two looks at the replies Maildir."
    )
    mta_dnsbl: str = Field(
        "",
        description="DNSBL zones (comma list, e.g. zen.spamhaus.org) consulted for each inbound "
        "client; a listed client is refused with 554 naming the zone.",
    )
    mta_inbound_connection_rate: float = Field(
        0.0,
        ge=0,
        description="New inbound connections per second per client address, shared by every "
        "MTA process through Redis; 0 = unlimited.",
    )
    mta_inbound_connection_burst: int = Field(
        20, ge=1, description="Inbound connections a client may open at once after a pause."
    )
    mta_inbound_message_rate: float = Field(
        0.0,
        ge=0,
        description="Inbound messages (MAIL commands) per second per client address, shared "
        "through Redis; 0 = unlimited.",
    )
    mta_inbound_message_burst: int = Field(
        50, ge=1, description="Inbound messages a client may send at once after a pause."
    )

    @field_validator("inbound_dns_servers")
    @classmethod
    def _check_inbound_dns_servers(cls, value: str) -> str:
        parse_dns_servers(value)
        return value

    def reply_domain(self) -> str:
        """Where replies are received: the inbound domain, else the bounce domain."""
        return (self.inbound_domain or self.bounce_domain).lower()

    def reply_streams(self) -> set[str]:
        """The transactional streams whose messages carry a signed Reply-To."""
        return {part.strip() for part in self.inbound_reply_streams.split(",") if part.strip()}

    def inbound_resolvers(self) -> list[tuple[str, int]]:
        """Nameservers for inbound checks; empty = the system resolver."""
        return parse_dns_servers(self.inbound_dns_servers or self.mta_dns_servers)

    def ensure_var_dir(self) -> Path:
        """Create the local state directory if it does not exist yet."""
        self.var_dir.mkdir(parents=True, exist_ok=True)
        return self.var_dir

    def effective_secret_key(self) -> str:
        """The configured secret, or in development one generated once into var/.

        Read once per Settings object: it is asked for per request and per message.
        """
        if self.secret_key:
            return self.secret_key
        if self._generated_secret is None:
            self._generated_secret = persisted_token(
                self.ensure_var_dir() / "secret_key", lambda: secrets.token_urlsafe(48)
            )
        return self._generated_secret

    # Content safety (app/safety): spamd and clamd, the outbound preflight, domain checks.
    spamd: str = Field(
        "",
        description="host:port (or a socket path) of SpamAssassin's spamd, used by the "
        "content preflight; empty = Warta's own rules only.",
    )
    spamd_timeout: float = Field(15, gt=0, description="Seconds spamd has to score a message.")
    preflight_max_score: float = Field(
        5.0,
        description="A campaign whose preflight score (spamd's plus Warta's rules) is above "
        "this is not scheduled unless the request says `force`.",
    )
    preflight_physical_address: str = Field(
        "",
        description="The postal address every campaign must show (CAN-SPAM); when set, a "
        "body without it is a preflight finding. Empty = not required.",
    )
    preflight_domain_checks: bool = Field(
        False,
        description="Run the sender domain checks (SPF, DKIM, DMARC, MX, PTR) in the "
        "schedule preflight; each failing authentication item then adds points.",
    )
    sending_ips: str = Field(
        "",
        description="Comma-separated addresses Warta's mail leaves from, checked against SPF "
        "and PTR; empty = the addresses WARTA_MTA_HOSTNAME resolves to.",
    )
    clamd: str = Field(
        "",
        description="host:port or a socket path of ClamAV's clamd; transactional attachments "
        "are scanned when set.",
    )
    clamd_timeout: float = Field(30, gt=0, description="Seconds clamd has to scan a message.")
    clamd_fail_open: bool = Field(
        False,
        description="Accept mail when clamd cannot answer (default: refuse it with 503).",
    )

    # Inbound forward retries and quarantine retention (docs/inbound.md)
    inbound_forward_attempts: int = Field(
        6,
        ge=1,
        le=20,
        description="Tries to forward a clean reply to its campaign's address before giving "
        "up (the reply stays stored either way).",
    )
    inbound_forward_retry: float = Field(
        60.0,
        gt=0,
        description="Seconds before the first retry of a failed forward; each later retry "
        "waits twice as long (60 s and 6 tries: the last about half an hour after the first).",
    )
    retention_inbound_quarantine: int = Field(
        30,
        ge=0,
        description="Days a quarantined (spam or infected) inbound message is kept; 0 = forever.",
    )

    @field_validator("sending_ips")
    @classmethod
    def _check_sending_ips(cls, value: str) -> str:
        for item in filter(None, (part.strip() for part in value.split(","))):
            try:
                ipaddress.ip_address(item)
            except ValueError:
                raise ValueError(f"{item!r} in WARTA_SENDING_IPS is not an IP address") from None
        return value

    @field_validator("spamd", "clamd")
    @classmethod
    def _check_daemon_address(cls, value: str) -> str:
        host_port = r"(\[[0-9A-Fa-f:.]+\]|[^:\[\]/\s]+):\d{1,5}"
        if value and not (value.startswith("/") or re.fullmatch(host_port, value)):
            raise ValueError(f"{value!r} is neither host:port nor an absolute socket path")
        return value


def parse_dns_servers(text: str) -> list[tuple[str, int]]:
    """`ip[:port],…` (IPv6 as `[ip]:port`) as (ip, port) pairs; empty means the system's."""
    servers = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        if item.startswith("["):
            host, closed, rest = item[1:].partition("]")
            if not closed or (rest and not rest.startswith(":")):
                raise ValueError(f"cannot read DNS server {item!r} as [ip]:port")
            port_text = rest[1:]
        elif item.count(":") == 1:
            host, _, port_text = item.partition(":")
        else:
            host, port_text = item, ""
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"DNS server {item!r} is not an IP address") from None
        if port_text and not (port_text.isdigit() and 1 <= int(port_text) <= 65535):
            raise ValueError(f"DNS server {item!r} has no valid port")
        servers.append((host, int(port_text or DNS_PORT)))
    return servers


def persisted_token(path: Path, generate: Callable[[], str]) -> str:
    """The token in `path`, created once (mode 0600) with `generate` if the file is missing."""
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(generate())
    return path.read_text().strip()


@lru_cache
def get_settings() -> Settings:
    """The process's settings, built on first use (never at import time)."""
    return Settings()
