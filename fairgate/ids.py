"""Unique ids for requests and admission tickets, without a system call per request.

An id is this process's random tag (drawn once) followed by a counter: unique across replicas
as a random id would be, at the cost of an integer increment rather than ``os.urandom``.
"""

from __future__ import annotations

import itertools
import os

_TAG = os.urandom(8).hex()
_NEXT = itertools.count(1)


def new_id() -> str:
    """A fresh 32-hex-digit id, unique across processes."""
    return f"{_TAG}{next(_NEXT):016x}"
