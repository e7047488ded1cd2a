"""Bearer-token auth for the admin server (``--admin-token-file``): everything but the probes.

The Go EPP guards ``/metrics`` with Kubernetes authn/authz (``--metrics-endpoint-auth``);
without an API server we take a shared secret from a file instead (a mounted Secret, say).
The file is read at start and again whenever its stat signature changes, so rotating the
token needs no restart. A file that becomes unreadable or empty keeps the last good
token rather than opening the endpoints. ``/healthz`` and ``/readyz`` stay open: probes
carry no credentials.

In the admin middleware chain (``epp/server/middleware.py``) this sits after the request
id and panic recovery and before the rate limit: a ``401`` has the shared error shape
(``epp/server/apierrors.py``) with a request id, and requests without the token spend no
rate-limit tokens. Its message names the flag, never the file's path or the token.
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from epp.errors import ConfigError
from epp.server.apierrors import error_response

__all__ = ["OPEN_PATHS", "TokenFile", "bearer_auth_middleware"]

log = logging.getLogger("epp.admin")

OPEN_PATHS = frozenset({"/healthz", "/readyz"})
# A token is a secret, not a document: refuse to read megabytes from a wrong path.
_MAX_TOKEN_BYTES = 4096

def _read_token(path: Path) -> bytes:
    with open(path, "rb") as f:
        data = f.read(_MAX_TOKEN_BYTES + 1)
    if len(data) > _MAX_TOKEN_BYTES:
        raise ValueError(f"longer than {_MAX_TOKEN_BYTES} bytes")
    token = data.strip()
    if not token:
        raise ValueError("empty")
    return token


class TokenFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._token = _read_token(path)
            self._signature = self._stat()
        except OSError as exc:
            raise ConfigError("--admin-token-file", f"cannot read {path}: {exc.strerror}") from exc
        except ValueError as exc:
            raise ConfigError("--admin-token-file", f"{path}: token {exc}") from exc

    def _stat(self) -> tuple[int, int, int, int]:
        st = os.stat(self.path)
        return st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev

    def current(self) -> bytes:
        """The token, re-read first if the file changed since the last read."""
        try:
            signature = self._stat()
            if signature != self._signature:
                self._signature = signature
                self._token = _read_token(self.path)
                log.info("admin token reloaded from %s", self.path)
        except (OSError, ValueError) as exc:
            log.warning("admin token file %s unusable (%s); keeping the previous token", self.path, exc)
        return self._token

    def matches(self, authorization: str | None) -> bool:
        if authorization is None:
            return False
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return False
        # Constant time: a byte-by-byte early exit would leak how much of a guess is right.
        return hmac.compare_digest(credentials.strip().encode("utf-8", "surrogateescape"), self.current())


def bearer_auth_middleware(token: TokenFile, wall_clock: Callable[[], float] = time.time) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        # Deny by default: only the probes are open, so a route added later is guarded too.
        if request.path not in OPEN_PATHS and not token.matches(request.headers.get("Authorization")):
            # Names the flag, never the file's path or anything of the token.
            return error_response(request, 401, "a bearer token is required (see --admin-token-file)",
                                  headers={"WWW-Authenticate": 'Bearer realm="epp-admin"'}, wall_clock=wall_clock)
        return await handler(request)

    return middleware
