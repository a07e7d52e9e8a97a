"""Running the service: `tlrepro serve` (uvicorn, loopback only unless told otherwise)."""

from __future__ import annotations

import ipaddress
import logging
import socket
from pathlib import Path

from tlrepro.core.errors import UserError
from tlrepro.serve.guard import LOOPBACK_NAMES


def check_port(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise UserError(f"cannot listen on {host}:{port} ({exc.strerror or exc}): pass another --port, "
                            f"or stop what uses it.") from None


def bound_names(host: str) -> tuple[str, ...]:
    """The Host names a server bound to `host` answers to besides the loopback ones: the address itself when it
    is one specific address (a wildcard such as 0.0.0.0 names none: pass --allow-host)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return () if host in LOOPBACK_NAMES else (host,)
    return () if address.is_loopback or address.is_unspecified else (str(address),)


def serve(models_dir: Path | str | None = None, host: str = "127.0.0.1", port: int = 8000,
          default: str | None = None, allow_hosts: tuple[str, ...] = (), allow_origins: tuple[str, ...] = ()) -> None:
    """Run the service with uvicorn until interrupted."""
    import uvicorn
    from pydantic import ValidationError

    from tlrepro.serve.app import create_app

    if not 0 < int(port) < 65536:
        raise UserError(f"--port must be 1..65535, not {port}.")
    try:
        app = create_app(models_dir, default, allow_hosts=(*bound_names(host), *allow_hosts),
                         allow_origins=tuple(allow_origins))
    except ValidationError as exc:  # a bad --allow-host / --allow-origin
        raise UserError(f"{exc.errors()[0]['msg'].removeprefix('Value error, ')}.") from None
    registry, settings = app.state.registry, app.state.settings
    check_port(host, port)
    if registry.default is not None:  # the app loads it as it starts: /health says `loading` until it is ready
        print(f"loading the default model {registry.default} ({registry.default_reason}) as the server starts; "
              f"/health says \"loading\" until it answers", flush=True)
    else:
        print(f"note: {registry.default_reason}", flush=True)
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        print(f"warning: listening on {host}, reachable from other machines: the API has no authentication.")
    names = ", ".join(sorted({*LOOPBACK_NAMES, *settings.allow_hosts}))
    print(f"answering to Host {names}" + (f"; web pages allowed to POST: {', '.join(settings.allow_origins)}"
                                          if settings.allow_origins else ""), flush=True)
    service_log = logging.getLogger("tlrepro.serve")  # models ready, requests past their deadline
    if not service_log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:  tlrepro: %(message)s"))
        service_log.addHandler(handler)
        service_log.setLevel(logging.INFO)
    shown = f"[{host}]" if ":" in host else host
    print(f"serving {len(registry.entries)} model(s) (default {registry.default or 'none'}) at http://{shown}:{port}/ "
          f"(API docs at /docs); Ctrl-C stops", flush=True)
    uvicorn.run(app, host=host, port=int(port), log_level="info")
