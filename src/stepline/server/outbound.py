"""The one policy for requests the server makes to URLs that did not come from the operator's own flags.

Apps registered through ``/fn/register`` or added through the API and the dashboard (their sync PUTs and their
function calls), and the later callers of this module (gateway steps, alert webhooks), reach only what the policy
lets them:

- ``http`` and ``https`` only, with the scheme written out (``example.com/x`` is refused, not guessed);
- link-local and cloud-metadata addresses (``169.254.0.0/16``, ``fe80::/10``, ``fd00:ec2::254``,
  ``100.100.100.200``), unspecified, multicast and broadcast addresses: always refused;
- with ``deny_private`` (``--outbound-deny-private`` / ``STEPLINE_OUTBOUND_DENY_PRIVATE``; off by default, since
  self-hosted apps live on private networks) every address that is not globally routable (private ranges,
  loopback, carrier-grade NAT, unique-local IPv6) is refused too, except hosts and networks named by
  ``allow`` (``--outbound-allow HOST_OR_CIDR``, repeatable).

The check is made on the addresses a name resolves to, at the moment of connecting (``PolicyResolver`` filters
what the resolver returns, so a name that resolves to a refused address cannot be reached, and a DNS answer that
changes between a check and the connection does not matter), and on every redirect (``OutboundClient`` follows
redirects itself and checks each location). Hosts the operator named (``-u`` URLs) are trusted as given.

Tests inject a resolver (``Lookup``) so no name is ever looked up and no connection leaves loopback.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import urllib.request
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

__all__ = [
    "Lookup",
    "OutboundAnswer",
    "OutboundClient",
    "OutboundFailed",
    "OutboundPolicy",
    "OutboundRefused",
    "OutboundTooLarge",
    "PolicyResolver",
    "excerpt",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# host -> the addresses it resolves to (tests pass a dict-backed one; the default asks the system resolver)
Lookup = Callable[[str], Awaitable[list[str]]]

ALWAYS_REFUSED: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in ("169.254.0.0/16", "fe80::/10", "fd00:ec2::254/128", "100.100.100.200/32", "0.0.0.0/8", "::/128",
              "224.0.0.0/4", "ff00::/8", "255.255.255.255/32")
)  # fmt: skip
MAX_REDIRECTS = 5
MAX_URL_CHARS = 2048  # URLs are stored and indexed (an app's URL is its key)


class OutboundRefused(Exception):
    """The policy refuses this URL or every address its host resolves to; the message says why."""


class OutboundFailed(Exception):
    """The request got no HTTP answer (refused, reset, not HTTP, DNS failure); the message names the cause."""


class OutboundTooLarge(Exception):
    """The answer was larger than the caller's limit (declared or streamed): reading stopped there."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the answer is larger than {limit} bytes")
        self.limit = limit


def _parse_allow(entries: Iterable[str]) -> tuple[frozenset[str], tuple[IPNetwork, ...]]:
    hosts: set[str] = set()
    nets: list[IPNetwork] = []
    for raw in entries:
        entry = raw.strip()
        if not entry:
            continue
        try:
            nets.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            hosts.add(entry.lower().rstrip("."))
    return frozenset(hosts), tuple(nets)


_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _address(text: str) -> IPAddress | None:
    """The address to judge: an IPv4 address carried in IPv6 (mapped, NAT64, 6to4, IPv4-compatible) is judged as
    that IPv4 address, since that is where the packets end up."""
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip.sixtofour is not None:
            return ip.sixtofour
        if ip in _NAT64 or (int(ip) >> 32 == 0 and int(ip) > 1):  # NAT64 well-known prefix, IPv4-compatible
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


