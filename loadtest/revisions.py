"""fairgate as another git revision had it: its code to run, and a configuration it accepts.

A benchmark that measures the code of now next to an older revision's in the same run
(``--baseline REV`` of :mod:`loadtest.proxy_overhead` and :mod:`loadtest.stream_bench`) serves
that revision from a ``git archive`` of it, with :func:`revision_env`: ``PYTHONPATH`` at the
archive, and ``PYTHONSAFEPATH`` so that ``python -m`` does not put the current directory (the
checkout of now, where benchmarks are run from) ahead of it.

Its configuration is the one of now less what the revision did not know yet: every settings
model forbids unknown fields, so a section added since (``telemetry``) or a field (a tenant's
``quotas``) would stop it at start-up. What to drop is asked of the revision's own settings
model, in a process running its code (:func:`accepted_config`), rather than kept in a list of
which key came when.
"""

from __future__ import annotations

import copy
import io
import json
import subprocess
import sys
import tarfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from loadtest.services import child_env

#: The checkout this module belongs to: where ``git archive`` reads revisions from.
REPO = Path(__file__).resolve().parent.parent

#: A location in a configuration, as pydantic reports it: the keys from the top down.
Location = tuple[str | int, ...]

#: Run with a revision's code: validate a configuration (JSON on stdin) with its own settings
#: model, as ``load_settings`` does after reading the YAML; print where its ``fairgate`` package
#: was imported from and every validation error (location, type, message) as JSON.
_VALIDATE = """
import json, sys
import fairgate
from pydantic import ValidationError
from fairgate.settings import Settings
try:
    Settings(**json.load(sys.stdin))
    errors = []
except ValidationError as exc:
    errors = [{"loc": e["loc"], "type": e["type"], "msg": e["msg"]} for e in exc.errors()]
print(json.dumps({"package": fairgate.__file__, "errors": errors}))
"""


def baseline_checkout(revision: str, into: Path) -> Path:
    """The tree of ``revision`` (a commit, a branch) unpacked under ``into``, to run its code;
    a revision git does not know is an error saying so (the benchmark's one-line failure)."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", revision], cwd=REPO, capture_output=True, timeout=60
    )
    if archive.returncode != 0:
        raise RuntimeError(f"git archive {revision}: {archive.stderr.decode().strip()}")
    target = into / "baseline"
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(target, filter="data")
    return target


def revision_env(checkout: Path) -> dict[str, str]:
    """What a child's environment needs to run ``checkout``'s code instead of this one's.

    ``python -m`` puts the current directory first on ``sys.path``, ahead of ``PYTHONPATH``:
    run from this checkout, it would import this checkout's ``fairgate`` and the baseline would
    be the code of now. ``PYTHONSAFEPATH`` leaves the current directory out.
    """
    return {"PYTHONPATH": str(checkout), "PYTHONSAFEPATH": "1"}


def unknown_keys(errors: Iterable[Mapping[str, Any]]) -> list[Location]:
    """Where a validation found keys its models do not declare (pydantic's ``extra_forbidden``)."""
    return [tuple(error["loc"]) for error in errors if error["type"] == "extra_forbidden"]


def without(config: dict[str, Any], locations: Iterable[Location]) -> dict[str, Any]:
    """A copy of ``config`` without the keys at ``locations`` (those already gone are skipped)."""
    trimmed = copy.deepcopy(config)
    for *parents, key in locations:
        node: Any = trimmed
        for parent in parents:
            node = node.get(parent) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(key, None)
    return trimmed


def validation_errors(checkout: Path, config: dict[str, Any]) -> list[dict[str, Any]]:
    """The errors ``checkout``'s own settings model finds in ``config`` (none if it accepts it).

    Fails if the revision cannot validate at all, or if the process imported another
    ``fairgate`` than the checkout's: the baseline would then not be the revision asked for.
    """
    done = subprocess.run(
        [sys.executable, "-c", _VALIDATE],
        input=json.dumps(config),
        env=child_env(revision_env(checkout)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"the settings of {checkout} could not be loaded:\n{done.stderr[-2000:]}"
        )
    answer = json.loads(done.stdout.splitlines()[-1])
    package = Path(answer["package"]).resolve()
    if not package.is_relative_to(checkout.resolve()):
        raise RuntimeError(f"the code run for {checkout} was imported from {package}")
    errors: list[dict[str, Any]] = answer["errors"]
    return errors


def accepted_config(checkout: Path, config: dict[str, Any]) -> dict[str, Any]:
    """``config`` without the keys ``checkout``'s settings do not know, once it accepts the rest.

    Fails, naming each problem, if the revision rejects anything but unknown keys (a value it
    did not allow, a section it required).
    """
    errors = validation_errors(checkout, config)
    accepted = without(config, unknown_keys(errors))
    if errors and accepted != config:
        errors = validation_errors(checkout, accepted)
    if errors:
        problems = "\n".join(
            f"  {'.'.join(map(str, error['loc'])) or '(config)'}: {error['msg']}"
            for error in errors
        )
        raise RuntimeError(
            f"fairgate at {checkout} rejects the benchmark's configuration:\n{problems}"
        )
    return accepted
