"""Running tiers on one machine: a free loopback port, a server in its own process, and waiting
for a server to answer. Used by the tests and the deployment benchmark, which start real servers
on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout_s: float = 120.0, process: ServerProcess | None = None) -> None:
    """Return once `url` answers 200; raise TimeoutError naming it after `timeout_s`. Given the
    server's `process`, a server that exits first raises at once, with the end of its output."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.exited():
            raise RuntimeError(f"{process.name} exited with status {process.returncode} before {url} answered; its output ends:\n{process.tail()}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    ending = f"; its output ends:\n{process.tail()}" if process is not None else ""
    raise TimeoutError(f"{url} did not answer within {timeout_s:g} s{ending}")


PARENT_ENV = "RACMKD_PARENT_PID"  # set by ServerProcess for `racmkd serve`'s `stop_with_parent`


def stop_with_parent(interval_s: float = 1.0) -> None:
    """Stop this process (SIGTERM, so a server shuts down as told to) once the process that started
    it through ServerProcess is gone. A benchmark or test run killed outright (SIGKILL, the OOM
    killer, a CI time limit) ran no cleanup, and its servers went on holding their ports, a device
    store's lock and a core. Nothing happens when $RACMKD_PARENT_PID is not set (a server started by
    hand, or by a service manager that stops it itself)."""
    parent = os.environ.get(PARENT_ENV, "")
    if not parent.isdigit():
        return

    def watch() -> None:
        while os.getppid() == int(parent):  # (an orphan is adopted by another process: init or a subreaper)
            time.sleep(interval_s)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="stop-with-parent", daemon=True).start()


class ServerProcess:
    """A server in its own process, its output (stdout and stderr) in a log file rather than
    thrown away: a server that fails to start or dies says why. The log is removed when the server
    is stopped after a clean run and kept, its path named, when `stop` is given an error.

        server = ServerProcess([sys.executable, "-m", "racmkd.cli", "serve", ...], "edge server")
        try:
            wait_http(url, process=server)
            ...
        finally:
            server.stop()
    """

    def __init__(self, argv: list[str], name: str, env: dict[str, str] | None = None) -> None:
        self.name = name
        descriptor, path = tempfile.mkstemp(prefix=f"racmkd-{name.replace(' ', '-')}-", suffix=".log")
        self.log = Path(path)
        env = {**(env if env is not None else {**os.environ, "RACMKD_PROGRESS": "0"}), PARENT_ENV: str(os.getpid())}
        try:
            with os.fdopen(descriptor, "wb") as out:  # (the child keeps its own copy of the descriptor)
                self.process = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
        except BaseException:  # (a program that cannot start: no log to keep)
            self.log.unlink(missing_ok=True)
            raise

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def exited(self) -> bool:
        return self.process.poll() is not None

    def tail(self, lines: int = 20) -> str:
        """The last `lines` lines of the server's output (empty when it wrote none)."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError as err:
            return f"(its log {self.log} could not be read: {err})"
        return "\n".join(text.splitlines()[-lines:]) or "(nothing)"

    def stop(self, timeout_s: float = 30.0, error: BaseException | None = None) -> None:
        """Terminate the server (kill it if it does not end within `timeout_s`); remove its log
        unless an `error` ended the work, then keep it and add its path to the error's notes."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if error is None:
            self.log.unlink(missing_ok=True)
        else:
            error.add_note(f"{self.name}'s output: {self.log}")

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, kind: Any, error: BaseException | None, traceback: Any) -> None:
        self.stop(error=error)
