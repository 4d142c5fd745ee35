"""Changes the tenant directory refuses; the gateway maps them to HTTP in one place."""

from __future__ import annotations


class DirectoryError(Exception):
    """A change to the tenant directory that cannot be made as asked."""


class TenantNotFound(DirectoryError):
    def __init__(self, tenant: str) -> None:
        super().__init__(f"No tenant '{tenant}'.")


class TenantExists(DirectoryError):
    def __init__(self, tenant: str) -> None:
        super().__init__(f"Tenant '{tenant}' exists already.")


class KeyNotFound(DirectoryError):
    def __init__(self, key_id: str) -> None:
        super().__init__(f"No API key '{key_id}'.")


class VersionConflict(DirectoryError):
    """The change was made against a version that is no longer current (``If-Match``)."""

    def __init__(self, tenant: str, expected: int, current: int) -> None:
        super().__init__(
            f"Tenant '{tenant}' changed meanwhile: it is at version {current}, not {expected}. "
            "Read it again and retry the change against the current version."
        )
        self.current = current


class InvalidTenant(DirectoryError):
    """The tenant's settings break a rule of this deployment (an unknown pool...)."""

    def __init__(self, problems: list[str]) -> None:
        problems = [p.strip() for p in problems]
        super().__init__("Invalid tenant settings: " + "; ".join(problems))
        self.problems = problems
