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
                          http=header_timeout_protocol(settings.header_timeout_s),
                          limit_concurrency=settings.max_connections,  # beyond it: 503 at once
                          timeout_keep_alive=settings.keep_alive_s)  # idle keep-alive connections close


def header_timeout_protocol(seconds: float):
    """Uvicorn's h11 protocol, closing a connection whose request headers are not complete in ``seconds``.

    Uvicorn has no header timeout: a client that sends half a request line and waits keeps its
    connection, and ``max_connections`` of them answer every other client 503 for as long as they like
    (tried: 3 such sockets held a cap of 3 indefinitely). The timer runs from the connection's start and
    from each response's end; it closes only a connection with no request in progress."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutProtocol(H11Protocol):
        _header_timer = None

        def connection_made(self, transport):
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self):
            super().on_response_complete()
            self._arm()  # the next request on this connection gets the same time for its headers

        def connection_lost(self, exc):
            if self._header_timer is not None:
                self._header_timer.cancel()
            super().connection_lost(exc)

        def _arm(self):
            if self._header_timer is not None:
                self._header_timer.cancel()
            if not self.transport.is_closing():
                self._header_timer = self.loop.call_later(seconds, self._headers_overdue)

        def _headers_overdue(self):
            in_progress = self.cycle is not None and not self.cycle.response_complete
            if not in_progress and not self.transport.is_closing():
                self.transport.close()

    return HeaderTimeoutProtocol


def run_server(app, sock: socket.socket, settings) -> None:
    """Serve ``app`` on the bound socket until interrupted."""
    import uvicorn

    uvicorn.Server(uvicorn_config(app, sock, settings)).run(sockets=[sock])
