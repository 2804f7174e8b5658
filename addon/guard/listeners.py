"""Where this proxy and its mitmweb listen, and whether a destination reaches one of them.

A destination is judged by the addresses it resolves to, the way the proxy's own connection will
resolve it (`loop.getaddrinfo`, as `asyncio.open_connection` does), never by its spelling: the
resolver reads `127.1`, `0`, `0177.0.0.1`, `2130706433`, `0x7f000001` and a hosts-file name as
127.0.0.1, where `ipaddress` rejects them or cannot know. Then:

- a listener on a loopback address is reached at every loopback address (127.0.0.0/8, ::1) and
  at the unspecified ones (0.0.0.0, ::), which connect to this machine;
- a listener on a wildcard address (0.0.0.0, ::) is reached at every address of this machine too,
  told by whether a socket can bind to it (current interfaces, no list to go stale);
- a listener on one other address is reached at that address;
- an IPv4-mapped IPv6 address (::ffff:127.0.0.1) counts as the IPv4 address it carries (Python
  3.11's `ipaddress` calls it neither loopback nor unspecified).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def plain(ip: IPAddress) -> IPAddress:
    """The address a connection to `ip` goes to: the IPv4 address inside a v4-mapped one."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _unscoped(ip: IPAddress) -> IPAddress:
    """`ip` without its IPv6 zone (`fe80::1%eth0`), which takes part in comparisons."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id is not None:
        return ipaddress.IPv6Address(int(ip))
    return ip


def _this_machine(ip: IPAddress) -> bool:
    """Whether `ip` is one of this machine's own addresses: a socket can bind to it."""
    if ip.is_loopback or ip.is_unspecified:
        return True
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((str(ip), 0))
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class Listeners:
    """The ports the proxy and mitmweb listen on, by the kind of address they listen at."""

    ports: frozenset[int]
    on_loopback: frozenset[int]  # ports listened on at a loopback address
    everywhere: frozenset[int]  # ports listened on at a wildcard address
    exact: frozenset[tuple[IPAddress, int]]  # (address, port) listened on at one other address

    @classmethod
    def of(cls, addresses: Iterable[tuple[str, int]]) -> Listeners:
        """From (host, port) pairs as sockets report them (`""` means every address)."""
        on_loopback, everywhere, exact = set(), set(), set()
        for host, port in addresses:
            ip = _unscoped(plain(ipaddress.ip_address(host or "0.0.0.0")))
            if ip.is_unspecified:
                everywhere.add(port)
            elif ip.is_loopback:
                on_loopback.add(port)
            else:
                exact.add((ip, port))
        ports = frozenset(on_loopback | everywhere | {port for _, port in exact})
        return cls(ports, frozenset(on_loopback), frozenset(everywhere), frozenset(exact))

    def reached_by(self, ip: IPAddress, port: int) -> bool:
        """Whether a connection to ip:port would reach one of these listeners."""
        if port not in self.ports:
            return False
        ip = plain(ip)
        if (_unscoped(ip), port) in self.exact:
            return True
        if port in self.on_loopback and (ip.is_loopback or ip.is_unspecified):
            return True
        return port in self.everywhere and _this_machine(ip)


async def resolve(host: str, port: int) -> list[IPAddress]:
    """The addresses a TCP connection to host:port would try, resolved off the event loop; none
    when the name does not resolve (the connection would fail the same way)."""
    host = host.strip("[]")
    try:
        return [ipaddress.ip_address(host)]  # an IP literal in its standard spelling
    except ValueError:
        pass
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return []
    return [ipaddress.ip_address(info[4][0]) for info in infos]


async def bound_addresses(host: str, port: int) -> list[tuple[str, int]]:
    """Where a server bound to host:port listens, as tornado binds mitmweb's `web_host`: an IP
    literal or "" (every address) as it is, a name as `getaddrinfo(..., AI_PASSIVE)` resolves it."""
    try:
        ipaddress.ip_address(host or "0.0.0.0")
        return [(host, port)]
    except ValueError:
        pass
    try:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError):
        return []
    return [(info[4][0], port) for info in infos]
