"""`warta mta`: spool, listeners and delivery agent assembled from settings."""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.database import create_engine, create_sessionmaker
from app.core.ratelimit import RateLimiter
from app.core.resolver import make_resolver
from app.core.settings import Settings
from app.mail.dkim import KEY_RECHECK_SECONDS, DkimSigner
from app.mail.identity import Kind, parse_verp
from workers.mta.abuse import RATE_PREFIX, ClientGuard, Dnsbl, Rate
from workers.mta.auth import ApiKeyAuthenticator
from workers.mta.auth_throttle import AuthThrottle
from workers.mta.dedupe import SharedMessageIds
from workers.mta.delivery import DeliveryAgent, RetryPolicy
from workers.mta.inbound import InboundStore, ReplyListener
from workers.mta.listener import InboundHandler, Networks, SubmissionHandler, serve
from workers.mta.reporting import Reporter
from workers.mta.routing import Router
from workers.mta.shaping import Shaping
from workers.mta.signing import SigningHelper, wants_signing_helper
from workers.mta.spool import Spool
from workers.mta.status import StatusPublisher, instance_name
from workers.mta.transports import CaptureTransport, SmtpTransport, Transport

logger = logging.getLogger(__name__)


@dataclass
class MtaService:
    """A running MTA instance; `stop()` drains it."""

    spool: Spool
    agent: DeliveryAgent
    servers: list[asyncio.Server]
    reporter: Reporter
    engine: AsyncEngine
    authenticator: ApiKeyAuthenticator
    publisher: StatusPublisher | None = None
    replies: ReplyListener | None = None

    @classmethod
    async def start(
        cls, settings: Settings, reporter: Reporter, replies: ReplyListener | None = None
    ) -> MtaService:
        """Recover the spool, start delivering, then open the listeners.

        `reporter` hears every delivery outcome and every stored inbound message, `replies`
        every stored reply; the process shell (`workers.mta_process.start_mta`) wires them
        to the domains.
        """
        var = settings.ensure_var_dir()
        engine = create_engine(settings)
        spool = Spool(settings.mta_spool_dir, dedupe_window=settings.mta_dedupe_window)
        transports: dict[str, Transport] = {
            "capture": CaptureTransport(var / "maildir"),
            "smtp": SmtpTransport(
                hostname=settings.mta_hostname,
                tls=settings.mta_tls,
                verify=settings.mta_tls_verify,
                relay_auth=(settings.mta_relay_username, settings.mta_relay_password)
                if settings.mta_relay_username
                else None,
            ),
        }
        secret = settings.effective_secret_key()
        sessions = create_sessionmaker(engine)
        signing = SigningHelper() if wants_signing_helper(settings.mta_signing_helper) else None
        agent = DeliveryAgent(
            spool,
            Router.from_settings(settings),
            Shaping.from_files(settings.mta_shaping_rules, settings.mta_throttle_rules),
            transports,
            signer=DkimSigner(settings.dkim_dir, recheck=KEY_RECHECK_SECONDS),
            signing=signing,
            outcomes=reporter.outcome,
            retry=RetryPolicy(
                settings.mta_retry_min, settings.mta_retry_max, settings.mta_queue_lifetime
            ),
            hostname=settings.mta_hostname,
            wants_dsn=lambda sender: bool(sender) and parse_verp(secret, sender) is None,
            urgent=lambda sender: _urgent(secret, sender),
            sweep_interval=settings.mta_sweep_interval,
        )
        agent.start()

        tls = None
        if settings.mta_tls_cert:
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.load_cert_chain(settings.mta_tls_cert, settings.mta_tls_key or None)
        authenticator = ApiKeyAuthenticator(sessions)
        await authenticator.start()
        redis = Redis.from_url(settings.redis_url) if settings.redis_url else None
        throttle = AuthThrottle(
            redis, settings.mta_auth_max_failures, settings.mta_auth_failure_window
        )

        async def listen(
            handler: SubmissionHandler | InboundHandler, address: str, auth: bool
        ) -> asyncio.Server:
            return await serve(
                handler,
                address.strip(),
                hostname=settings.mta_hostname,
                max_message_size=settings.mta_max_message_size,
                idle_timeout=settings.mta_idle_timeout,
                per_client=settings.mta_max_connections_per_client,
                tls_context=tls,
                authenticator=authenticator if auth else None,
                auth_guard=throttle if auth else None,
                reuse_port=settings.mta_reuse_port,
            )

        submission = SubmissionHandler(
            spool,
            Networks.parse(settings.mta_trusted_networks),
            settings.mta_max_recipients,
            shared=SharedMessageIds(redis, settings.mta_dedupe_window, instance_name())
            if redis is not None
            else None,
        )
        store = InboundStore(
            var / "inbound",
            reporter.inbound_stored,
            replies=var / "replies" if replies is not None else None,
            reply_domain=settings.reply_domain(),
            bounce_domain=settings.bounce_domain,
            on_reply=replies.reply_stored if replies is not None else None,
        )
        inbound = InboundHandler(
            settings.bounce_domain,
            store.store,
            settings.mta_max_recipients,
            reply_domain=settings.reply_domain() if replies is not None else "",
            guard=_client_guard(settings, redis),
        )
        servers = [await listen(submission, a, True) for a in settings.mta_submission.split(",")]
        servers.append(await listen(inbound, settings.mta_inbound, False))
        publisher = None
        if redis is not None:
            publisher = StatusPublisher(redis, agent, spool)
            publisher.start()
        return cls(spool, agent, servers, reporter, engine, authenticator, publisher, replies)

    async def stop(self, grace: float = 30.0) -> None:
        """Stop accepting, finish deliveries in flight, keep the rest spooled."""
        for server in self.servers:
            server.close()
        for server in self.servers:
            await server.wait_closed()
        if self.publisher is not None:  # after the listeners: it owns the Redis connection
            await self.publisher.stop()
        await self.agent.drain(grace)
        if self.agent.signing is not None:
            await self.agent.signing.close()
        await self.spool.close()
        await self.reporter.stop()
        if self.replies is not None:
            await self.replies.stop()
        await self.authenticator.stop()
        await self.engine.dispose()


def _client_guard(settings: Settings, redis: Redis | None) -> ClientGuard:
    """The inbound listener's rate limits (shared through Redis) and DNSBL zones."""
    zones = [zone for zone in settings.mta_dnsbl.split(",") if zone.strip()]
    resolver = make_resolver(settings.inbound_resolvers(), settings.inbound_dns_timeout)
    return ClientGuard(
        RateLimiter(redis, prefix=RATE_PREFIX) if redis is not None else None,
        Rate(settings.mta_inbound_connection_rate, settings.mta_inbound_connection_burst),
        Rate(settings.mta_inbound_message_rate, settings.mta_inbound_message_burst),
        Dnsbl(zones, resolver) if zones else None,
    )


def _urgent(secret: str, sender: str) -> bool:
    """Transactional, opt-in and test mail goes before campaign mail (and relayed mail)."""
    parsed = parse_verp(secret, sender) if sender else None
    return parsed is not None and parsed[0] is not Kind.CAMPAIGN
