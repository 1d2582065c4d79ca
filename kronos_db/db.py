"""Connections: which database to talk to, how to reach it, and keeping its password secret.

The target is ``--database-url``, else ``$KRONOS_DATABASE_URL``, else ``$DATABASE_URL``, else the
configuration's ``database.url``, else the libpq defaults and ``PG*`` variables (so ``.pgpass``
and service files work). The database name defaults to ``kronos``. A password never leaves this
module: every description of a target is built from its parts, with the password left out, and
:func:`redact` scrubs it from any text that might echo it (libpq parse errors do).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from kronos_db import redaction
from kronos_db.config import Settings
from kronos_db.errors import (
    InsufficientPrivilegeError,
    KronosError,
    SessionRequiredError,
    UsageError,
    translate_database_error,
)
from kronos_db.resources import query

URL_ENVIRONMENT = ("KRONOS_DATABASE_URL", "DATABASE_URL")
MASK = redaction.MASK


def mask_conninfo(text: str) -> str:
    """Hide anything that looks like a password in a URL or a libpq keyword string."""
    return redaction.redact(text)


@dataclasses.dataclass(frozen=True)
class Target:
    """A database to connect to. ``conninfo`` may hold a password: never print it."""

    conninfo: str = dataclasses.field(repr=False)
    source: str
    secrets: tuple[str, ...] = dataclasses.field(default=(), repr=False)
    # the settings it was resolved with: a permission error names the roles mapping's fix
    settings: Settings | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def params(self) -> dict[str, Any]:
        return conninfo_to_dict(self.conninfo)

    @property
    def dbname(self) -> str:
        return str(self.params.get("dbname") or os.environ.get("PGDATABASE") or "")

    def describe(self) -> str:
        """``host=… port=… dbname=… user=…``, never the password."""
        params = self.params
        parts = []
        for key, variable in (
            ("host", "PGHOST"),
            ("port", "PGPORT"),
            ("dbname", "PGDATABASE"),
            ("user", "PGUSER"),
        ):
            value = params.get(key) or os.environ.get(variable)
            if value:
                parts.append(f"{key}={value}")
        return " ".join(parts) or "libpq defaults"

    def with_dbname(self, dbname: str) -> Target:
        return dataclasses.replace(self, conninfo=make_conninfo(self.conninfo, dbname=dbname))

    def redact(self, text: str) -> str:
        return redact(text, self.secrets)


def redact(text: str, secrets: Sequence[str] = ()) -> str:
    """``text`` with ``secrets`` and anything shaped like a password masked."""
    return redaction.redact(text, secrets)


def _normalise_url(raw: str) -> str:
    # SQLAlchemy-style URLs are common in .env files; libpq knows only postgres(ql)://.
    return re.sub(r"^postgres(?:ql)?\+[a-z0-9]+://", "postgresql://", raw.strip(), flags=re.I)


def resolve_target(database_url: str | None, settings: Settings) -> Target:
    """Pick the database from the option, the environment, the configuration or libpq."""
    url_source = settings.sources.get("database.url", "default")
    candidates: list[tuple[str | None, str]] = [(database_url, "option --database-url")]
    if url_source.startswith("$"):  # database.url from KRONOS_DATABASE_URL (load_settings)
        candidates.append((settings.database.url, url_source))
    candidates += [(os.environ.get(name), f"${name}") for name in URL_ENVIRONMENT]
    candidates.append((settings.database.url, url_source))
    raw, source = next(((value, origin) for value, origin in candidates if value), ("", "libpq"))
    raw = _normalise_url(raw)
    try:
        # refuse what libpq would misread (an unescaped @ puts the password's tail in the host)
        # or quote back in its error (an invalid percent-escape), without showing the string
        redaction.check(raw)
    except redaction.ConnectionStringError as exc:
        raise UsageError(f"invalid database URL from {source}: {exc}") from None
    secrets = list(redaction.secrets_of(raw))
    if os.environ.get("PGPASSWORD"):
        secrets.append(os.environ["PGPASSWORD"])
    try:
        params: dict[str, Any] = conninfo_to_dict(raw)
    except psycopg.ProgrammingError as exc:
        # libpq quotes the offending part back: scrub every form of the password
        message = redact(str(exc), secrets).strip().splitlines()[0]
        raise UsageError(f"invalid database URL from {source}: {message}") from None
    if params.get("password"):
        secrets.append(str(params["password"]))
    if not params.get("dbname") and not params.get("service") and not os.environ.get("PGDATABASE"):
        params["dbname"] = settings.database.dbname
    params.setdefault(
        "connect_timeout", max(1, int(settings.database.connect_timeout.total_seconds()))
    )
    params.setdefault("application_name", settings.database.application_name)
    return Target(
        conninfo=make_conninfo(**params), source=source, secrets=tuple(secrets), settings=settings
    )


def connect(target: Target, *, autocommit: bool = True, **kwargs: Any) -> psycopg.Connection[Any]:
    """Open a psycopg connection, translating failures into ``KronosError``.

    Server-side prepared statements are off (``prepare_threshold=None``): psycopg prepares a
    query after its fifth run, and behind a transaction pooler (PgBouncer ``pool_mode =
    transaction``) the next transaction may land on a server connection that never saw the
    ``PREPARE``, or one that already has a ``_pg3_0`` from another client.
    """
    kwargs.setdefault("prepare_threshold", None)
    try:
        return psycopg.connect(target.conninfo, autocommit=autocommit, **kwargs)
    except psycopg.Error as exc:
        raise database_error(exc, target) from None


def opener(
    conn: psycopg.Connection[Any], *, same_server: bool = False
) -> Callable[[], psycopg.Connection[Any]]:
    """How to open another connection like ``conn`` (password and application name included).

    Read from ``conn`` now, while it is open: the caller may need the other connection after
    ``conn`` closed (an interrupt closes a connection whose query it cancelled).
    ``same_server``: to the very server ``conn`` reached, not to whichever node of a
    multi-host URL libpq would pick next (a standby's health must not ask the primary).
    The connection opens in autocommit, without server-side prepared statements.
    """
    options = {
        option.keyword.decode(): option.val.decode()
        for option in conn.pgconn.info
        if option.val is not None
    }
    options.pop("hostaddr", None)  # resolved from host; keep libpq's own resolution
    if same_server:
        options["host"], options["port"] = conn.info.host, str(conn.info.port)
        options.pop("target_session_attrs", None)
    conninfo = make_conninfo(**options)
    application = conn.info.parameter_status("application_name") or "kronos-db"
    return lambda: psycopg.connect(
        conninfo, autocommit=True, prepare_threshold=None, application_name=application
    )


@contextmanager
def connection(target: Target, *, autocommit: bool = True) -> Iterator[psycopg.Connection[Any]]:
    """A connection that is closed on exit; database errors inside become ``KronosError``."""
    conn = connect(target, autocommit=autocommit)
    try:
        with conn:
            yield conn
    except psycopg.Error as exc:
        raise database_error(exc, target) from exc


def database_error(exc: BaseException, target: Target) -> KronosError:
    """The one translation of a database error at the connection boundary.

    A permission error says what is missing and the GRANT (or ``bootstrap``) that fixes it
    (:mod:`kronos_db.privileges`); no message carries the password.
    """
    error = translate_database_error(exc, target=target.describe())
    original = getattr(exc, "orig", None) or exc
    if isinstance(original, pg_errors.InsufficientPrivilege):
        error = InsufficientPrivilegeError(_explain_privilege(original, target))
    return type(error)(target.redact(error.message))


def step_error(
    conn: psycopg.Connection[Any], exc: psycopg.Error, settings: Settings | None = None
) -> KronosError:
    """A failed step's error, on a connection that carries on after it (one step of many).

    A permission error says what is missing and the GRANT that fixes it, looked up on ``conn``
    when its failed transaction is over (autocommit), as :func:`database_error` does.
    """
    error = translate_database_error(exc)
    if (
        isinstance(exc, pg_errors.InsufficientPrivilege)
        and not conn.closed
        and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    ):
        from kronos_db import privileges

        try:
            return InsufficientPrivilegeError(privileges.explain(conn, exc, settings))
        except psycopg.Error:
            return error
    return error


def _explain_privilege(exc: pg_errors.InsufficientPrivilege, target: Target) -> str:
    from kronos_db import privileges  # the roles mapping: only on this (rare) path

    message = (exc.diag.message_primary or str(exc)).strip().splitlines()[0]
    user = str(target.params.get("user") or os.environ.get("PGUSER") or "<role>")
    fix = privileges.explain_without_connection(message, user)
    if fix is not None:
        return f"{message}: {fix}"
    try:  # the failed connection may be gone or in a failed transaction: look on a fresh one
        with psycopg.connect(target.conninfo, autocommit=True, prepare_threshold=None) as conn:
            return privileges.explain(conn, exc, target.settings)
    except psycopg.Error:
        return f"{message}: `kronos-db roles check` lists what the roles of the mapping lack"


def set_local(conn: psycopg.Connection[Any], settings: Mapping[str, str]) -> None:
    """``SET LOCAL`` each of ``settings`` in the transaction open on ``conn``.

    A ``SET LOCAL`` ends with its transaction, so it never stays behind on a pooled server
    connection for the services to inherit (a session ``SET`` does, behind PgBouncer in
    transaction mode). On a connection that is not autocommit and has no transaction open, this
    statement opens one (psycopg's implicit ``BEGIN``).
    """
    if settings:
        conn.execute(
            query("db", "set_local_settings"),
            {"names": list(settings), "values": list(settings.values())},
        )


@contextmanager
def transaction_settings(
    conn: psycopg.Connection[Any], settings: Mapping[str, str]
) -> Iterator[psycopg.Connection[Any]]:
    """A transaction with ``settings`` (``lock_timeout``, ``statement_timeout``…) set LOCAL.

    The one way kronos-db changes a setting (see :func:`set_local`). Inside a transaction
    already open on ``conn`` this is a savepoint, and the settings last until the outer
    transaction ends.
    """
    with conn.transaction():
        set_local(conn, settings)
        yield conn


_SETTING_NAME = re.compile(r"^[a-z_]+$")


def set_local_script(settings: Mapping[str, str], *, scope: str = "LOCAL") -> str:
    """The ``SET LOCAL`` statements of ``settings``, for a script printed for review."""
    lines = []
    for name, value in settings.items():
        if not _SETTING_NAME.match(name):
            raise ValueError(f"not a setting name: {name!r}")
        lines.append(f"SET {scope} {name} = {sql.quote(value)};")
    return "\n".join(lines)


def set_session_script(settings: Mapping[str, str]) -> str:
    """``SET SESSION`` statements, for the no-transaction part of a script printed for review."""
    return set_local_script(settings, scope="SESSION")


PoolMode = Literal["none", "session", "transaction"]


def _backend_pid(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(query("db", "select_backend_pid")).fetchone()
    assert row is not None
    return int(row[0])


def detect_pool_mode(target: Target) -> PoolMode:
    """Whether ``target`` reaches the server directly, or through a session or transaction pool.

    * The process key a server sends at login is its backend's pid; a pooler sends a key of its
      own. When ``pg_backend_pid()`` is not the pid the login announced, there is a pooler.
    * A session pool gives a client one server connection for its whole session; a transaction
      pool takes it back after each transaction. So: end a transaction on a first client, open
      one on a second client (PgBouncer hands it the connection released last, its default
      ``server_round_robin = 0``), then ask the first client again. Seeing the first client's
      backend from the second client, or the first client on another backend, is a transaction
      pool; neither is a session pool. (With round-robin reuse the transaction pool can go
      unseen: declare it with ``[database] pooler``.)
    """
    with connection(target) as first:
        first_pid = _backend_pid(first)
        if first.info.backend_pid == first_pid:
            return "none"
        with connection(target, autocommit=False) as second:
            shared = _backend_pid(second) == first_pid
            moved = not shared and _backend_pid(first) != first_pid
            second.rollback()
    return "transaction" if shared or moved else "session"


def require_session(target: Target, pooler: str, purpose: str) -> None:
    """Refuse, in one line, to do ``purpose`` through a transaction pooler.

    ``pooler`` is ``[database] pooler``: ``auto`` detects, anything else is taken as said.
    """
    mode = detect_pool_mode(target) if pooler == "auto" else pooler
    if mode != "transaction":
        return
    how = "detected" if pooler == "auto" else "[database] pooler = transaction"
    raise SessionRequiredError(
        f"{purpose}: that needs one server session, but {target.describe()} is a transaction "
        f"pooler ({how}); point {url_setting(target)} at the server directly or at a pool "
        "with pool_mode = session"
    )


def url_setting(target: Target) -> str:
    """Where the user changes the URL of ``target``, in their words."""
    if target.source.startswith(("option ", "$")):
        return target.source
    if target.source == "libpq":
        return "PGHOST/PGPORT (or --database-url)"
    return f"[database] url in {target.source}"


def database_exists(target: Target) -> bool:
    with connection(maintenance_target(target)) as conn:
        row = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %(name)s::text", {"name": target.dbname}
        ).fetchone()
        return row is not None


def maintenance_target(target: Target) -> Target:
    """The same server and credentials, on the ``postgres`` maintenance database."""
    return target.with_dbname("postgres")


def create_database(target: Target) -> bool:
    """Create the target's database when it does not exist. True when this call created it."""
    name = target.dbname
    if not name:
        raise UsageError("cannot create a database: the connection names no database")
    with connection(maintenance_target(target)) as conn:
        if conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %(name)s::text", {"name": name}
        ).fetchone():
            return False
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        except (pg_errors.DuplicateDatabase, pg_errors.UniqueViolation):
            return False  # another run created it between our check and our CREATE
    return True


def drop_database(target: Target, *, force: bool = True) -> None:
    with connection(maintenance_target(target)) as conn:
        statement = (
            "DROP DATABASE IF EXISTS {} WITH (FORCE)" if force else "DROP DATABASE IF EXISTS {}"
        )
        conn.execute(sql.SQL(statement).format(sql.Identifier(target.dbname)))
