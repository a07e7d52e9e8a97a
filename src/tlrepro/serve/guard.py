"""The outermost layer of the app: which hosts and which web pages may use the service, and security headers.

- Host allow-list: a request is answered only when its one Host header names this server: a loopback name
  (127.0.0.1, localhost, ::1) or one allowed with --allow-host / serve.allow_hosts. The header is parsed
  strictly: a name or an IPv4 address, or a bracketed IPv6 literal, then an optional port, nothing else
  (`[::1].attacker.example` is not ::1). Anything else is a 421; a missing Host, or more than one, a 400.
  This is what stops DNS rebinding: a page at attacker.example whose name is made to resolve to 127.0.0.1
  still sends `Host: attacker.example`, and gets nothing, not even /health.
- Origin check: a POST (any method that changes or costs something) that carries an Origin header is answered
  only when that origin is this server itself (the web page) or one allowed with --allow-origin /
  serve.allow_origins; other pages get a 403. Clients that are not browsers send no Origin and are answered.
  CORS headers are sent only for allowed origins (and only when some are allowed), by starlette's middleware.
- nosniff and no-referrer everywhere; a strict Content-Security-Policy on the page and its static files.

Starlette's TrustedHostMiddleware answers a plain-text 400; this answers JSON errors like the rest of the API.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from starlette.datastructures import Headers
from starlette.responses import JSONResponse

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
            "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


HOST_HEADER = re.compile(r"(?:\[(?P<v6>[0-9a-f:.]+)\]|(?P<name>[a-z0-9_.-]+))(?::[0-9]{1,5})?")


def host_name(header: str) -> str | None:
    """The name part of a Host header (`name`, `name:port`, `[v6]` or `[v6]:port`), lower case; None for
    anything else (a bracketed literal followed by more than a port, an unbracketed IPv6, userinfo...)."""
    found = HOST_HEADER.fullmatch(header.strip().lower())
    return None if found is None else found["v6"] or found["name"]


class Guard:
    """ASGI middleware: Host allow-list, Origin check on unsafe methods, security headers on every answer."""

    def __init__(self, app: Any, hosts: Iterable[str] = (), origins: Iterable[str] = ()) -> None:
        self.app = app
        self.hosts = frozenset(LOOPBACK_NAMES) | {h.strip("[]").lower() for h in hosts}
        self.origins = frozenset(o.rstrip("/").lower() for o in origins)

    def refusal(self, scope: dict, headers: Headers) -> tuple[int, str] | None:
        hosts = headers.getlist("host")
        if len(hosts) > 1:
            return 400, "the request has more than one Host header: send one, naming this server."
        host = hosts[0] if hosts else ""
        if not host:
            return 400, "the request has no Host header: send one naming this server (HTTP/1.1 requires it)."
        if (name := host_name(host)) not in self.hosts:
            allow = (f"If people reach it under that name, start it with --allow-host {name[:100]}" if name else
                     "A Host is a name or an address, or a bracketed IPv6 address, then an optional :port")
            return 421, (f"this server does not answer to Host `{host[:100]}`: it answers to "
                         f"{', '.join(sorted(self.hosts))}. {allow} (this check stops DNS-rebinding pages).")
        origin = headers.get("origin")
        if scope["method"] in SAFE_METHODS or origin is None:
            return None
        if origin.rstrip("/").lower() in self.origins or origin.lower() == f"{scope['scheme']}://{host}".lower():
            return None
        return 403, (f"a {scope['method']} from the web page at `{origin[:100]}` is refused: only this server's own "
                     f"page may send one. To let that page use the API, start the server with "
                     f"--allow-origin {origin[:100]}.")

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        page = path == "/" or path.startswith("/static/")

        async def with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                extra = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]
                if page:
                    extra += [(b"content-security-policy", PAGE_CSP.encode()), (b"x-frame-options", b"DENY")]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        refused = self.refusal(scope, Headers(scope=scope))
        if refused is not None:
            status, text = refused
            return await JSONResponse({"error": text}, status_code=status)(scope, receive, with_headers)
        await self.app(scope, receive, with_headers)
