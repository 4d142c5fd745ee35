"""``fairgate admin ...``: the admin REST API from a terminal.

Every subcommand is one or two HTTP calls through :mod:`fairgate.admin_client`, so it works
against any replica (``--url``, ``FAIRGATE_ADMIN_URL``) with an admin token (``--token``,
``FAIRGATE_ADMIN_TOKEN``). Answers print as tables for a person, or as the API's JSON with
``--json`` for scripts. Exit status: 0 done, 1 the API refused (its message is printed) or
could not be reached (the URL is named), 2 the command line is wrong.

A tenant's settings are given one way: each is a dotted path and a value (``--set
quotas.tokens_per_minute=1000``, the value read as JSON, else as text), and the common ones
have a short flag (``--tpm 1000``) that is only another spelling of the same path. Create
sends them as the new tenant's body, update as a JSON merge patch (``null`` resets).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

from fairgate.admin_client import DEFAULT_URL, AdminApiError, AdminClient, AdminUnreachable


class UsageError(Exception):
    """The command line asks for something that cannot be sent (exit status 2)."""


# ---------------------------------------------------------------------------------------------
# Parsing the command line's values


def parse_value(text: str) -> Any:
    """A ``--set`` value: JSON where it is JSON (``3``, ``true``, ``null``, ``["a"]``), else
    the text itself (so ``--set name=acme`` needs no quotes). ``NaN`` and ``Infinity`` stay
    text: JSON has no such numbers."""

    def no_constants(name: str) -> Any:
        raise ValueError(name)

    try:
        return json.loads(text, parse_constant=no_constants)
    except ValueError:
        return text


_SEGMENT = re.compile(r'\s*(?:"([^"]+)"|([^".=]+?))\s*(?:\.|$)')


def parse_assignment(text: str) -> tuple[tuple[str, ...], Any]:
    """``"quotas.tokens_per_minute=1000"`` as its path and value; a part of the path with a
    dot in it is quoted: ``quotas.models."llama-3.1-8b".requests_per_minute=10``."""
    path, sep, value = text.partition("=")
    parts: list[str] = []
    at = 0
    while sep and at < len(path):
        match = _SEGMENT.match(path, at)
        if match is None or match.end() == at:
            break
        parts.append(match.group(1) or match.group(2))
        at = match.end()
    if not sep or not parts or at < len(path) or path.rstrip().endswith("."):
        raise UsageError(f"--set takes FIELD=VALUE (dotted FIELD for nested ones), not {text!r}")
    return tuple(parts), parse_value(value)


def nest(assignments: Iterable[tuple[tuple[str, ...], Any]]) -> dict[str, Any]:
    """Assignments as one nested object; a field given twice, or given both a value and
    nested fields, is refused rather than silently overwritten."""
    body: dict[str, Any] = {}
    given: set[tuple[str, ...]] = set()
    for path, value in assignments:
        if path in given:
            raise UsageError(f"{'.'.join(path)} is given twice")
        node = body
        for depth, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict) or path[: depth + 1] in given:
                raise UsageError(f"{'.'.join(path)} is inside {'.'.join(path[: depth + 1])}")
            node = child
        if path[-1] in node:
            raise UsageError(f"{'.'.join(path)} is given with fields inside it")
        node[path[-1]] = value
        given.add(path)
    return body


_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", re.IGNORECASE)


def parse_duration(text: str) -> float:
    """``"30d"``, ``"12h"``, ``"90m"``, ``"3600s"`` or ``"3600"`` (seconds) as seconds."""
    match = _DURATION.fullmatch(text)
    if match is None or float(match.group(1)) <= 0:
        raise UsageError(f"a duration is a positive number with s, m, h, d or w, not {text!r}")
    return float(match.group(1)) * _UNITS_S[(match.group(2) or "s").lower()]


def parse_version(text: str) -> str:
    """``--if-match 3`` (or ``'"3"'``, as the ETag reads) as the ``If-Match`` header."""
    version = text.strip().removeprefix("W/").strip('"')
    if not version.isdigit():
        raise UsageError(f"--if-match takes a tenant's version (a number), not {text!r}")
    return f'"{version}"'


def _pools(text: str) -> list[str]:
    return [pool.strip() for pool in text.split(",") if pool.strip()]


@dataclass(frozen=True)
class Flag:
    """A short spelling of one tenant setting's path."""

    option: str
    path: str
    kind: Callable[[str], Any]
    help: str


