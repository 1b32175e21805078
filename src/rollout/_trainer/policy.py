"""Which trainers the server may connect to (docs/PROTOCOL.md §8: no SSRF).

Any caller of ``POST /v1/rollout/init`` chooses a ``server_url`` the server then POSTs to,
with a Bearer header and a body of the caller's making. :class:`TrainerPolicy` bounds that
twice:

- at init, on the URL (:meth:`TrainerPolicy.refusal`), so a refused trainer is a ``422``;
- at connect time, on every address the host name resolved to (:func:`connect`, which the
  server's connection pool opens connections with), so a name that resolves (or is
  re-bound) to a refused address is refused too. The connection is made to the address that
  was checked, never to the name again.

Without an allow-list every address is allowed but the *always refused* ones: link-local
(which holds the cloud metadata services at 169.254.169.254 and fd00:ec2::254), other
metadata addresses, unspecified, multicast and broadcast addresses. With an allow-list
(``--allow-trainer``), only its entries are allowed:

- ``HOST`` or ``HOST:PORT`` (``[V6]:PORT`` for IPv6): that host name or address, on any port
  or on that one; a host name entry allows whatever the name resolves to, except the always
  refused addresses;
- ``CIDR`` (``10.0.0.0/8``, ``127.0.0.1``, ``::1/128``): those addresses, on any port, even
  if always refused otherwise (an explicit entry wins).
"""

from __future__ import annotations

import ipaddress
import math
import socket
from collections.abc import Iterable

import attrs
import httpx
import trio

from ..errors import TrainerNotAllowedError

__all__ = ["TrainerPolicy", "connect", "parse_allow_entry"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Refused unless an allow-list entry names them (cloud metadata lives here).
ALWAYS_REFUSED: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(net)
    for net in (
        "0.0.0.0/8",  # "this network": 0.0.0.0 reaches the local host on Linux
        "169.254.0.0/16",  # link-local, cloud metadata (169.254.169.254)
        "100.100.100.200/32",  # Alibaba Cloud metadata
        "224.0.0.0/4",  # multicast
        "255.255.255.255/32",  # broadcast
        "::/128",  # unspecified
        "fe80::/10",  # link-local
        "fd00:ec2::254/128",  # AWS metadata over IPv6
        "ff00::/8",  # multicast
    )
)


@attrs.frozen
class HostEntry:
    """An allow-list entry naming a host (lower case), and optionally a port."""

    host: str
    port: int | None = None


def parse_allow_entry(text: str) -> HostEntry | IPNetwork:
    """Parse one ``--allow-trainer`` value: ``HOST``, ``HOST:PORT``, ``[V6]:PORT`` or a CIDR.

    Raises :class:`ValueError` with a one-line reason.
    """
    value = text.strip()
    if not value:
        raise ValueError("an empty trainer allow-list entry")
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        pass
    host, port = value, None
    if value.startswith("["):
        inside, _, rest = value[1:].partition("]")
        host = inside
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"trainer allow-list entry {text!r}: expected [V6]:PORT")
            port = _port(rest[1:], text)
    elif value.count(":") == 1:
        host, _, port_text = value.partition(":")
        port = _port(port_text, text)
    if not host or any(c.isspace() or c in "/@?#" for c in host):
        raise ValueError(f"trainer allow-list entry {text!r}: expected HOST[:PORT] or a CIDR")
    return HostEntry(host.lower().rstrip("."), port)


def _port(text: str, entry: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"trainer allow-list entry {entry!r}: port must be 1-65535")
    return int(text)


def _address(host: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@attrs.frozen
class TrainerPolicy:
    """The allow-list; empty allows everything but :data:`ALWAYS_REFUSED`."""

    hosts: tuple[HostEntry, ...] = ()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_entries(cls, entries: Iterable[str]) -> TrainerPolicy:
        """Raises :class:`ValueError` for an entry :func:`parse_allow_entry` refuses."""
        hosts: list[HostEntry] = []
        networks: list[IPNetwork] = []
        for entry in entries:
            parsed = parse_allow_entry(entry)
            (hosts if isinstance(parsed, HostEntry) else networks).append(parsed)  # type: ignore[arg-type]
        return cls(tuple(hosts), tuple(networks))

    @property
    def restricted(self) -> bool:
        return bool(self.hosts or self.networks)

    def _named(self, host: str, port: int) -> bool:
        name = host.lower().rstrip(".")
        return any(e.host == name and e.port in (None, port) for e in self.hosts)

    def _listed(self, address: IPAddress) -> bool:
        return any(address in net for net in self.networks if net.version == address.version)

    def address_refusal(self, host: str, port: int, address: IPAddress) -> str | None:
        """Why connecting to ``address`` (which ``host`` resolved to) is refused, or None."""
        if self._listed(address):
            return None
        if any(address in net for net in ALWAYS_REFUSED if net.version == address.version):
            return f"address {address} is link-local, metadata or otherwise not a trainer's"
        if not self.restricted or self._named(host, port) or self._named(str(address), port):
            return None
        return f"address {address} is not in the trainer allow-list"

    def refusal(self, host: str, port: int) -> str | None:
        """Why a trainer at ``host:port`` (from ``server_url``) is refused at init, or None.

        A host name not named by the allow-list passes here when the list has networks:
        its addresses are checked when connecting.
        """
        address = _address(host)
        if address is not None:
            return self.address_refusal(host, port, address)
        if not self.restricted or self._named(host, port):
            return None
        name = host.lower().rstrip(".")
        if any(entry.host == name for entry in self.hosts):
            return f"port {port} of host {host!r} is not in the trainer allow-list"
        if self.networks:
            return None
        return f"host {host!r} is not in the trainer allow-list"


async def connect(
    policy: TrainerPolicy,
    host: str,
    port: int,
    timeout: float | None,  # noqa: ASYNC109 - the connection pool's interface
) -> trio.SocketStream:
    """A TCP connection to ``host:port`` on an address ``policy`` allows, within
    ``timeout`` seconds (None: no limit).

    Resolves the host itself, checks every address, and connects to the allowed ones in
    turn: never to the name again, so a name re-bound to a refused address is refused.
    Raises :class:`~rollout.errors.TrainerNotAllowedError` when none is allowed,
    ``httpx.ConnectTimeout`` and ``httpx.ConnectError`` (docs/PROTOCOL.md §8).
    """
    deadline = trio.current_time() + (math.inf if timeout is None else timeout)
    literal = _address(host)
    if literal is not None:
        addresses = [literal]
    else:
        infos = []
        with trio.move_on_at(deadline) as resolving:
            try:
                infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError as exc:
                raise httpx.ConnectError(f"cannot resolve {host}: {exc}") from None
        if resolving.cancelled_caught:
            raise httpx.ConnectTimeout(f"resolving {host} timed out")
        found = (_address(str(info[4][0])) for info in infos)
        addresses = list(dict.fromkeys(a for a in found if a is not None))
    refusals: list[str] = []
    last_error: httpx.TransportError | None = None
    for address in addresses:
        refusal = policy.address_refusal(host, port, address)
        if refusal is not None:
            refusals.append(refusal)
            continue
        with trio.move_on_at(deadline):
            try:
                return await trio.open_tcp_stream(str(address), port)
            except OSError as exc:
                last_error = httpx.ConnectError(f"cannot connect to {host}:{port}: {exc}")
                continue
        last_error = httpx.ConnectTimeout(f"connecting to {host}:{port} timed out")
        break
    if last_error is not None:
        raise last_error
    raise TrainerNotAllowedError(
        f"trainer {host}:{port} refused: {'; '.join(refusals) or 'no address'}"
    )
