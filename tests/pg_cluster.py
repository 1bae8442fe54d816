"""A throwaway PostgreSQL cluster for tests, started from the installed binaries (initdb, pg_ctl).

Runs on a free loopback port in a temporary directory, so the tests need PostgreSQL installed but not running.
One cluster per test process, started on first use and stopped at exit. Each test gets a new database cloned
from a migrated template (``CREATE DATABASE ... TEMPLATE``), which takes a few tens of milliseconds.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
from pathlib import Path

import psycopg

from stepline.core.ids import new_ulid

TEMPLATE = "stepline_template"


def find_bindir() -> Path | None:
    """The directory with initdb and pg_ctl: $STEPLINE_PG_BINDIR, pg_config, or Debian's layout."""
    env = os.environ.get("STEPLINE_PG_BINDIR")
    if env:
        return Path(env)
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False).stdout.strip()
        if out and (Path(out) / "initdb").exists():
            return Path(out)
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgCluster:
    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="stepline-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.user = "postgres"
        self._as_user: list[str] = []
        if os.geteuid() == 0:  # initdb refuses to run as root: run the server as the postgres user
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            self._as_user = ["runuser", "-u", "postgres", "--"]
        self._lock = threading.Lock()

    def _run(self, *args: str) -> None:
        cmd = [*self._as_user, str(self.bindir / args[0]), *args[1:]]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", self.user, "-E", "UTF8", "--no-sync")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(
                f"port = {self.port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{self.root}'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 200\n"
            )
        self.start()

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, *, migrated: bool = True) -> str:
        """A new, empty database, migrated to the latest version unless ``migrated`` is False (then it holds no
        table at all); returns its URL."""
        name = f"t_{new_ulid().lower()}"
        with self._lock, psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE {TEMPLATE if migrated else "template0"}')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def make_template(self) -> None:
        from stepline.storage.postgres.store import migrate

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {TEMPLATE}")
        with psycopg.connect(self.url(TEMPLATE), autocommit=True) as conn:
            migrate(conn)

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        except RuntimeError:
            pass
        shutil.rmtree(self.root, ignore_errors=True)


_cluster: PgCluster | None = None
_cluster_lock = threading.Lock()


def get_cluster() -> PgCluster | None:
    """The process's test cluster (started on first call), or None if PostgreSQL is not installed."""
    global _cluster
    with _cluster_lock:
        if _cluster is None:
            bindir = find_bindir()
            if bindir is None:
                return None
            cluster = PgCluster(bindir)
            cluster.init()
            cluster.make_template()
            atexit.register(cluster.destroy)
            _cluster = cluster
        return _cluster
