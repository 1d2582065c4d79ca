"""Passwords never leave kronos-db: finding them in connection strings, and masking them.

A password reaches kronos-db inside a connection string, a URL
(``postgresql://user:password@host/db``) or a libpq keyword string (``host=h password=secret``),
from an option, the environment or the configuration file, written however its owner wrote it:
percent-escaped or not, quoted, with backslash escapes, spaces or ``@``. libpq's own parser
quotes the offending part of a malformed string back in its error (``invalid percent-encoded
token: "pa%zzss"``), and a malformed URL can put part of the password where the host belongs.
So this module reads connection strings itself, the way libpq does, and

* :func:`check` refuses a string libpq would misread or quote back, with a reason that names
  what to fix and never its text;
* :func:`secrets_of` lists every form of its password to scrub from any text (as written, as
  decoded, quoted);
* :func:`mask` shows one whole string with its password replaced by ``****``;
* :func:`redact` scrubs known secrets, and anything shaped like a password, from free text.

Nothing here imports psycopg: an error message can be made safe before any database code ran.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

MASK = "****"
# shorter secrets are not scrubbed from free text: they would garble every message (``ab``)
MINIMUM_SECRET_LENGTH = 3

_SCHEME = re.compile(r"^(?P<scheme>postgres(?:ql)?(?:\+[a-z0-9]+)?)://", re.IGNORECASE)
_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")

# shapes of a password in free text (an error message, a log line)
_URL_PASSWORD = re.compile(
    r"(?P<head>[a-z][a-z0-9+.-]*://[^\s:/@]*:)(?P<secret>[^\s/]*)(?=@)", re.I
)
_KEYWORD_PASSWORD = re.compile(
    r"(?P<head>\bpassword\s*=\s*)(?P<secret>'(?:[^'\\]|\\.)*'?|(?:\\.|[^\s\\])+)", re.I
)
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&]password=)(?P<secret>[^&\s#]*)", re.I)


class ConnectionStringError(ValueError):
    """A connection string libpq would misread; the message never quotes the string."""


@dataclass(frozen=True)
class _Password:
    written: str  # as it stands in the string (escapes and quotes included)
    value: str  # what libpq passes to the server


def _unquote_percent(text: str) -> str:
    from urllib.parse import unquote

    return unquote(text, errors="strict")


def _url_passwords(text: str, scheme_end: int) -> list[_Password]:
    """The passwords of a URL (in the user info and the ``?password=`` parameter)."""
    query_start = text.find("?", scheme_end)
    path_end = len(text) if query_start < 0 else query_start
    authority_end = text.find("/", scheme_end, path_end)
    authority_end = path_end if authority_end < 0 else authority_end
    authority = text[scheme_end:authority_end]
    found: list[_Password] = []
    if "@" in text[authority_end:path_end]:
        raise ConnectionStringError(
            "an @ after a / in the URL: a / or @ in the user name or password must be "
            "percent-encoded (/ is %2F, @ is %40)"
        )
    if authority.count("@") > 1:
        raise ConnectionStringError(
            "more than one @ before the host: an @ in the user name or password must be "
            "percent-encoded as %40"
        )
    if "@" in authority:
        userinfo = authority.rpartition("@")[0]
        if _ESCAPE.search(userinfo):
            raise ConnectionStringError(
                "an invalid percent-escape in the user name or password: a % must be followed by "
                "two hexadecimal digits (write % itself as %25)"
            )
        _user, colon, written = userinfo.partition(":")
        if colon:
            try:
                found.append(_Password(written, _unquote_percent(written)))
            except UnicodeDecodeError:
                raise ConnectionStringError(
                    "the percent-escapes of the password are not UTF-8"
                ) from None
    if query_start >= 0:
        for parameter in text[query_start + 1 :].split("&"):
            name, _, written = parameter.partition("=")
            if name.lower() == "password":
                try:
                    found.append(_Password(written, _unquote_percent(written)))
                except UnicodeDecodeError:
                    found.append(_Password(written, written))
    return found


def _keyword_pairs(text: str) -> list[tuple[str, str, str]]:
    """``(keyword, value as written, value)`` of a libpq keyword string, as libpq reads it."""
    pairs: list[tuple[str, str, str]] = []
    position, length = 0, len(text)
    while True:
        while position < length and text[position].isspace():
            position += 1
        if position >= length:
            return pairs
        start = position
        while position < length and not text[position].isspace() and text[position] != "=":
            position += 1
        keyword = text[start:position]
        while position < length and text[position].isspace():
            position += 1
        if position >= length or text[position] != "=":
            raise ConnectionStringError(
                f"expected keyword=value at character {start + 1}; a value with spaces must be "
                "quoted (password='a b') or its spaces escaped (password=a\\ b)"
            )
        position += 1
        while position < length and text[position].isspace():
            position += 1
        value_start = position
        value: list[str] = []
        if position < length and text[position] == "'":
            position += 1
            while True:
                if position >= length:
                    raise ConnectionStringError(
                        f"a quoted value that is never closed (from character {value_start + 1})"
                    )
                char = text[position]
                if char == "\\" and position + 1 < length:
                    value.append(text[position + 1])
                    position += 2
                    continue
                position += 1
                if char == "'":
                    break
                value.append(char)
        else:
            while position < length and not text[position].isspace():
                char = text[position]
                if char == "\\" and position + 1 < length:
                    value.append(text[position + 1])
                    position += 2
                    continue
                value.append(char)
                position += 1
        pairs.append((keyword, text[value_start:position], "".join(value)))


def _passwords(text: str) -> list[_Password]:
    text = text.strip()
    if not text:
        return []
    scheme = _SCHEME.match(text)
    if scheme:
        return _url_passwords(text, scheme.end())
    return [
        _Password(written, value)
        for keyword, written, value in _keyword_pairs(text)
        if keyword.lower() == "password"
    ]


def check(text: str) -> None:
    """Raise :class:`ConnectionStringError` when libpq would misread ``text`` or quote it back."""
    _passwords(text)


def secrets_of(text: str) -> tuple[str, ...]:
    """Every form of the password(s) of connection string ``text`` to scrub from output: the
    whole string, and each password as written and as decoded (whatever parses)."""
    found = {text.strip()} if text.strip() else set()
    try:
        passwords = _passwords(text)
    except ConnectionStringError:
        passwords = []
    for password in passwords:
        found.update({password.written, password.value, password.written.strip("'")})
    return tuple(sorted(found, key=len, reverse=True))


def mask(text: str) -> str:
    """Connection string ``text`` with its password(s) shown as ``****``."""
    stripped = text.strip()
    try:
        check(stripped)
    except ConnectionStringError:
        return _mask_malformed(stripped)
    scheme = _SCHEME.match(stripped)
    if scheme is None:
        return " ".join(
            f"{keyword}={MASK if keyword.lower() == 'password' else written}"
            for keyword, written, _ in _keyword_pairs(stripped)
        )
    start = scheme.end()
    query_start = stripped.find("?", start)
    path_end = len(stripped) if query_start < 0 else query_start
    authority_end = stripped.find("/", start, path_end)
    authority_end = path_end if authority_end < 0 else authority_end
    authority = stripped[start:authority_end]
    if "@" in authority:
        userinfo, _, host = authority.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        authority = f"{user}:{MASK}@{host}" if colon else authority
    query = "" if query_start < 0 else stripped[query_start:]
    masked_query = _QUERY_PASSWORD.sub(lambda m: m.group("head") + MASK, query)
    return stripped[:start] + authority + stripped[authority_end:path_end] + masked_query


def _mask_malformed(text: str) -> str:
    """A string :func:`check` refuses, its password's whereabouts masked generously: in a URL
    everything between ``://`` and the last ``@``, in a keyword string everything after
    ``password=``."""
    scheme = _SCHEME.match(text)
    if scheme:
        at = text.rfind("@")
        return text[: scheme.end()] + MASK + (text[at:] if at > scheme.end() else "")
    keyword = re.search(r"\bpassword\s*=", text, re.IGNORECASE)
    return text[: keyword.end()] + MASK if keyword else redact(text)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every known secret, and anything shaped like a password, masked."""
    for secret in sorted(set(secrets), key=len, reverse=True):
        if len(secret) >= MINIMUM_SECRET_LENGTH:
            text = text.replace(secret, MASK)
    for pattern in (_URL_PASSWORD, _KEYWORD_PASSWORD, _QUERY_PASSWORD):
        text = pattern.sub(lambda m: m.group("head") + MASK, text)
    return text


__all__ = ["MASK", "ConnectionStringError", "check", "mask", "redact", "secrets_of"]