TENANT_FLAGS = (
    Flag("--weight", "weight", float, "share of contended capacity"),
    Flag("--priority", "priority", int, "priority band, -100..100 (higher first)"),
    Flag("--max-concurrency", "max_concurrency", int, "requests in flight"),
    Flag("--max-inflight-tokens", "max_inflight_tokens", int, "estimated tokens in flight"),
    Flag("--max-queued", "max_queued", int, "requests waiting"),
    Flag("--queue-timeout", "queue_timeout_s", float, "longest wait in the queue, seconds"),
    Flag("--pools", "pools", _pools, "pools it may use, comma-separated"),
    Flag("--rpm", "quotas.requests_per_minute", int, "quota: requests per minute"),
    Flag("--tpm", "quotas.tokens_per_minute", int, "quota: tokens per minute"),
    Flag("--tpd", "quotas.tokens_per_day", int, "quota: tokens per day"),
)


def _dest(flag: Flag) -> str:
    return "tenant__" + flag.path.replace(".", "__")


def tenant_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the flags and ``--set`` name, as one nested object."""
    assignments = [
        (tuple(flag.path.split(".")), getattr(args, _dest(flag)))
        for flag in TENANT_FLAGS
        if getattr(args, _dest(flag)) is not None
    ]
    assignments += [parse_assignment(text) for text in args.set]
    return nest(assignments)


# ---------------------------------------------------------------------------------------------
# Rendering answers for a person


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns, two spaces apart."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):  # as --set takes it back
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "-"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _when(value: str | None) -> str:
    if not value:
        return "never" if value is None else "-"
    try:
        return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M UTC")
    except ValueError:
        return value


def _flat(data: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for name, value in data.items():
        if isinstance(value, dict) and value:
            rows += _flat(value, f"{prefix}{name}.")
        else:
            rows.append((f"{prefix}{name}", value))
    return rows


def render_tenant(tenant: dict[str, Any]) -> str:
    settings = {k: v for k, v in tenant.items() if k not in ("object", "id", "version")}
    rows = _flat(settings)
    width = max((len(name) for name, _ in rows), default=0)
    lines = [f"tenant {tenant['id']} (version {tenant['version']})"]
    lines += [f"  {name.ljust(width)}  {_cell(value)}" for name, value in rows]
    return "\n".join(lines)


def _quotas(quotas: dict[str, Any] | None) -> str:
    if not quotas:
        return "-"
    short = {"requests_per_minute": "rpm", "tokens_per_minute": "tpm", "tokens_per_day": "tpd"}
    parts = [f"{abbr} {quotas[name]}" for name, abbr in short.items() if quotas.get(name)]
    if quotas.get("models"):
        parts.append(f"+{len(quotas['models'])} models")
    return ", ".join(parts) or "-"


def render_tenants(listed: dict[str, Any]) -> str:
    rows = [
        (
            t["id"], t["weight"], t["priority"], t["max_concurrency"], t["max_inflight_tokens"],
            t["max_queued"], t.get("pools") or "all", _quotas(t.get("quotas")), t["version"],
        )
        for t in listed["data"]
    ]  # fmt: skip
    headers = ("ID", "WEIGHT", "PRIO", "CONC", "TOKENS", "QUEUED", "POOLS", "QUOTAS", "VERSION")
    return table(headers, rows) if rows else "no tenants"


def render_keys(listed: dict[str, Any]) -> str:
    rows = [
        (k["id"], k["name"] or "-", k["prefix"] + "...", _when(k["created_at"]),
         _when(k["expires_at"]), _when(k.get("last_used_at")).replace("never", "-"))
        for k in listed["data"]
    ]  # fmt: skip
    headers = ("ID", "NAME", "PREFIX", "CREATED", "EXPIRES", "LAST USED")
    return table(headers, rows) if rows else "no keys"


def render_new_key(made: dict[str, Any]) -> str:
    name = f'"{made["name"]}"' if made["name"] else "no name"
    return (
        f"Created API key {made['id']} for tenant {made['tenant']} ({name}, expires "
        f"{_when(made['expires_at'])}).\n\n"
        "Its secret, shown this once (only a digest is stored: it cannot be shown again):\n\n"
        f"  {made['key']}\n"
    )


def _rejections(counts: dict[str, int] | None) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in sorted((counts or {}).items())) or "-"


def render_usage(usage: dict[str, Any]) -> str:
    row = ("requests", "prompt_tokens", "completion_tokens")
    rows: list[tuple[object, ...]] = [
        (d["date"], d["model"], *(d.get(k, 0) for k in row), _rejections(d.get("rejections")))
        for d in usage["data"]
    ]
    total = usage.get("total") or {}
    totals = (total.get(k, 0) for k in row)
    rows.append(("TOTAL", "", *totals, _rejections(total.get("rejections"))))
    title = f"usage of tenant {usage['tenant']}, {usage['from']} to {usage['to']}"
    headers = ("DATE", "MODEL", "REQUESTS", "PROMPT TOKENS", "COMPLETION TOKENS", "REJECTIONS")
    return f"{title}\n{table(headers, rows)}"


# ---------------------------------------------------------------------------------------------
# The subcommands: each makes its calls and answers (raw, for --json; text, for a person)

Result = tuple[Any, str]
Action = Callable[[AdminClient, argparse.Namespace], Awaitable[Result]]


def _tenant_path(tenant_id: str, rest: str = "") -> str:
    return f"/tenants/{quote(tenant_id, safe='')}{rest}"


async def _tenants_list(admin: AdminClient, args: argparse.Namespace) -> Result:
    body = (await admin.call("GET", "/tenants")).body
    return body, render_tenants(body)


async def _tenants_get(admin: AdminClient, args: argparse.Namespace) -> Result:
    body = (await admin.call("GET", _tenant_path(args.tenant))).body
    return body, render_tenant(body)


async def _tenants_create(admin: AdminClient, args: argparse.Namespace) -> Result:
    fields = tenant_fields(args)
    body = (await admin.call("POST", "/tenants", body={**fields, "id": args.tenant})).body
    return body, "created " + render_tenant(body)


async def _tenants_update(admin: AdminClient, args: argparse.Namespace) -> Result:
    patch = tenant_fields(args)
    if not patch:
        raise UsageError("nothing to change: give --set FIELD=VALUE or a setting's flag")
    headers = {"If-Match": parse_version(args.if_match)} if args.if_match else None
    path = _tenant_path(args.tenant)
    body = (await admin.call("PATCH", path, body=patch, headers=headers)).body
    return body, "updated " + render_tenant(body)


async def _tenants_delete(admin: AdminClient, args: argparse.Namespace) -> Result:
    headers = {"If-Match": parse_version(args.if_match)} if args.if_match else None
    body = (await admin.call("DELETE", _tenant_path(args.tenant), headers=headers)).body
    return body, f"deleted tenant {body['id']} and its keys"


async def _keys_list(admin: AdminClient, args: argparse.Namespace) -> Result:
    body = (await admin.call("GET", _tenant_path(args.tenant, "/keys"))).body
    return body, render_keys(body)


async def _keys_create(admin: AdminClient, args: argparse.Namespace) -> Result:
    asked: dict[str, Any] = {"name": args.name}
    if args.expires_in is not None:
        asked["expires_in_s"] = parse_duration(args.expires_in)
    body = (await admin.call("POST", _tenant_path(args.tenant, "/keys"), body=asked)).body
    return body, render_new_key(body)


async def _keys_revoke(admin: AdminClient, args: argparse.Namespace) -> Result:
    path = _tenant_path(args.tenant, f"/keys/{quote(args.key_id, safe='')}")
    body = (await admin.call("DELETE", path)).body
    return body, f"revoked key {body['id']} of tenant {args.tenant}"


async def _usage(admin: AdminClient, args: argparse.Namespace) -> Result:
    query = {name: value for name, value in (("from", args.start), ("to", args.end)) if value}
    body = (await admin.call("GET", _tenant_path(args.tenant, "/usage"), query=query)).body
    return body, render_usage(body)


async def _config_export(admin: AdminClient, args: argparse.Namespace) -> Result:
    import yaml

    text = (await admin.call("GET", "/config")).body
    return yaml.safe_load(text), text.rstrip("\n")


# ---------------------------------------------------------------------------------------------
# The parser and the runner


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``fairgate admin``, under the ``fairgate`` command's subcommands."""
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: an option given before the subcommand is not reset by the subcommand's default.
    common.add_argument(
        "--url",
        default=argparse.SUPPRESS,
        help=f"a gateway replica (env FAIRGATE_ADMIN_URL; default {DEFAULT_URL})",
    )
    common.add_argument(
        "--token", default=argparse.SUPPRESS, help="an admin token (env FAIRGATE_ADMIN_TOKEN)"
    )
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print the API's JSON"
    )
    admin = commands.add_parser(
        "admin",
        parents=[common],
        help="tenants, keys, usage and config through the admin API",
        description="Manage a running deployment through its admin REST API (/admin/v1). "
        "Exit status 1 when the API refuses (its message is printed), 2 for a wrong command.",
    )
    admin.set_defaults(handler=run)
    groups = admin.add_subparsers(dest="admin_group", required=True, metavar="COMMAND")

    def leaf(
        parent: argparse._SubParsersAction[argparse.ArgumentParser],
        name: str,
        action: Action,
        summary: str,
    ) -> argparse.ArgumentParser:
        parser = parent.add_parser(name, parents=[common], help=summary, description=summary)
        parser.set_defaults(action=action)
        return parser

    tenants = groups.add_parser("tenants", help="list, show, create, change, delete tenants")
    tenant_commands = tenants.add_subparsers(dest="admin_command", required=True, metavar="COMMAND")
    leaf(tenant_commands, "list", _tenants_list, "list the tenants")
    leaf(tenant_commands, "get", _tenants_get, "show a tenant").add_argument("tenant")
    create = leaf(tenant_commands, "create", _tenants_create, "create a tenant")
    create.add_argument("tenant", help="its id: lowercase letters, digits, - and _")
    _setting_options(create)
    update = leaf(
        tenant_commands, "update", _tenants_update, "change a tenant (unnamed settings stay)"
    )
    update.add_argument("tenant")
    _setting_options(update)
    _if_match_option(update)
    delete = leaf(tenant_commands, "delete", _tenants_delete, "delete a tenant and its keys")
    delete.add_argument("tenant")
    _if_match_option(delete)

    keys = groups.add_parser("keys", help="list, create, revoke a tenant's API keys")
    key_commands = keys.add_subparsers(dest="admin_command", required=True, metavar="COMMAND")
    leaf(key_commands, "list", _keys_list, "list a tenant's keys").add_argument("tenant")
    make = leaf(key_commands, "create", _keys_create, "make a key (its secret is shown once)")
    make.add_argument("tenant")
    make.add_argument("--name", default="", help="what the key is for")
    make.add_argument("--expires-in", metavar="DURATION", help="e.g. 30d, 12h, 90m, 3600s")
    revoke = leaf(key_commands, "revoke", _keys_revoke, "revoke a key (refused within 1 s)")
    revoke.add_argument("tenant")
    revoke.add_argument("key_id", help="the key's id (key_...)")

    usage = leaf(groups, "usage", _usage, "a tenant's requests, tokens and rejections per day")
    usage.add_argument("tenant")
    usage.add_argument("--from", dest="start", metavar="DATE", help="first day, YYYY-MM-DD")
    usage.add_argument("--to", dest="end", metavar="DATE", help="last day, YYYY-MM-DD")

    config = groups.add_parser("config", help="the running configuration")
    config_commands = config.add_subparsers(dest="admin_command", required=True, metavar="COMMAND")
    leaf(config_commands, "export", _config_export, "print it as a config file (YAML)")


