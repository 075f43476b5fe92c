"""`search dashboard`: optuna-dashboard, unmodified, served on the storage the search uses.

optuna-dashboard has no authentication, and anyone who reaches it can delete studies, so it
listens on 127.0.0.1 unless the user names another address.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna

from search.errors import SearchError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080


class DashboardError(SearchError):
    """The dashboard cannot listen where asked; the message says why and what to do."""


class _Server(ThreadingMixIn, WSGIServer):
    # Threads, as optuna-dashboard's own command runs it: the page loads several resources at
    # once. Daemon threads let Ctrl-C end the process even while a browser holds a connection.
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # a line per request would bury the URL the user needs


def exposed(host: str) -> bool:
    """Whether binding `host` lets other machines reach the server."""
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: what it resolves to decides
        try:
            infos = socket.getaddrinfo(host, None)
        except socket.gaierror:
            raise DashboardError(
                f"Cannot resolve the host '{host}'; pass an address such as {DEFAULT_HOST}."
            ) from None
        return not all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def url(host: str, port: int, path: str = "/dashboard") -> str:
    """The address to open; for a wildcard bind, the loopback one works on this machine."""
    host = host.strip("[]")
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}{path}"


@dataclass
class Dashboard:
    server: WSGIServer
    url: str
    exposed: bool

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def serve(self) -> None:
        """Serve until interrupted (Ctrl-C), then release the port."""
        try:
            self.server.serve_forever()
        finally:
            self.server.server_close()


def open_dashboard(
    storage: optuna.storages.BaseStorage, host: str, port: int, study: str | None = None
) -> Dashboard:
    """Bind optuna-dashboard's WSGI app to host:port; the returned Dashboard serves it."""
    import optuna_dashboard

    is_exposed = exposed(host)
    app = optuna_dashboard.wsgi(storage)
    server_class = _Server6 if ":" in host else _Server
    try:
        server = make_server(
            host.strip("[]"), port, app, server_class=server_class, handler_class=_QuietHandler
        )
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise DashboardError(
                f"Port {port} on {host} is already in use; pass --port with another port."
            ) from None
        if e.errno == errno.EACCES:
            raise DashboardError(
                f"Port {port} needs administrator rights; pass --port 1024 or above."
            ) from None
        if e.errno == errno.EADDRNOTAVAIL:
            raise DashboardError(
                f"{host} is not an address of this machine; pass --host {DEFAULT_HOST}."
            ) from None
        raise DashboardError(f"Cannot listen on {host}:{port}: {e.strerror or e}.") from None
    actual = int(server.server_address[1])  # --port 0 lets the system choose
    path = "/dashboard"
    if study is not None:
        path += f"/studies/{storage.get_study_id_from_name(study)}"
    return Dashboard(server=server, url=url(host, actual, path), exposed=is_exposed)
