"""A throwaway PostgreSQL server for the tests: Debian's binaries, on loopback, with passwords.

The server runs for the test session in a temporary folder and is removed at its end. Clients
reach it over TCP on 127.0.0.1 with password (SCRAM) authentication, as a real deployment
would, so a test can put a real password in a storage URL. PostgreSQL refuses to run as root;
under root the cluster belongs to the `postgres` user that Debian's package creates.

`start_cluster` raises RuntimeError when it cannot start one, so the benchmarks can use it too;
the `postgres` fixture turns that into a test failure.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

ROLE = "search"  # the role the tests connect as: not a superuser, owns its databases
SERVER_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "max_connections": "200",
    # A throwaway server: durability only costs time.
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
}


def bindir() -> Path | None:
    """The newest installed server's binaries (Debian keeps them out of PATH)."""
    found = [d for d in Path("/usr/lib/postgresql").glob("*/bin") if (d / "initdb").is_file()]
    found.sort(key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0)
    return found[-1] if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Cluster:
    bindir: Path
    root: Path
    port: int
    password: str

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, database: str, *, password: bool = True) -> str:
        """A SQLAlchemy URL for `database`, with the role's password in it unless told not."""
        auth = f"{ROLE}:{self.password}" if password else ROLE
        return f"postgresql+psycopg://{auth}@127.0.0.1:{self.port}/{database}"

    def admin(self, sql: str) -> None:
        """Run `sql` as the superuser, over the cluster's private Unix socket."""
        with psycopg.connect(
            host=str(self.root),
            port=self.port,
            user="postgres",
            dbname="postgres",
            autocommit=True,
        ) as conn:
            conn.execute(sql)

    def create_database(self) -> str:
        name = f"t_{secrets.token_hex(6)}"
        self.admin(f'CREATE DATABASE "{name}" OWNER {ROLE}')
        return name

    def restart(self) -> None:
        """Restart the server as an operator would (`pg_ctl restart -m fast`): every client's
        connection is cut, and it returns once the server accepts connections again."""
        run_as_owner(
            [
                *(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log")),
                *("-m", "fast", "-w", "-t", "60", "restart"),  # postmaster.opts: same options
            ]
        )
        self.admin("SELECT 1")

    def stop(self) -> None:
        run_as_owner(
            [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"],
            check=False,
        )
        shutil.rmtree(self.root, ignore_errors=True)


def run_as_owner(command: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    if os.geteuid() == 0:
        command = ["runuser", "-u", "postgres", "--", *command]
    return subprocess.run(command, check=check, capture_output=True, text=True, timeout=120)


def start_cluster(settings: dict[str, str] | None = None) -> Cluster:
    """initdb a new cluster in a temporary folder and start it on a free loopback port.

    `settings` override the throwaway server's (durability off) where a caller measures it.
    Raises RuntimeError, with a sentence that says why, if there is no server to start or it
    does not start; nothing is left behind then.
    """
    binaries = bindir()
    if binaries is None:
        raise RuntimeError(
            "PostgreSQL server binaries are missing (/usr/lib/postgresql/*/bin): "
            "run 'bash .ci/setup --test', which installs Debian's postgresql."
        )
    root = Path(tempfile.mkdtemp(prefix="search-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, user="postgres", group="postgres")
    password = f"pw-{secrets.token_hex(8)}"
    superuser_password = root / "superuser-password"
    superuser_password.write_text(secrets.token_hex(16))
    if os.geteuid() == 0:
        shutil.chown(superuser_password, user="postgres", group="postgres")
    try:
        run_as_owner(
            [
                str(binaries / "initdb"),
                "-D",
                str(root / "data"),
                "-U",
                "postgres",
                f"--pwfile={superuser_password}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
            ]
        )
        options = " ".join(
            f"-c {k}={v}" for k, v in {**SERVER_SETTINGS, **(settings or {})}.items()
        )
        for attempt in range(3):  # another program may take the free port first
            cluster = Cluster(binaries, root, free_port(), password)
            started = run_as_owner(
                [
                    str(binaries / "pg_ctl"),
                    "-D",
                    str(cluster.data),
                    "-l",
                    str(root / "log"),
                    "-w",
                    "-t",
                    "60",
                    "-o",
                    f"-p {cluster.port} -c unix_socket_directories={root} {options}",
                    "start",
                ],
                check=False,
            )
            if started.returncode == 0:
                break
            if attempt == 2:
                log = (root / "log").read_text() if (root / "log").exists() else ""
                raise RuntimeError(f"pg_ctl start failed: {started.stderr}{log[-2000:]}")
        cluster.admin(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{password}'")
        return cluster
    except (subprocess.CalledProcessError, RuntimeError, OSError, psycopg.Error) as e:
        detail = e.stderr if isinstance(e, subprocess.CalledProcessError) else str(e)
        if (root / "data" / "postmaster.pid").exists():  # started, then the role failed
            run_as_owner(
                [
                    str(binaries / "pg_ctl"),
                    "-D",
                    str(root / "data"),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ],
                check=False,
            )
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"Could not start a throwaway PostgreSQL server: {detail}") from e


@pytest.fixture(scope="session")
def postgres() -> Iterator[Cluster]:
    """One PostgreSQL server for the whole session, stopped and deleted at its end."""
    try:
        cluster = start_cluster()
    except RuntimeError as e:
        pytest.fail(str(e))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(postgres: Cluster) -> str:
    """A fresh, empty database for one test; its URL carries the password."""
    return postgres.url(postgres.create_database())
