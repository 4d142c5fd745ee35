"""The client's address: X-Forwarded-For believed only from configured proxies."""

from __future__ import annotations

import ipaddress

from gateway.client_address import ClientAddress

PROXIES = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128")]


def test_without_trusted_proxies_the_header_is_ignored() -> None:
    assert ClientAddress([]).of("10.1.2.3", "203.0.113.9") == "10.1.2.3"


def test_a_peer_that_is_no_trusted_proxy_cannot_name_another_client() -> None:
    assert ClientAddress(PROXIES).of("198.51.100.4", "203.0.113.9") == "198.51.100.4"


def test_a_trusted_proxy_names_the_client_it_heard_from() -> None:
    assert ClientAddress(PROXIES).of("10.1.2.3", "203.0.113.9") == "203.0.113.9"
    assert ClientAddress(PROXIES).of("::1", "2001:db8::5") == "2001:db8::5"


def test_the_rightmost_untrusted_hop_wins_over_what_the_client_prepended() -> None:
    """The client sent ``X-Forwarded-For: 1.1.1.1``; the proxies appended what they heard."""
    chain = "1.1.1.1, 203.0.113.9, 10.4.4.4"
    assert ClientAddress(PROXIES).of("10.1.2.3", chain) == "203.0.113.9"


def test_garbage_in_the_header_falls_back_to_the_peer() -> None:
    assert ClientAddress(PROXIES).of("10.1.2.3", "not-an-address") == "10.1.2.3"
    assert ClientAddress(PROXIES).of("10.1.2.3", "10.9.9.9") == "10.1.2.3"  # only proxies
    assert ClientAddress(PROXIES).of(None, "203.0.113.9") is None  # no peer (a unix socket)
