"""Open and click tracking, pure: link rewriting at compile time and machine/scanner verdicts.

Only static `http(s)` links of `<a href>` in the HTML part are tracked. A link whose URL
holds template code differs per recipient, so it cannot be one of the campaign's stored
URLs and is left alone: the redirect only ever leads to a URL stored when the campaign
started (no open redirect). The rewritten source refers to `warta_links[n]`, which holds
each recipient's signed click URLs, or the original URLs when a render is not tracked
(a preview, the web archive).
"""

from __future__ import annotations

import html
import ipaddress
import re
from dataclasses import dataclass

LINKS_VAR = "warta_links"
PIXEL_VAR = "warta_open_pixel"

# <a ... href="https://…"> with a static URL: no template delimiters, quotes or spaces.
_ANCHOR_HREF = re.compile(
    r"""(<a\b[^<>]*?\shref\s*=\s*)(["'])(https?://[^"'{}<>\s]+)\2""", re.IGNORECASE
)
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class TrackedSource:
    """The HTML source with its static links replaced; `urls[n]` is link n, unescaped."""

    html: str
    urls: tuple[str, ...]
    raw: tuple[str, ...]
    """Link n as written in the source (HTML-escaped), for untracked renders."""


def rewrite(source: str) -> TrackedSource:
    """Replace each static link with a reference to `warta_links[n]` and add the open pixel.

    The same URL written twice is one link (one position), as readers of stats expect.
    """
    positions: dict[str, int] = {}

    def replace(match: re.Match[str]) -> str:
        raw = match.group(3)
        position = positions.setdefault(raw, len(positions))
        quote = match.group(2)
        return f"{match.group(1)}{quote}{{{{ {LINKS_VAR}[{position}] }}}}{quote}"

    rewritten = _ANCHOR_HREF.sub(replace, source)
    pixel = f"{{{{ {PIXEL_VAR} }}}}"
    ends = list(_BODY_END.finditer(rewritten))
    if ends:
        cut = ends[-1].start()
        rewritten = rewritten[:cut] + pixel + rewritten[cut:]
    else:
        rewritten += pixel
    raw_urls = tuple(positions)
    return TrackedSource(rewritten, tuple(html.unescape(raw) for raw in raw_urls), raw_urls)


def pixel_tag(url: str) -> str:
    """The invisible image whose fetch is an open."""
    return (
        f'<img src="{html.escape(url)}" width="1" height="1" alt="" '
        'style="display:block;border:0;width:1px;height:1px">'
    )


# --- machine opens and scanner clicks ------------------------------------------------------

# Apple Mail Privacy Protection fetches every image through Apple's relays (17.0.0.0/8) when
# the message arrives, read or not. Google and Yahoo proxy images too; Google fetches on a
# real open but hides who opened, so both are counted apart from direct opens.
_APPLE_NETWORKS = (ipaddress.ip_network("17.0.0.0/8"),)
_PROXY_AGENTS = (
    ("googleimageproxy", "google-image-proxy"),
    ("yahoomailproxy", "yahoo-image-proxy"),
    ("ggpht.com", "google-image-proxy"),
)
# Link scanners of mail security gateways, and generic tools that are never a person.
_SCANNER_AGENTS = (
    "barracuda",
    "proofpoint",
    "mimecast",
    "safelinks",
    "symantec",
    "trendmicro",
    "fortiguard",
    "sophos",
    "bot",
    "crawler",
    "spider",
    "scanner",
    "python-requests",
    "python-httpx",
    "curl/",
    "wget/",
    "go-http-client",
    "headlesschrome",
)
SCANNER_WINDOW = 10.0
"""Seconds after the message left within which a click is a gateway's scan, not a reader."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a fetch came from a machine, and the evidence."""

    machine: bool
    reason: str = ""


def classify_open(user_agent: str, client_ip: str) -> Verdict:
    """An open pixel fetch: Apple MPP, an image proxy, or (presumably) a person."""
    agent = user_agent.lower()
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        address = None
    if address is not None and any(address in net for net in _APPLE_NETWORKS):
        return Verdict(True, "apple-mpp")
    for needle, reason in _PROXY_AGENTS:
        if needle in agent:
            return Verdict(True, reason)
    if agent.strip() in ("", "mozilla/5.0"):
        # MPP's bare agent, seen from relays outside 17/8 too.
        return Verdict(True, "bare-user-agent")
    return Verdict(False)


def classify_click(method: str, user_agent: str, seconds_after_send: float | None) -> Verdict:
    """A click: HEAD requests, known scanner agents and instant clicks are machines."""
    if method.upper() == "HEAD":
        return Verdict(True, "head-request")
    agent = user_agent.lower()
    if not agent.strip():
        return Verdict(True, "no-user-agent")
    for needle in _SCANNER_AGENTS:
        if needle in agent:
            return Verdict(True, f"scanner-agent:{needle.strip('/')}")
    if seconds_after_send is not None and 0 <= seconds_after_send < SCANNER_WINDOW:
        return Verdict(True, "within-seconds-of-delivery")
    return Verdict(False)
