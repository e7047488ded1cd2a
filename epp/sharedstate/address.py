"""``--state-store`` URL → where the shared store is: ``redis://[user:password@]host[:port][/db]``."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from epp.errors import ConfigError

__all__ = ["FLAG", "StoreAddress", "parse_store_url"]

FLAG = "--state-store"
_DEFAULT_PORT = 6379


@dataclass(frozen=True, slots=True)
class StoreAddress:
    host: str
    port: int = _DEFAULT_PORT
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def __str__(self) -> str:
        # Never the password: this string goes to logs and /debug.
        return f"redis://{self.host}:{self.port}/{self.db}"


def _fail(url: str, why: str) -> ConfigError:
    shown = url.split("@")[-1]  # never credentials in a message
    return ConfigError(FLAG, f"{why}; expected redis://host:port/db", shown)


def parse_store_url(url: str) -> StoreAddress:
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as e:
        raise _fail(url, str(e)) from None
    if parts.scheme != "redis":
        raise _fail(url, f"unsupported scheme {parts.scheme!r}; only redis:// is supported")
    if not parts.hostname:
        raise _fail(url, "no host")
    if parts.query or parts.fragment:
        raise _fail(url, "query and fragment are not supported")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise _fail(url, f"database must be a number, got {path!r}")
    db = int(path) if path else 0
    if db > 15:
        raise _fail(url, f"database {db} is out of range 0-15")
    return StoreAddress(parts.hostname, port or _DEFAULT_PORT, db,
                        unquote(parts.username) if parts.username else None,
                        unquote(parts.password) if parts.password else None)
