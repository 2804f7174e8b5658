"""Where the proxy listens, and which resolved destinations reach it (no traffic: resolving and binding only)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import pytest

from addon.guard.listeners import Listeners, bound_addresses, resolve


def this_machines_address() -> str:
    """An address of this machine beyond loopback: the source address a UDP socket would use
    (connecting a UDP socket sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("198.51.100.1", 9))
        except OSError:
            pytest.skip("no route beyond loopback")
        address = s.getsockname()[0]
    if ipaddress.ip_address(address).is_loopback:
        pytest.skip("no address beyond loopback")
    return address


LOOPBACK = [("127.0.0.1", 8080), ("127.0.0.1", 8081)]
WILDCARD = [("0.0.0.0", 8080)]


@pytest.mark.parametrize(
    "listening, destination, port, reached",
    [
        # on loopback: every loopback and unspecified address, in every form
        (LOOPBACK, "127.0.0.1", 8080, True),
        (LOOPBACK, "127.5.6.7", 8081, True),
        (LOOPBACK, "::1", 8080, True),
        (LOOPBACK, "::ffff:127.0.0.1", 8080, True),
        (LOOPBACK, "0.0.0.0", 8081, True),
        (LOOPBACK, "::", 8081, True),
        (LOOPBACK, "::ffff:0.0.0.0", 8081, True),
        (LOOPBACK, "127.0.0.1", 8082, False),  # another port
        (LOOPBACK, "198.51.100.7", 8080, False),  # another machine
        (LOOPBACK, "::7f00:1", 8080, False),  # IPv4-compatible, not mapped: the kernel does not deliver it to 127.0.0.1
        (LOOPBACK, "fe80::1%1", 8080, False),
        # on ::1 alone: all of loopback counts all the same
        ([("::1", 8080)], "127.0.0.1", 8080, True),
        # on a wildcard: loopback, and every address of this machine
        (WILDCARD, "127.0.0.1", 8080, True),
        (WILDCARD, "::ffff:127.0.0.2", 8080, True),
        (WILDCARD, "198.51.100.7", 8080, False),
        ([("", 8080)], "::1", 8080, True),  # "" is every address
        ([("::", 8080)], "0.0.0.0", 8080, True),
        # on one other address: that address only
        ([("198.51.100.7", 8080)], "198.51.100.7", 8080, True),
        ([("198.51.100.7", 8080)], "::ffff:198.51.100.7", 8080, True),
        ([("198.51.100.7", 8080)], "127.0.0.1", 8080, False),
        ([("2001:db8::1", 8080)], "2001:db8::1", 8080, True),
    ],
)
def test_which_destinations_reach_a_listener(listening, destination, port, reached):
    assert Listeners.of(listening).reached_by(ipaddress.ip_address(destination), port) is reached


def test_a_wildcard_listener_is_reached_at_this_machines_own_addresses():
    own = ipaddress.ip_address(this_machines_address())
    assert Listeners.of(WILDCARD).reached_by(own, 8080)
    assert not Listeners.of(LOOPBACK).reached_by(own, 8080)  # loopback only: that address is not listened on


def test_ports_are_every_port_listened_on():
    assert Listeners.of([*LOOPBACK, ("::", 9000), ("198.51.100.7", 9001)]).ports == {8080, 8081, 9000, 9001}
    assert Listeners.of(()).ports == frozenset()


@pytest.mark.parametrize(
    "host, resolved",
    [
        # the resolver's spellings of 127.0.0.1 that `ipaddress` rejects
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("127.000.000.001", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0", "0.0.0.0"),
        ("localhost", "127.0.0.1"),
        # IP literals in their standard spelling, brackets or not
        ("127.0.0.1", "127.0.0.1"),
        ("[::ffff:7f00:1]", "::ffff:127.0.0.1"),
        ("::1", "::1"),
    ],
)
def test_resolve_reads_a_host_as_the_connection_will(host, resolved):
    assert ipaddress.ip_address(resolved) in asyncio.run(resolve(host, 80))


def test_a_host_that_cannot_resolve_resolves_to_nothing():
    assert asyncio.run(resolve("bad\udcffname", 80)) == []  # not even encodable: no lookup goes out


@pytest.mark.parametrize(
    "host, bound",
    [
        ("127.0.0.1", [("127.0.0.1", 8081)]),
        ("", [("", 8081)]),  # every address
        ("::", [("::", 8081)]),
    ],
)
def test_where_a_server_bound_to_an_address_listens(host, bound):
    assert asyncio.run(bound_addresses(host, 8081)) == bound


def test_a_server_bound_to_a_name_listens_at_what_it_resolves_to():
    assert ("127.0.0.1", 8081) in asyncio.run(bound_addresses("localhost", 8081))
