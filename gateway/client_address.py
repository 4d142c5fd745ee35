"""Which address a request came from, believing ``X-Forwarded-For`` only from trusted proxies.

Anyone can send ``X-Forwarded-For``; only a reverse proxy the operator configured
(``server.trusted_proxies``) is believed. The client is then found by walking the header from
the right (each proxy appends the address it heard from) past every trusted proxy: the first
address that is not one is where the request came from, however the client padded the header's
left side. With no trusted proxy configured the header is ignored and the client is the
connection's peer. The address is what the access log records (``client``); nothing else reads
``X-Forwarded-*`` or ``Forwarded``, and none of them is forwarded to an engine.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ClientAddress:
    """Resolves a request's client address with the configured trusted proxies."""

    def __init__(self, trusted: Sequence[Network]) -> None:
        self._trusted = tuple(trusted)

    def of(self, peer: str | None, forwarded_for: str | None) -> str | None:
        """The client's address: the peer's, unless the peer is a trusted proxy and
        ``forwarded_for`` names one beyond it (the rightmost untrusted address)."""
        if not self._trusted or not forwarded_for or not self._is_trusted(peer):
            return peer
        for hop in reversed(forwarded_for.split(",")):
            address = hop.strip()
            if not self._is_trusted(address):
                return address if _is_address(address) else peer
        return peer  # every hop is one of ours: the leftmost proxy is as far as is known

    def _is_trusted(self, address: str | None) -> bool:
        if address is None:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._trusted)


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
