"""Which exit a token leaves through: rendezvous (highest random weight) hashing of the token over its
pool's exits. Every proxy computes the same order from the token and the exits' names alone, across
requests, retries and restarts; adding or removing an exit moves only the tokens whose first choice
it is or becomes.
"""

from __future__ import annotations

import functools
import hashlib


def exit_order(token: str, exits: tuple[str, ...]) -> tuple[str, ...]:
    """The pool's exits in this token's order of preference: its exit first, then where it fails over to."""
    if len(exits) <= 1:
        return exits
    return _order(token, exits)


@functools.lru_cache(maxsize=65536)  # a request asks once; a pool of more tokens than this hashes again
def _order(token: str, exits: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sorted(exits, key=lambda name: _weight(token, name), reverse=True))


def _weight(token: str, exit_name: str) -> bytes:
    return hashlib.blake2b(f"{exit_name}\0{token}".encode(), digest_size=8).digest()