def _setting_options(parser: argparse.ArgumentParser) -> None:
    for flag in TENANT_FLAGS:
        parser.add_argument(
            flag.option,
            dest=_dest(flag),
            type=flag.kind,
            metavar="A,B" if flag.kind is _pools else "N",
            help=f"{flag.help} (= --set {flag.path}=...)",
        )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="any setting by its (dotted) field, the value as JSON or text, e.g. "
        "--set quotas.models.llama-3-8b.tokens_per_minute=5000; null resets it (repeatable)",
    )


def _if_match_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--if-match",
        metavar="VERSION",
        help="only if the tenant is still at this version (see `tenants get`); else exit 1",
    )


def run(args: argparse.Namespace) -> int:
    """Run the chosen subcommand and print its answer; the exit status."""
    url = getattr(args, "url", None) or os.environ.get("FAIRGATE_ADMIN_URL") or DEFAULT_URL
    token = getattr(args, "token", None) or os.environ.get("FAIRGATE_ADMIN_TOKEN")
    try:
        if not token:
            raise UsageError("no admin token: give --token or set FAIRGATE_ADMIN_TOKEN")
        raw, text = asyncio.run(_call(args.action, url, token, args))
    except UsageError as exc:
        print(f"fairgate admin: {exc}", file=sys.stderr)
        return 2
    except AdminApiError as exc:
        code = f", {exc.code}" if exc.code else ""
        print(f"fairgate admin: {exc.message} (HTTP {exc.status}{code})", file=sys.stderr)
        return 1
    except AdminUnreachable as exc:
        print(f"fairgate admin: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(raw, indent=2) if getattr(args, "json", False) else text)
    return 0


async def _call(action: Action, url: str, token: str, args: argparse.Namespace) -> Result:
    async with AdminClient(url, token) as admin:
        return await action(admin, args)
