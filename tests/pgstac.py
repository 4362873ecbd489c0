"""A real, full-featured STAC API on loopback for tests: PostgreSQL + PostGIS (Debian packages),
pgstac (`pypgstac migrate`, `pypgstac load`) and stac-fastapi-pgstac under uvicorn -- the stack
behind Planetary Computer. It honours `query`, CQL2 `filter`, `sortby` and token paging, so it
catches what `rustac serve` (which ignores filters) hides.

`PgstacServer.start(collection, items)` initialises a throw-away cluster in a fresh folder (as
the `postgres` user when running as root: `initdb` refuses root), listens on 127.0.0.1 only on
free ports, loads the collection and items, starts the API and waits for it; every wait is
bounded by a timeout. `stop()` ends both processes (by their own ids) and removes the folder.
`missing()` says why the stack cannot start here (the tests then skip).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

START_TIMEOUT_S = 60.0


def _pg_bin() -> Path | None:
    """The newest PostgreSQL server binaries Debian installed (/usr/lib/postgresql/NN/bin)."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(Path(p).parts[4])
    )
    return Path(found[-1]).parent if found else None


def missing() -> str | None:
    """Why the stack cannot run on this machine (None: it can)."""
    pg = _pg_bin()
    if pg is None:
        return "PostgreSQL server not installed (Debian postgresql-15)"
    version = pg.parts[4]
    if not Path(f"/usr/share/postgresql/{version}/extension/postgis.control").is_file():
        return f"PostGIS not installed (Debian postgresql-{version}-postgis-3)"
    for module in ("pypgstac", "stac_fastapi.pgstac", "uvicorn", "psycopg"):
        try:
            __import__(module)
        except ImportError:
            return f"Python package for {module} not installed (pip install -e '.[test]')"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root without a 'postgres' user to run initdb as"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(check: Any, what: str, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    """Poll `check()` until it is true, the process dies or `timeout` passes (then raise)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} while starting")
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not start within {timeout:.0f} s")


class PgstacServer:
    """PostgreSQL + pgstac + stac-fastapi-pgstac on 127.0.0.1; `url` is the API root."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="changedet-pgstac-"))
        self.pg_port = _free_port()
        self.api_port = _free_port()
        self.url = f"http://127.0.0.1:{self.api_port}"
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.pg_port}/postgres"
        self.postgres: subprocess.Popen[bytes] | None = None
        self.api: subprocess.Popen[bytes] | None = None
        self._as_postgres = os.geteuid() == 0

    # -- start ---------------------------------------------------------------------------------

    def start(self, collection: Mapping[str, Any], items: Sequence[Mapping[str, Any]]) -> None:
        try:
            self._start_postgres()
            self._migrate_and_load(collection, items)
            self._start_api()
        except BaseException:
            self.stop()
            raise

    def _user(self) -> dict[str, Any]:
        return {"user": "postgres", "group": "postgres"} if self._as_postgres else {}

    def _start_postgres(self) -> None:
        pg = _pg_bin()
        assert pg is not None
        data, sockets = self.root / "data", self.root / "sock"
        sockets.mkdir()
        if self._as_postgres:  # initdb refuses root: the cluster belongs to `postgres`
            entry = pwd.getpwnam("postgres")
            os.chmod(self.root, 0o755)
            os.chown(sockets, entry.pw_uid, entry.pw_gid)
            data.mkdir()
            os.chown(data, entry.pw_uid, entry.pw_gid)
        subprocess.run(
            [str(pg / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
             "--no-sync", "--no-instructions"],
            check=True, capture_output=True, timeout=START_TIMEOUT_S, **self._user(),
        )  # fmt: skip
        self.postgres = subprocess.Popen(
            [str(pg / "postgres"), "-D", str(data), "-p", str(self.pg_port),
             "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={sockets}",
             "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **self._user(),
        )  # fmt: skip

        def ready() -> bool:
            import psycopg

            with psycopg.connect(self.dsn, connect_timeout=2):
                return True

        _wait(ready, "PostgreSQL", START_TIMEOUT_S, self.postgres)

    def _migrate_and_load(
        self, collection: Mapping[str, Any], items: Sequence[Mapping[str, Any]]
    ) -> None:
        pypgstac = [sys.executable, "-c", "from pypgstac.pypgstac import cli; cli()"]
        run = {"check": True, "capture_output": True, "timeout": 180}
        subprocess.run([*pypgstac, "migrate", "--dsn", self.dsn], **run)  # type: ignore[call-overload]
        coll_file = self.root / "collection.json"
        coll_file.write_text(json.dumps(collection))
        items_file = self.root / "items.ndjson"
        items_file.write_text("".join(json.dumps(item) + "\n" for item in items))
        for table, path in (("collections", coll_file), ("items", items_file)):
            subprocess.run(  # type: ignore[call-overload]
                [*pypgstac, "load", table, str(path), "--dsn", self.dsn, "--method", "insert"],
                **run,
            )

    def _start_api(self) -> None:
        env = {
            **os.environ,
            "PGUSER": "postgres",
            "PGPASSWORD": "",
            "PGHOST": "127.0.0.1",
            "PGPORT": str(self.pg_port),
            "PGDATABASE": "postgres",
            "ENABLED_EXTENSIONS": "query,sort,fields,filter,pagination,collection_search",
        }
        self.api = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "stac_fastapi.pgstac.app:create_app", "--factory",
             "--host", "127.0.0.1", "--port", str(self.api_port), "--log-level", "warning"],
            cwd=self.root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip

        def ready() -> bool:
            with urllib.request.urlopen(f"{self.url}/conformance", timeout=2) as answer:
                return bool(answer.status == 200)

        try:
            _wait(ready, "stac-fastapi-pgstac", START_TIMEOUT_S, self.api)
        except RuntimeError as exc:
            tail = b""
            if self.api.poll() is not None and self.api.stderr is not None:
                tail = self.api.stderr.read()[-600:]
            raise RuntimeError(f"{exc}: {tail.decode(errors='replace')}") from None

    # -- stop ----------------------------------------------------------------------------------

    def stop(self) -> None:
        """End the API and PostgreSQL (their own process ids only) and remove the folder."""
        for proc, sig in ((self.api, signal.SIGTERM), (self.postgres, signal.SIGINT)):
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(sig)  # SIGINT: PostgreSQL's fast shutdown
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)
        if self.api is not None and self.api.stderr is not None:
            self.api.stderr.close()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PgstacServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def get_json(url: str) -> tuple[int, Any]:
    """(status, parsed body) of a GET, for checks against the server itself."""
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, None
