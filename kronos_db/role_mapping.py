"""The role mapping (``kronos_db/roles.toml``, or ``[security] roles_file``): which roles Kronos
has, one per service and kronos-db's own (owner, maintenance, monitoring), what each holds, and
what a new partition gets. Reading and validating it only: no connection, so that whoever needs
to know what a role should hold (:mod:`kronos_db.privileges` explaining a permission error, a
new partition's grants) does not depend on :mod:`kronos_db.roles`, which compares the mapping
with the catalog and applies it.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from kronos_db.config import Settings
from kronos_db.errors import ConfigError

SERVICES = ("auth", "user", "log", "cache", "router", "messaging")


TOOLKIT_ROLES = ("owner", "maintenance", "monitoring")


TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")


def default_roles_file() -> Path:
    return Path(__file__).resolve().parent / "roles.toml"


@dataclasses.dataclass(frozen=True)
class ServiceRole:
    service: str
    role: str
    description: str
    tables: Mapping[str, tuple[str, ...]]


@dataclasses.dataclass(frozen=True)
class PartitionPrivileges:
    """What a new partition gets: its owner (None: its partitioned table's) and grants by role."""

    owner: str | None = None
    grants: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class ToolkitRole:
    """A role kronos-db itself runs as: the owner, the maintenance role, the monitoring role."""

    kind: str  # one of TOOLKIT_ROLES
    role: str
    description: str
    login: bool
    member_of: tuple[str, ...]  # role names
    tables: Mapping[str, tuple[str, ...]]


@dataclasses.dataclass(frozen=True)
class RoleMapping:
    schema: str
    services: tuple[ServiceRole, ...]
    source: str
    partitions: PartitionPrivileges = PartitionPrivileges()
    toolkit: tuple[ToolkitRole, ...] = ()
    extensions: tuple[str, ...] = ()  # what `bootstrap` creates (superuser-only)

    @property
    def role_names(self) -> list[str]:
        """Every role of the mapping: the services', then kronos-db's own."""
        return [service.role for service in self.services] + [r.role for r in self.toolkit]

    def toolkit_role(self, kind: str) -> ToolkitRole | None:
        return next((role for role in self.toolkit if role.kind == kind), None)

    @property
    def owner(self) -> str | None:
        """The role that owns every object of the schema (None: the mapping names none)."""
        owner = self.toolkit_role("owner")
        return owner.role if owner is not None else None


def load_mapping(settings: Settings) -> RoleMapping:
    """Read and validate the mapping; role names get ``[security] role_prefix``."""
    path = (
        Path(settings.security.roles_file) if settings.security.roles_file else default_roles_file()
    )
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the roles mapping: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    return parse_mapping(data, settings.security.role_prefix, str(path))


def parse_mapping(data: Mapping[str, Any], prefix: str, source: str) -> RoleMapping:
    def fail(reason: str) -> ConfigError:
        return ConfigError(f"{source}: {reason}")

    schema = data.get("schema", "public")
    if not isinstance(schema, str) or not schema:
        raise fail("schema must be a non-empty string")
    services = data.get("services")
    if not isinstance(services, dict) or not services:
        raise fail("no [services.<name>] tables")
    _refuse_unknown(services, SERVICES, "unknown service(s)", fail)
    roles = []
    for name in SERVICES:
        entry = services.get(name)
        if entry is None:
            raise fail(f"service {name} has no [services.{name}] table")
        tables = entry.get("tables", {})
        if not isinstance(tables, dict):
            raise fail(f"services.{name}.tables must be a table")
        checked = {
            table: _privileges(f"services.{name}.tables.{table}", privileges, fail)
            for table, privileges in tables.items()
        }
        roles.append(
            ServiceRole(name, f"{prefix}{name}", str(entry.get("description", "")), checked)
        )
    return RoleMapping(
        schema,
        tuple(roles),
        source,
        _parse_partitions(data, prefix, fail),
        _parse_toolkit(data, prefix, fail),
        _parse_extensions(data, fail),
    )


def _refuse_unknown(
    found: Mapping[str, Any],
    known: tuple[str, ...],
    what: str,
    fail: Callable[[str], ConfigError],
) -> None:
    unknown = set(found) - set(known)
    if unknown:
        raise fail(f"{what} {', '.join(sorted(unknown))} (known: {', '.join(known)})")


def _parse_toolkit(
    data: Mapping[str, Any], prefix: str, fail: Callable[[str], ConfigError]
) -> tuple[ToolkitRole, ...]:
    """``[toolkit.<kind>]``: kronos-db's own roles (a mapping without the section has none)."""
    section = data.get("toolkit", {})
    if not isinstance(section, dict):
        raise fail("[toolkit] must be a table of [toolkit.<role>] tables")
    _refuse_unknown(section, TOOLKIT_ROLES, "unknown toolkit role(s)", fail)
    toolkit = []
    for kind in TOOLKIT_ROLES:
        entry = section.get(kind)
        if entry is None:
            continue
        if not isinstance(entry, dict):
            raise fail(f"toolkit.{kind} must be a table")
        login = entry.get("login", True)
        if not isinstance(login, bool):
            raise fail(f"toolkit.{kind}.login must be true or false")
        member_of = entry.get("member_of", [])
        if not isinstance(member_of, list) or not all(isinstance(m, str) and m for m in member_of):
            raise fail(f"toolkit.{kind}.member_of must be a list of role names")
        tables = entry.get("tables", {})
        if not isinstance(tables, dict):
            raise fail(f"toolkit.{kind}.tables must be a table")
        toolkit.append(
            ToolkitRole(
                kind,
                f"{prefix}{kind}",
                str(entry.get("description", "")),
                login,
                # a toolkit role is named by its kind; anything else (pg_monitor) as it is
                tuple(f"{prefix}{m}" if m in TOOLKIT_ROLES else m for m in member_of),
                {
                    table: _privileges(f"toolkit.{kind}.tables.{table}", privileges, fail)
                    for table, privileges in tables.items()
                },
            )
        )
    return tuple(toolkit)


def _parse_extensions(
    data: Mapping[str, Any], fail: Callable[[str], ConfigError]
) -> tuple[str, ...]:
    section = data.get("bootstrap", {})
    if not isinstance(section, dict):
        raise fail("[bootstrap] must be a table")
    extensions = section.get("extensions", [])
    if not isinstance(extensions, list) or not all(isinstance(e, str) and e for e in extensions):
        raise fail("bootstrap.extensions must be a list of extension names")
    return tuple(extensions)


def _parse_partitions(
    data: Mapping[str, Any], prefix: str, fail: Callable[[str], ConfigError]
) -> PartitionPrivileges:
    """``[partitions]``: the owner (``"parent"``, or a role) and the grants of every partition."""
    section = data.get("partitions", {})
    if not isinstance(section, dict):
        raise fail("[partitions] must be a table")
    owner = section.get("owner", "parent")
    if not isinstance(owner, str) or not owner:
        raise fail('partitions.owner must be "parent" or a role name')
    grants = section.get("grants", {})
    if not isinstance(grants, dict):
        raise fail("partitions.grants must be a table: service = [privileges]")
    _refuse_unknown(grants, SERVICES, "partitions.grants: unknown service(s)", fail)
    checked = {
        f"{prefix}{service}": _privileges(f"partitions.grants.{service}", privileges, fail)
        for service, privileges in grants.items()
    }
    return PartitionPrivileges(
        None if owner == "parent" else owner,
        {role: privileges for role, privileges in checked.items() if privileges},
    )


def _privileges(key: str, value: Any, fail: Callable[[str], ConfigError]) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise fail(f"{key} must be a list of privileges")
    upper = tuple(sorted({p.upper() for p in value}))
    bad = [p for p in upper if p not in TABLE_PRIVILEGES]
    if bad:
        raise fail(
            f"{key}: unknown privilege(s) {', '.join(bad)} (known: {', '.join(TABLE_PRIVILEGES)})"
        )
    return upper
