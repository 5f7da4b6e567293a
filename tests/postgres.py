"""A real PostgreSQL server for the tests: Debian's binaries, a throwaway cluster, an unprivileged owner.

PostgreSQL refuses to run as root, so under root (CI) the cluster belongs to the ``postgres``
system user the Debian package creates; elsewhere it runs as whoever runs the tests. It
listens on a free localhost port with trust authentication, and lives in a temporary
directory removed at the end of the session.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

from tests.ports import free_port


def find_binaries() -> Path | None:
    """Debian keeps initdb and pg_ctl off PATH, under /usr/lib/postgresql/<version>/bin."""
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(candidate) / "initdb").is_file():
            return Path(candidate)
    found = shutil.which("initdb")
    return Path(found).parent if found else None


class PostgresServer:
    def __init__(self, binaries: Path) -> None:
        self.binaries = binaries
        self.root = Path(tempfile.mkdtemp(prefix="fitgate-pg-"))
        self.user: str | None = "postgres" if os.geteuid() == 0 else None
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self.port = free_port()
        self.data = self.root / "data"

    def _run(self, *command: str) -> None:
        subprocess.run(command, check=True, capture_output=True, user=self.user, cwd=self.root)

    def start(self) -> None:
        self._run(str(self.binaries / "initdb"), "-D", str(self.data), "-U", "fitgate", "--auth=trust", "-E", "UTF8")
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.root} " \
            "-c max_connections=300 -c fsync=off -c synchronous_commit=off"  # fmt: skip
        self._run(str(self.binaries / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"),
                  "-o", options, "-w", "-t", "60", "start")  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            try:
                psycopg.connect(self.url("postgres"), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise

    def url(self, database: str) -> str:
        return f"postgresql://fitgate@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; its URL."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as db:
            db.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run(str(self.binaries / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
