"""Admission's policy as named parts, composed into the Lua scripts when they are loaded.

Three decisions are kept apart, each made by parts that are one Lua file apiece (as the Gateway
API Inference Extension keeps inter-flow order, intra-flow order and saturation apart):

- **order** (``lua/order/<name>.lua``): which flow's head goes next (``vtc``, ``fcfs``,
  ``shadow``). Within a flow requests always go in arrival order.
- **placement**: which backend takes it. Filters (``lua/filter/``) say whether a backend can
  take the request now; scorers (``lua/score/``) each give a figure of its load in tokens, and
  its load is the largest; pickers (``lua/pick/``) choose among the backends that passed, the
  first with an answer winning.

The parts are chosen once, when the scripts are loaded, from the configured policy: the
dispatch loop calls what was composed and compares no policy names. Adding an order is adding
``lua/order/<name>.lua`` (defining ``order_<name>``; a first line ``-- requires: order/x``
loads what it builds on), naming it in ``admission.policy``'s choices in the settings, and a
test.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable

_LUA = resources.files("admission").joinpath("lua")
#: The shared functions, in the order they build on each other (see lib/state.lua).
_BEFORE_PARTS = ("lib/state", "lib/quota", "lib/counters", "lib/leases")
_AFTER_PARTS = ("lib/placement", "lib/dispatch")
_REQUIRES = "-- requires:"


class UnknownPart(ValueError):
    """A policy names a part that has no Lua file."""


@dataclass(frozen=True)
class AdmissionPolicy:
    """The parts admission is composed of. Each name is a file under ``admission/lua``."""

    order: str = "vtc"
    filters: tuple[str, ...] = ("open", "budgets", "prefill_cap")
    scorers: tuple[str, ...] = ("outstanding_tokens", "engine_load")
    pickers: tuple[str, ...] = ("affinity", "least_loaded")

    def parts(self) -> list[str]:
        """Every part file (``kind/name``) the policy needs, each after what it requires."""
        named = [f"order/{self.order}"]
        named += [f"filter/{n}" for n in self.filters]
        named += [f"score/{n}" for n in self.scorers]
        named += [f"pick/{n}" for n in self.pickers]
        loaded: list[str] = []
        for part in named:
            _with_requirements(part, loaded)
        return loaded

    def bindings(self) -> str:
        """The Lua lines that name the chosen parts for lib/placement.lua and lib/dispatch.lua."""
        return "\n".join(
            (
                f"local ORDER = order_{self.order}",
                f"local FILTERS = {{{', '.join(f'filter_{n}' for n in self.filters)}}}",
                f"local SCORERS = {{{', '.join(f'score_{n}' for n in self.scorers)}}}",
                f"local PICKERS = {{{', '.join(f'pick_{n}' for n in self.pickers)}}}",
            )
        )

    def compose(self, entry: str, publish: str = "PUBLISH") -> str:
        """The source of the entry script ``entry`` (e.g. ``enqueue``) under this policy;
        its messages sent with ``publish`` (``SPUBLISH`` on a Cluster: :mod:`fairgate.pubsub`)."""
        return "\n".join([*self._shared(publish), _read(entry)])

    def compose_batch(self, entries: tuple[str, ...], publish: str = "PUBLISH") -> str:
        """The source of ``batch.lua``: the entry scripts ``entries`` as functions of one chunk
        under this policy, which runs several of them in one call. ``ARGV`` is shadowed by a
        local before anything reads it, so that each operation reads its own arguments."""
        ops = [f"OPS['{entry}'] = function()\n{_read(entry)}\nend" for entry in entries]
        return "\n".join(
            ["local BATCH = ARGV", "local ARGV = ARGV", *self._shared(publish), "local OPS = {}"]
            + ops
            + [_read("batch")]
        )

    def _shared(self, publish: str) -> list[str]:
        """What every entry script is composed with: the shared functions and the policy's
        parts, named (its messages sent with ``publish``)."""
        sources = [f"local PUBLISH = '{publish}'"]
        sources += [_read(name) for name in _BEFORE_PARTS]
        sources += [_read(part) for part in self.parts()]
        sources.append(self.bindings())
        sources += [_read(name) for name in _AFTER_PARTS]
        return sources


def standalone(entry: str) -> str:
    """The source of an entry script that needs none of the policy, only the domain's state and
    quotas (``quota.lua``: a correction apart from any lease)."""
    return "\n".join(_read(name) for name in ("lib/state", "lib/quota", entry))


def available(kind: str) -> list[str]:
    """The names of the parts of one kind (``order``, ``filter``, ``score``, ``pick``)."""
    return sorted(
        entry.name.removesuffix(".lua")
        for entry in _LUA.joinpath(kind).iterdir()
        if entry.name.endswith(".lua")
    )


def _with_requirements(part: str, loaded: list[str]) -> None:
    if part in loaded:
        return
    for required in _requirements(_file(part).read_text()):
        _with_requirements(required, loaded)
    loaded.append(part)


def _requirements(source: str) -> list[str]:
    first = source.split("\n", 1)[0]
    return first.removeprefix(_REQUIRES).split() if first.startswith(_REQUIRES) else []


def _file(name: str) -> Traversable:
    path = _LUA.joinpath(f"{name}.lua")
    if not path.is_file():
        kind, _, part = name.rpartition("/")
        known = ", ".join(available(kind)) if kind else ""
        raise UnknownPart(f"no admission {kind or 'script'} named {part!r} (known: {known})")
    return path


def _read(name: str) -> str:
    return _file(name).read_text()
