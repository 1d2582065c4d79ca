"""A password never shows, however it is written: a table of awkward passwords against real SCRAM.

The shared server trusts every login but one role, whose password other runs rely on, so these
tests build a server of their own (``initdb`` in a temporary directory, as tests/standby.py
does): ``postgres`` is trusted, every other role logs in with ``scram-sha-256``. Each password
of the table gets a role, and is written every way a user writes it: percent-escaped in a URL,
quoted or backslash-escaped in a keyword string, in an option, the environment and the
configuration file. The right one connects; a wrong one is refused; a malformed string is
refused before libpq can quote it back; and no output, log line or error holds any form of it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pwd
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from conftest import CliResult, run_cli
from psycopg import sql
from standby import BIN, Server, _run, free_port

from kronos_db import redaction

# Every password mixes the characters that broke masking before; its alphanumeric pieces are
# distinctive, so finding one in any output means a leak, not a coincidence.
PASSWORDS = [
    "Kv7 Jq9@Xw2:Zt5/Ym4",  # a space, @, :, /
    "50%Qd8-Hn3%zz",  # percent signs that are no escape
    "%41%42Pw3-Lk8",  # text that reads like escapes
    'it\'s "Rq5" Fb2',  # quotes
    "Bk4\\Sl6\\ Gz1\\",  # backslashes, one before a space, one at the end
    "Ün7€Wy6 Cx9",  # not ASCII
]


@dataclasses.dataclass(frozen=True)
class Probe:
    role: str
    password: str
    port: int

    def url(self, password: str | None = None, *, escape: bool = True) -> str:
        secret = self.password if password is None else password
        written = quote(secret, safe="") if escape else secret
        return f"postgresql://{self.role}:{written}@127.0.0.1:{self.port}/kronos_probe"

    def keywords(self, password: str | None = None, *, quoted: bool = True) -> str:
        secret = self.password if password is None else password
        escaped = secret.replace("\\", "\\\\").replace("'", "\\'")
        value = f"'{escaped}'" if quoted else escaped.replace(" ", "\\ ")
        return (
            f"host=127.0.0.1 port={self.port} dbname=kronos_probe user={self.role} password={value}"
        )

    def forms(self) -> set[str]:
        """Every form of the password, and each of its distinctive pieces."""
        forms = {
            self.password,
            quote(self.password, safe=""),
            self.password.replace("\\", "\\\\").replace("'", "\\'"),
        }
        forms |= {piece for piece in re.split(r"[^0-9A-Za-zÜü€]+", self.password) if len(piece) > 2}
        return forms


def assert_no_leak(result: CliResult, probe: Probe) -> None:
    for form in probe.forms():
        assert form not in result.output, f"{form!r} of {probe.password!r} leaked:\n{result.output}"


@pytest.fixture(scope="module")
def scram_server() -> Iterator[Server]:
    if not (BIN / "initdb").exists():
        pytest.skip("PostgreSQL 15's server programs are not installed: run .ci/run")
    directory = Path(tempfile.mkdtemp(prefix="kronos-scram-"))
    if os.geteuid() == 0:
        postgres = pwd.getpwnam("postgres")
        os.chown(directory, postgres.pw_uid, postgres.pw_gid)
    server = Server("scram", directory / "data", free_port())
    try:
        _run(
            [
                str(BIN / "initdb"),
                "-D",
                str(server.data),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
            ]
        )
        hba = server.data / "pg_hba.conf"
        hba.write_text(
            "local all all trust\n"
            "host all postgres 127.0.0.1/32 trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n",
            encoding="utf-8",
        )
        with (server.data / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write(
                f"listen_addresses = '127.0.0.1'\nport = {server.port}\n"
                f"unix_socket_directories = '{directory}'\nfsync = off\n"
                "password_encryption = 'scram-sha-256'\nshared_buffers = 16MB\n"
                "max_connections = 20\n"
            )
        server.start()
        server.execute("CREATE DATABASE kronos_probe")
        yield server
    finally:
        server.stop("immediate")
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def probes(scram_server: Server) -> list[Probe]:
    found = []
    with scram_server.connect() as conn:
        for number, password in enumerate(PASSWORDS):
            role = f"kronos_probe_{number}"
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(role), sql.Literal(password)
                )
            )
            found.append(Probe(role, password, scram_server.port))
    return found


def test_the_right_password_connects_written_every_way(probes: list[Probe], tmp_path: Path) -> None:
    for probe in probes:
        config = tmp_path / f"{probe.role}.toml"
        # TOML basic string: backslashes and double quotes escaped
        toml_value = probe.keywords(quoted=False).replace("\\", "\\\\").replace('"', '\\"')
        config.write_text(f'[database]\nurl = "{toml_value}"\n', encoding="utf-8")
        runs = [
            run_cli("status", "--database-url", probe.url()),
            run_cli("status", env={"KRONOS_DATABASE_URL": probe.keywords()}),
            run_cli("status", "--config", str(config)),
            run_cli("-vv", "--log-format", "json", "status", "--database-url", probe.keywords()),
        ]
        for result in runs:
            # connected, read the (empty) migration history: every revision is pending
            assert result.code == 5, f"{probe.password!r}: {result.output}"
            assert_no_leak(result, probe)
        shown = run_cli("config", "show", "--json", "--config", str(config))
        assert shown.code == 0, shown.output
        assert_no_leak(shown, probe)
        rows = {row["key"]: row for row in json.loads(shown.stdout)["settings"]}
        assert redaction.MASK in rows["database.url"]["value"]


def test_a_wrong_password_is_refused_without_showing_it(probes: list[Probe]) -> None:
    for probe in probes:
        wrong = Probe(probe.role, probe.password[::-1] + "Vv0", probe.port)
        for result in (
            run_cli("status", "--database-url", wrong.url()),
            run_cli("status", env={"KRONOS_DATABASE_URL": wrong.keywords(quoted=False)}),
        ):
            assert result.code == 3, result.output
            assert "password authentication failed" in result.stderr
            assert_no_leak(result, wrong)
            assert_no_leak(result, probe)


def test_a_malformed_string_is_refused_before_libpq_can_quote_it(probes: list[Probe]) -> None:
    for probe in probes:
        raw_url = probe.url(escape=False)  # @, / and % as they are: libpq would misread them
        try:
            redaction.check(raw_url)
        except redaction.ConnectionStringError:
            result = run_cli("status", "--database-url", raw_url)
            assert result.code == 2, result.output
            assert result.stderr.startswith("kronos-db: error: invalid database URL from option")
            assert_no_leak(result, probe)
        unquoted = probe.keywords().replace("password='", "password=").rstrip("'")
        if " " in probe.password:  # a space in an unquoted value ends it
            result = run_cli("config", "show", env={"KRONOS_DATABASE_URL": unquoted})
            assert result.code == 2, result.output
            assert_no_leak(result, probe)


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("postgresql://app:t0p-s3cret@db/kronos", "postgresql://app:****@db/kronos"),
        ("postgresql://app:p%40ss@db/k?sslmode=require&password=x1y2", None),
        ("host=db password=my\\ secret dbname=k", "host=db password=**** dbname=k"),
        ("host=db password='it\\'s a secret' dbname=k", "host=db password=**** dbname=k"),
        ("postgresql://app:p@ss@db/k", "postgresql://****@db/k"),
        ("postgresql://app:pa%zzss@db/k", "postgresql://****@db/k"),
        ("postgresql://app:p/ss@db/k", "postgresql://****@db/k"),
        ("host=db password=a b", "host=db password=****"),
        ("host=db password='never closed", "host=db password=****"),
    ],
)
def test_mask_shows_a_connection_string_without_its_password(text: str, masked: str | None) -> None:
    shown = redaction.mask(text)
    if masked is not None:
        assert shown == masked
    for secret in ("t0p-s3cret", "p@ss", "p%40ss", "x1y2", "my\\ secret", "secret", "pa%zzss"):
        assert secret not in shown
    assert not any(secret in redaction.redact(f"error: {text}") for secret in ("t0p", "s3cret"))


def test_secrets_of_lists_every_form_of_the_password() -> None:
    forms = redaction.secrets_of("postgresql://app:50%25off%40home@db/k")
    assert {"50%25off%40home", "50%off@home"} <= set(forms)
    forms = redaction.secrets_of("host=db password='it\\'s' user=x")
    assert {"'it\\'s'", "it's"} <= set(forms)
