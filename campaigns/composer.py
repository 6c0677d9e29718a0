"""The message for one ledger row: rendered content, identity headers and envelope sender."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.mail import identity
from app.mail.identity import Kind, SiteIdentity
from app.mail.mime import Address, OutgoingMessage, build_message
from app.mail.rendering import CompiledCampaign, Recipient, SubscriberView, render
from app.mail.reply_address import ReplyTarget, reply_address


@dataclass(frozen=True, slots=True)
class Addressee:
    """A recipient as loaded at send time."""

    subscriber_id: int
    email: str
    name: str
    attributes: dict[str, Any]


# Token purposes: the pages that read a link check the purpose its composer signed.
UNSUBSCRIBE_PURPOSE = "unsubscribe"
PREFERENCES_PURPOSE = "preferences"
VIEW_PURPOSE = "view"

# context name, URL path, token purpose
LINKS = (
    ("unsubscribe_url", "u", UNSUBSCRIBE_PURPOSE),
    ("preferences_url", "p", PREFERENCES_PURPOSE),
    ("view_in_browser_url", "v", VIEW_PURPOSE),
)


def link_tokens(site: SiteIdentity, subscriber_id: int, campaign_id: int) -> dict[str, str]:
    """Signed per-recipient tokens, by purpose."""
    return {
        purpose: identity.link_token(site.secret, purpose, subscriber_id, campaign_id)
        for _, _, purpose in LINKS
    }


def links(
    site: SiteIdentity, subscriber_id: int, campaign_id: int, tokens: dict[str, str] | None = None
) -> dict[str, str]:
    """Signed per-recipient links: unsubscribe, preferences, view in browser."""
    tokens = tokens or link_tokens(site, subscriber_id, campaign_id)
    return {name: f"{site.public_url}/{path}/{tokens[purpose]}" for name, path, purpose in LINKS}


CLICK_PURPOSE = "click"
OPEN_PURPOSE = "open"


def click_urls(
    site: SiteIdentity, subscriber_id: int, campaign_id: int, count: int
) -> tuple[str, ...]:
    """Per-recipient click redirects `/c/<token>`; each token signs the link's position."""
    base = f"{site.public_url}/c/"
    tokens = identity.tracking_tokens(
        site.secret, CLICK_PURPOSE, (subscriber_id, campaign_id), count
    )
    return tuple(base + token for token in tokens)


def open_url(site: SiteIdentity, subscriber_id: int, campaign_id: int) -> str:
    """The per-recipient open pixel `/o/<token>`."""
    token = identity.tracking_token(site.secret, OPEN_PURPOSE, subscriber_id, campaign_id)
    return f"{site.public_url}/o/{token}"


@dataclass(frozen=True, slots=True)
class PreparedCampaign:
    """A campaign compiled once, ready to build every recipient's message."""

    campaign_id: int
    compiled: CompiledCampaign
    sender: Address
    reply_to: Address | None
    list_name: str | None
    list_id: str
    rate: float
    site: SiteIdentity
    track_replies: bool = False

    def reply_to_for(self, subscriber_id: int) -> Address | None:
        """The campaign's Reply-To, or with `track_replies` a signed reply address."""
        if not self.track_replies:
            return self.reply_to
        target = ReplyTarget(campaign_id=self.campaign_id, subscriber_id=subscriber_id)
        domain = self.site.inbound_domain or self.site.bounce_domain
        name = (self.reply_to or self.sender).name
        return Address(email=reply_address(self.site.secret, domain, target), name=name)

    def envelope_from(self, send_id: int) -> str:
        """The VERP return path naming the ledger row."""
        return identity.verp_address(
            self.site.secret, send_id, self.site.bounce_domain, Kind.CAMPAIGN
        )

    def recipient(
        self,
        subscriber_id: int,
        view: SubscriberView,
        urls: dict[str, str] | None = None,
        *,
        track: bool = False,
    ) -> Recipient:
        """What the templates see of one subscriber: the view, the list, the signed links,
        and with `track` (if the campaign tracks) the click and open URLs."""
        urls = urls or links(self.site, subscriber_id, self.campaign_id)
        tracked = self.compiled.links if track else None
        return Recipient(
            subscriber=view,
            list_name=self.list_name,
            unsubscribe_url=urls["unsubscribe_url"],
            preferences_url=urls["preferences_url"],
            view_in_browser_url=urls["view_in_browser_url"],
            click_urls=None
            if tracked is None
            else click_urls(self.site, subscriber_id, self.campaign_id, len(tracked)),
            open_url=""
            if tracked is None
            else open_url(self.site, subscriber_id, self.campaign_id),
        )

    def build(self, send_id: int, addressee: Addressee) -> bytes:
        """Render and assemble the message for one ledger row."""
        tokens = link_tokens(self.site, addressee.subscriber_id, self.campaign_id)
        urls = links(self.site, addressee.subscriber_id, self.campaign_id, tokens)
        view = SubscriberView.of(addressee.email, addressee.name, addressee.attributes)
        recipient = self.recipient(addressee.subscriber_id, view, urls, track=True)
        rendered = render(self.compiled, recipient)
        return build_message(
            OutgoingMessage(
                sender=self.sender,
                recipient=Address(email=addressee.email, name=addressee.name),
                subject=rendered.subject,
                message_id=identity.message_id(
                    self.site.secret, send_id, self.site.hostname, Kind.CAMPAIGN
                ),
                text=rendered.text,
                html=rendered.html,
                reply_to=self.reply_to_for(addressee.subscriber_id),
                unsubscribe_url=urls["unsubscribe_url"],
                unsubscribe_mailto=f"unsubscribe+{tokens['unsubscribe']}@{self.site.bounce_domain}",
                one_click_unsubscribe=True,
                list_id=self.list_id,
                list_name=self.list_name or "",
                feedback_id=f"{self.campaign_id}:campaign:warta",
            )
        )
