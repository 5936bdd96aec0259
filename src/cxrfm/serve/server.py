"""Starting the HTTP server: check the address before the model loads, then run uvicorn within bounds.

The socket is bound here, before the (slow) model load, and handed to uvicorn as is: a port in use or a
host that does not resolve is a one-line error at once instead of uvicorn's traceback a minute later, and
no other process can take the port in between.
"""
from __future__ import annotations

import ipaddress
import socket

from ..errors import ConfigError

TOKEN_ENV = "CXRFM_TOKEN"


def parse_port(text: str) -> int:
    """``--port`` value -> int in 1..65535 (argparse ``type=``: a ValueError becomes a usage error, exit 2)."""
    import argparse

    try:
        port = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number; use 1-65535, e.g. --port 8000") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is outside 1-65535; use e.g. --port 8000")
    return port


def is_loopback(host: str) -> bool:
    """True when ``host`` only accepts connections from this machine."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name other than localhost may resolve to any interface
        return False


def check_exposure(host: str, token: str | None, insecure: bool) -> str | None:
    """The warning to print for ``host``, or None; refuses a non-loopback bind without a token.

    Without a token anyone who can reach the address could upload images and read the model's answers,
    so binding beyond loopback needs either a token or an explicit ``--insecure``."""
    if is_loopback(host):
        return None
    if token:
        return (f"WARNING: serving on {host}, reachable from other machines. Requests need the token; it travels "
                "in clear over plain HTTP, so put the server behind a TLS proxy (or an SSH tunnel) on a shared network.")
    if not insecure:
        raise ConfigError(f"--host {host} makes the server reachable from other machines without any access check; "
                          f"give a token (--token or the {TOKEN_ENV} environment variable), or pass --insecure to "
                          "accept that anyone on the network can use it")
    return (f"WARNING: serving on {host} WITHOUT A TOKEN (--insecure): anyone who can reach this address can "
            "upload images and read the answers.")


def bind_socket(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (not yet listening); ConfigError naming the fix when it cannot be."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ConfigError(f"--host {host}: cannot resolve it ({e.strerror}); use an address such as 127.0.0.1 "
                          "or 0.0.0.0") from None
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: restart without waiting
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        if e.errno in (98, 48, 10048):  # EADDRINUSE on Linux / macOS / Windows
            raise ConfigError(f"port {port} on {host} is already in use (another cxrfm serve?); choose another "
                              "with --port, or stop the process holding it") from None
        if e.errno in (13, 10013):
            raise ConfigError(f"no permission to bind {host}:{port} (ports below 1024 need root); "
                              "use --port 8000 or another above 1023") from None
        raise ConfigError(f"cannot bind {host}:{port} ({e.strerror}); check --host is an address of this "
                          "machine") from None
    sock.set_inheritable(True)
    return sock


def uvicorn_config(app, sock: socket.socket, settings):
    """Uvicorn's settings for ``app`` on the bound socket, with its connection bounds from ``settings``."""
    import uvicorn

    host, port = sock.getsockname()[:2]
    return uvicorn.Config(app, host=host, port=port, log_level="info",
                          limit_concurrency=settings.max_connections,  # beyond it: 503 at once
                          timeout_keep_alive=settings.keep_alive_s)  # idle keep-alive connections close


def run_server(app, sock: socket.socket, settings) -> None:
    """Serve ``app`` on the bound socket until interrupted."""
    import uvicorn

    uvicorn.Server(uvicorn_config(app, sock, settings)).run(sockets=[sock])