@dataclass(frozen=True)
class OutboundPolicy:
    """Which targets outbound requests may reach (see the module docstring)."""

    deny_private: bool = False
    allow: tuple[str, ...] = ()  # hosts or CIDRs exempt from deny_private (never from the always-refused ranges)
    trusted_hosts: frozenset[str] = frozenset()  # hosts of the operator's own -u URLs: not checked
    _allow_hosts: frozenset[str] = field(init=False, repr=False, compare=False)
    _allow_nets: tuple[IPNetwork, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        hosts, nets = _parse_allow(self.allow)
        object.__setattr__(self, "_allow_hosts", hosts)
        object.__setattr__(self, "_allow_nets", nets)
        object.__setattr__(self, "trusted_hosts", frozenset(h.lower().rstrip(".") for h in self.trusted_hosts))

    def trusts(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.trusted_hosts

    def address_refusal(self, host: str, address: str) -> str | None:
        """Why ``address`` (what ``host`` resolved to) may not be reached, or None when it may."""
        ip = _address(address)
        if ip is None:
            return f"{address!r} is not an IP address"
        for net in ALWAYS_REFUSED:
            if ip.version == net.version and ip in net:
                return f"{host} resolves to {ip}, a link-local, metadata or non-unicast address (always refused)"
        if not self.deny_private or ip.is_global:
            return None
        if host.lower().rstrip(".") in self._allow_hosts:
            return None
        if any(ip.version == net.version and ip in net for net in self._allow_nets):
            return None
        return (f"{host} resolves to {ip}, a private or loopback address (refused by --outbound-deny-private; "
                "allow it with --outbound-allow)")  # fmt: skip

    def check_url(self, url: str) -> str:
        """The URL's host after checking its form and, for an IP literal, its address; raises OutboundRefused."""
        if len(url) > MAX_URL_CHARS:
            raise OutboundRefused(f"the URL is {len(url):,} characters long; the limit is {MAX_URL_CHARS:,}")
        try:
            parts = urlsplit(url.strip())
            host = parts.hostname
            parts.port  # noqa: B018 - raises ValueError for a port out of range
        except ValueError as exc:
            raise OutboundRefused(f"{url!r:.200} is not a valid URL: {exc}") from None
        if parts.scheme not in ("http", "https"):
            if not parts.scheme or "://" not in url:
                raise OutboundRefused(f"{url!r:.200} has no scheme: write http:// or https://")
            raise OutboundRefused(f"{url!r:.200}: only http and https URLs are allowed, not {parts.scheme}")
        if not host:
            raise OutboundRefused(f"{url!r:.200} has no host")
        if self.trusts(host):
            return host
        if _address(host) is not None:
            reason = self.address_refusal(host, host)
            if reason is not None:
                raise OutboundRefused(reason)
        return host


async def system_lookup(host: str) -> list[str]:
    """The addresses the system resolver gives for ``host`` (IPv4 and IPv6)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class PolicyResolver(AbstractResolver):
    """aiohttp's resolver with the policy applied: only allowed addresses come back, and a host whose every
    address is refused raises OutboundRefused (an OSError for aiohttp, which reports it as a DNS error; the
    clients below unwrap it)."""

    def __init__(self, policy: OutboundPolicy, lookup: Lookup | None = None) -> None:
        self.policy = policy
        self.lookup = lookup or system_lookup

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        try:
            addresses = await self.lookup(host)
        except OSError:
            raise
        except Exception as exc:  # a test lookup's KeyError, say: the name does not resolve
            raise OSError(f"cannot resolve {host}: {exc}") from exc
        results: list[ResolveResult] = []
        refusals: list[str] = []
        for address in addresses:
            reason = None if self.policy.trusts(host) else self.policy.address_refusal(host, address)
            if reason is not None:
                refusals.append(reason)
                continue
            ip = _address(address)
            if ip is None:
                continue
            fam = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
            if family not in (socket.AF_UNSPEC, 0) and family != fam:
                continue
            results.append(ResolveResult(hostname=host, host=str(ip), port=port, family=fam, proto=0,
                                         flags=socket.AI_NUMERICHOST))  # fmt: skip
        if not results:
            if refusals:
                raise _Refused(refusals[0])
            raise OSError(f"{host} did not resolve to a usable address")
        return results

    async def close(self) -> None:
        return None


class _Refused(OSError):
    """OutboundRefused carried through aiohttp's connector, which only lets OSErrors out of a resolver."""


def unwrap_refusal(exc: BaseException) -> OutboundRefused | None:
    """The policy's refusal behind an aiohttp connection error, if that is what it was."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, _Refused):
            return OutboundRefused(str(seen))
        if isinstance(seen, aiohttp.ClientConnectorError) and isinstance(seen.os_error, _Refused):
            return OutboundRefused(str(seen.os_error))
        seen = seen.__cause__ or seen.__context__
    return None


def excerpt(body: bytes | str, limit: int = 240) -> str:
    """A short, printable excerpt of an answer for errors shown to users: control characters and markup-breaking
    whitespace collapsed, cut at ``limit`` characters with an ellipsis."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    cleaned = "".join(ch if ch.isprintable() else " " for ch in text[: limit * 4])
    cleaned = " ".join(cleaned.split())
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"


def proxy_for(url: str, cache: dict[str, str | None]) -> str | None:
    """The HTTP(S)_PROXY for ``url`` (None when NO_PROXY matches), looked up once per scheme and host."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    origin = f"{parts.scheme}://{parts.netloc}"
    if origin not in cache:
        proxy = urllib.request.getproxies().get(parts.scheme)
        if proxy is not None and urllib.request.proxy_bypass(parts.hostname or ""):
            proxy = None
        cache[origin] = proxy
    return cache[origin]


@dataclass(frozen=True)
class OutboundAnswer:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes
    url: str  # after redirects


class OutboundClient:
    """One aiohttp session whose connections go through the policy, opened on first use inside the running loop
    and closed by ``close``. ``request`` makes one request (following up to ``max_redirects`` redirects, each
    checked) under a whole-request deadline and a limit on the answer's size."""

    def __init__(self, policy: OutboundPolicy | None = None, *, lookup: Lookup | None = None,
                 connect_timeout: float = 10.0) -> None:  # fmt: skip
        self.policy = policy or OutboundPolicy()
        self.lookup = lookup
        self.connect_timeout = connect_timeout
        self._session: aiohttp.ClientSession | None = None
        self._proxies: dict[str, str | None] = {}

    def connector(self, **options: Any) -> aiohttp.TCPConnector:
        """A connector applying the policy, for other aiohttp sessions of the server (function calls)."""
        return aiohttp.TCPConnector(resolver=PolicyResolver(self.policy, self.lookup), **options)

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=self.connector(limit=100, keepalive_timeout=4.0),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout),
                trust_env=False,
            )
        return self._session

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        timeout: float = 30.0,
        max_bytes: int = 4 * 1024 * 1024,
        max_redirects: int = MAX_REDIRECTS,
        on_chunk: Callable[[bytes], None] | None = None,
    ) -> OutboundAnswer:
        """Raises OutboundRefused (policy), OutboundTooLarge (answer over ``max_bytes``), TimeoutError (past
        ``timeout`` seconds in all) or OutboundFailed (no HTTP answer). ``on_chunk`` sees the body as it arrives."""
        async with asyncio.timeout(timeout):
            current_method, current_url, current_body = method.upper(), url, body
            current_headers = dict(headers or {})
            for _ in range(max_redirects + 1):
                host = self.policy.check_url(current_url)
                answer = await self._one(current_method, current_url, current_headers, current_body, max_bytes,
                                         on_chunk)  # fmt: skip
                location = answer.headers.get("location")
                if answer.status not in (301, 302, 303, 307, 308) or not location:
                    return answer
                next_url = urljoin(current_url, location)
                next_host = urlsplit(next_url).hostname or ""
                if next_host.lower() != host.lower():
                    current_headers.pop("Authorization", None)
                    current_headers.pop("authorization", None)
                if answer.status == 303 or (answer.status in (301, 302) and current_method not in ("GET", "HEAD")):
                    current_method, current_body = "GET", None
                current_url = next_url
            raise OutboundFailed(f"more than {max_redirects} redirects (last to {current_url!r:.200})")

    async def _one(self, method: str, url: str, headers: dict[str, str], body: bytes | None, limit: int,
                   on_chunk: Callable[[bytes], None] | None) -> OutboundAnswer:  # fmt: skip
        try:
            async with self._open().request(method, url, data=body, headers=headers, allow_redirects=False,
                                            proxy=proxy_for(url, self._proxies)) as resp:  # fmt: skip
                declared = resp.content_length
                if declared is not None and declared > limit:
                    raise OutboundTooLarge(limit)
                content = bytearray()
                async for chunk in resp.content.iter_any():
                    content += chunk
                    if len(content) > limit:
                        raise OutboundTooLarge(limit)
                    if on_chunk is not None:
                        on_chunk(chunk)
                return OutboundAnswer(resp.status, {k.lower(): v for k, v in resp.headers.items()}, bytes(content),
                                      str(resp.url))  # fmt: skip
        except (TimeoutError, OutboundTooLarge):
            raise
        except (aiohttp.ClientError, ValueError, OSError) as exc:
            refusal = unwrap_refusal(exc)
            if refusal is not None:
                raise refusal from None
            raise OutboundFailed(f"{type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
