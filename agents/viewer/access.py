"""Who may talk to the viewer. Bound to loopback it needs no token but answers only requests
addressed to a loopback name (a DNS-rebinding page cannot read it); with a token, every
request must carry it: `?token=` once (then a cookie), a cookie, or `Authorization: Bearer`.
Every response forbids scripts, framing and content sniffing.
"""
from __future__ import annotations

import hmac
import ipaddress
import secrets
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
                               "frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def is_loopback(host: str) -> bool:
    """True for names and addresses that only this machine can reach."""
    host = host.strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def new_token() -> str:
    return secrets.token_urlsafe(24)


def _host_name(header: str) -> str:
    """The name part of a Host header: 'localhost:8000' -> 'localhost', '[::1]:8000' -> '::1'."""
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class Gate:
    """The access check, as an HTTP middleware: `await gate(request, call_next)`."""

    def __init__(self, token: str | None):
        self.token = token

    def cookie_name(self, request: Request) -> str:
        return f"cubepilot_token_{request.url.port or 80}"

    def _matches(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def _denied(self, request: Request, status: int, message: str) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": message}, status, headers={"WWW-Authenticate": "Bearer"}
                                if status == 401 else None)
        return PlainTextResponse(message + "\n", status, headers={"WWW-Authenticate": "Bearer"}
                                 if status == 401 else None)

    def check(self, request: Request) -> Response | None:
        """None when the request may go on, else the response that refuses it."""
        if self.token is None:
            host = _host_name(request.headers.get("host", ""))
            if not is_loopback(host):
                return self._denied(request, 403, f"This viewer serves loopback only and was reached as {host!r}. "
                                    "Open it as http://127.0.0.1:PORT/, or restart it with --host and --token.")
            return None
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer ") and self._matches(auth[7:].strip()):
            return None
        if self._matches(request.cookies.get(self.cookie_name(request))):
            return None
        if self._matches(request.query_params.get("token")):
            if request.url.path.startswith("/api/") or request.method != "GET":
                return None
            rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            target = request.url.path + (f"?{urlencode(rest)}" if rest else "")
            response = RedirectResponse(target, 303)
            response.set_cookie(self.cookie_name(request), self.token, httponly=True, samesite="strict")
            return response
        return self._denied(request, 401, "This viewer needs its access token: open the URL that `cubepilot serve` "
                            "printed (it ends in ?token=...), or send the header 'Authorization: Bearer TOKEN'.")

    async def __call__(self, request: Request, call_next) -> Response:
        response = self.check(request) or await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response
