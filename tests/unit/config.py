"""What several unit tests share: a small configuration, a certificate for TLS tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fairgate.settings import Settings

DATA = Path(__file__).resolve().parent / "data"
#: A self-signed certificate for ``localhost`` and 127.0.0.1 (valid until 2126), and its key.
CERT = DATA / "localhost.crt"
CERT_KEY = DATA / "localhost.key"
#: The key again, encrypted with the password ``key-secret``.
ENCRYPTED_KEY = DATA / "localhost-encrypted.key"
#: The same certificate in a CA directory, under its OpenSSL subject hash (``c_rehash``'s name).
CA_PATH = DATA / "ca-path"


def settings(**sections: Any) -> Settings:
    """A small valid configuration: pool ``p`` with backends ``b1`` and ``b2`` (2 requests at
    once each), tenant ``t`` (key ``key-t``, 3 requests at once) and ``u`` (key ``key-u``);
    ``sections`` replace or add top-level sections."""
    config: dict[str, Any] = {
        "pools": {
            "p": {
                "backends": {
                    name: {"url": f"http://127.0.0.1:{port}", "models": ["m"], "max_concurrency": 2}
                    for name, port in (("b1", 9001), ("b2", 9002))
                }
            }
        },
        "tenants": {
            "t": {"api_keys": ["key-t"], "max_concurrency": 3},
            "u": {"api_keys": ["key-u"]},
        },
    }
    config.update(sections)
    return Settings(**config)
