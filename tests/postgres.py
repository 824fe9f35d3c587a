"""A throwaway PostgreSQL cluster for the tests: initdb in a temporary folder, started on
127.0.0.1 on a free port with password authentication, stopped at the end.

PostgreSQL refuses to run as root: as root (CI), initdb and pg_ctl run as the `postgres` user
(created by the Debian package that .ci/run installs) through runuser.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
from pathlib import Path

USER = "tuner"
SKIP_ENV = "TUNER_TEST_SKIP_POSTGRES"  # set to 1 to skip the PostgreSQL tests on a machine without it


def find_bin(name: str) -> str | None:
    """`name` on PATH, else in Debian's /usr/lib/postgresql/<version>/bin (not on PATH)."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                      key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return versions[-1] if versions else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _service_user() -> str:
    """The user to run PostgreSQL as when the tests run as root: `postgres` (the Debian package
    creates it), else one created here."""
    for name in ("postgres", "tunerpg"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            pass
    subprocess.run(["useradd", "--system", "--no-create-home", "tunerpg"], check=True, capture_output=True)
    return "tunerpg"


class Cluster:
    def __init__(self, root: Path):
        self.root, self.port, self.password = root, _free_port(), secrets.token_hex(12)
        self.data, self.log = root / "data", root / "postgres.log"
        self.as_user = _service_user() if os.geteuid() == 0 else None

    def _run(self, *args: str) -> None:
        cmd = [*(["runuser", "-u", self.as_user, "--"] if self.as_user else []), *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(args[:2])} failed: {proc.stdout[-2000:]}{proc.stderr[-2000:]}{log}")

    def start(self) -> "Cluster":
        initdb, pg_ctl = find_bin("initdb"), find_bin("pg_ctl")
        if not initdb or not pg_ctl:
            raise RuntimeError("initdb / pg_ctl not found (.ci/run installs PostgreSQL with apt-get)")
        self.root.mkdir(parents=True, exist_ok=True)
        pwfile = self.root / "pw"
        pwfile.write_text(self.password + "\n")
        if self.as_user:
            user = pwd.getpwnam(self.as_user)
            for path in (self.root, pwfile):
                os.chown(path, user.pw_uid, user.pw_gid)
        self._run(initdb, "-D", str(self.data), "-U", USER, f"--pwfile={pwfile}", "--auth=scram-sha-256",
                  "-E", "UTF8", "--locale=C")
        pwfile.unlink()
        self._run(pg_ctl, "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o",
                  f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=200", "start")
        return self

    def stop(self) -> None:
        pg_ctl = find_bin("pg_ctl")
        if pg_ctl and self.data.exists():
            self._run(pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user=USER, password=self.password,
                             dbname="postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)
