"""Run the backend CLI (``mskdex ...``) in a child process: progress, log and cancel.

The GUI must not freeze during training, so the backend runs out of process. Its output
(stdout and stderr together) is read line by line on a background thread and queued;
:meth:`BackendProcess.poll` drains the queue without blocking (call it from a GUI timer).
tqdm progress bars (``desc:  45%|####   | 9/20 [...]``) become progress events, every other
line a log event. :meth:`BackendProcess.request_cancel` stops the whole process group without
waiting (the GUI's button); :meth:`BackendProcess.cancel` also waits for the end (cleanup).
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import MSKdeXTraining

#: Output lines a :class:`BackendProcess` keeps (a long training prints many).
LOG_LINES = 10000
#: Windows process creation flags (0 elsewhere): the child's own process group, so that cancel
#: can stop what it starts; no console window popping up beside Slicer's GUI.
_WINDOWS_GROUP = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)
_NO_CONSOLE = getattr(subprocess, "CREATE_NO_WINDOW", 0)
#: A tqdm bar: optional description, percentage, bar, then the rest (n/total, times, postfix).
_TQDM = re.compile(r"^\s*(?:(?P<desc>[^|]*?):\s*)?(?P<pct>\d{1,3})%\|[^|]*\|(?P<rest>.*)$")
_COUNTS = re.compile(r"^\s*(?P<n>[\d.]+[kM]?)/(?P<total>[\d.]+[kM]?)")
#: n/total, then "[elapsed<remaining, rate]" or "elapsed<remaining", at the start of the rest.
_COUNTS_AND_TIMES = re.compile(r"^\s*(?:[\d.]+[kM]?/[\d.]+[kM]?)?\s*(?:\[[^\]]*\]|[\d:]+<[\d:?]+)?[,\s]*")


@dataclass(frozen=True)
class ProcessEvent:
    """One thing the child process said: a log line, a progress update, or its end (with its
    exit status, and whether it ended because it was cancelled)."""

    kind: Literal["log", "progress", "finished"]
    text: str = ""
    fraction: float | None = None
    returncode: int | None = None
    cancelled: bool = False


def parse_progress(line: str) -> tuple[float, str] | None:
    """(fraction 0..1, message) of a tqdm progress line, or None for any other line.

    The fraction is n/total when the bar shows it, else its percentage; the message is the
    bar's description and/or its postfix (``mskdex train`` shows "epoch k/N, losses" there).
    """
    m = _TQDM.match(line)
    if m is None:
        return None
    counts = _COUNTS.match(m["rest"])
    total = _count(counts["total"]) if counts else 0.0
    fraction = _count(counts["n"]) / total if total > 0 else int(m["pct"]) / 100.0
    desc = (m["desc"] or "").strip()
    postfix = _COUNTS_AND_TIMES.sub("", m["rest"], count=1).strip()
    message = f"{desc}: {postfix}" if desc and postfix else desc or postfix
    return min(max(fraction, 0.0), 1.0), message


def _count(text: str) -> float:
    scale = {"k": 1e3, "M": 1e6}.get(text[-1], 1.0)
    return float(text.rstrip("kM")) * scale


def python_executable() -> str:
    """The Python that runs the backend: ``PythonSlicer`` inside the Slicer application (whose
    executable is not a Python), else this interpreter (plain Python with slicer-core)."""
    import slicer

    return (shutil.which("PythonSlicer") if hasattr(slicer, "app") else None) or sys.executable


def backend_command(subcommand: str, arguments: list[str]) -> list[str]:
    """Command line running ``mskdex <subcommand> <arguments>`` with the bundled backend."""
    return [python_executable(), "-m", "MSKdeXTraining.cli", subcommand, *map(str, arguments)]


class BackendProcess:
    """A started child process whose output is parsed line by line without blocking the caller
    (nor does :meth:`request_cancel`; :meth:`cancel` waits up to twice its grace period)."""

    def __init__(self, command: list[str]):
        env = dict(os.environ)
        package_root = str(Path(MSKdeXTraining.__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        self.command = list(command)
        self.fraction = 0.0
        self.message = ""
        self.log: deque[str] = deque(maxlen=LOG_LINES)  #: the latest output lines
        self._events: queue.Queue[ProcessEvent] = queue.Queue()
        self._cancelled = False
        self._kill_at: float | None = None  # time.monotonic() after which poll() sends SIGKILL
        try:
            self._process = subprocess.Popen(
                self.command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, bufsize=0,
                # its own process group, so cancel stops what it starts (on Windows, Slicer's
                # launcher starts python-real.exe, which outlives a terminated launcher)
                start_new_session=(os.name == "posix"),
                creationflags=_WINDOWS_GROUP | _NO_CONSOLE)
        except OSError as e:
            raise RuntimeError(f"cannot start {self.command[0]!r}: {e}") from None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        """Split the raw output on \\n and \\r (tqdm redraws with \\r); a redraw still waiting
        for its terminator is parsed at once, so progress is never one update late."""
        fd = self._process.stdout.fileno()
        pending, shown = b"", ""
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            *lines, pending = re.split(rb"[\r\n]", pending + chunk)
            for raw in lines:
                line = raw.decode(errors="replace")
                if line != shown:
                    self._emit(line)
                shown = ""
            text = pending.decode(errors="replace")
            if text != shown and parse_progress(text) is not None:
                self._emit(text)
                shown = text
        if pending and pending.decode(errors="replace") != shown:
            self._emit(pending.decode(errors="replace"))
        self._process.stdout.close()
        code = self._process.wait()
        self._events.put(ProcessEvent("finished", returncode=code, cancelled=self._cancelled))

    def _emit(self, line: str) -> None:
        if not line.strip():
            return
        progress = parse_progress(line)
        if progress is None:
            self._events.put(ProcessEvent("log", line))
        else:
            self._events.put(ProcessEvent("progress", progress[1], progress[0]))

    @property
    def running(self) -> bool:
        """Whether the process's output is still being read (it has not finished)."""
        return self._reader.is_alive()

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`request_cancel` or :meth:`cancel` was called."""
        return self._cancelled

    def poll(self) -> list[ProcessEvent]:
        """Every event since the last call (possibly none); updates :attr:`fraction`,
        :attr:`message` and :attr:`log`, and kills the process once a :meth:`request_cancel`'s
        grace period is over."""
        if self._kill_at is not None and time.monotonic() >= self._kill_at and self.running:
            self._kill()
        events = []
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return events
            if event.kind == "progress":
                self.fraction, self.message = event.fraction, event.text
            elif event.kind == "log":
                self.log.append(event.text)
            events.append(event)

    def wait(self, timeout: float | None = None) -> int:
        """Block until the process ends (a caller without a GUI timer); returns its exit code."""
        self._reader.join(timeout)
        if self._reader.is_alive():
            raise TimeoutError(f"{self.command[:4]} still running after {timeout} s")
        return self._process.returncode

    def request_cancel(self, grace_s: float = 5.0) -> None:
        """Stop the process (and its children) without waiting: SIGTERM now, SIGKILL from the
        first :meth:`poll` after ``grace_s`` seconds."""
        if not self.running or self._cancelled:
            return
        self._cancelled = True
        self._kill_at = time.monotonic() + grace_s
        self._signal(signal.SIGTERM)

    def cancel(self, grace_s: float = 5.0) -> None:
        """Stop the process and wait for its end: :meth:`request_cancel`, SIGKILL when its grace
        period is over, then up to ``grace_s`` seconds more."""
        self.request_cancel(grace_s)
        self._reader.join(max(0.0, (self._kill_at or 0.0) - time.monotonic()))
        if self._reader.is_alive():
            self._kill()
            self._reader.join(grace_s)

    def _kill(self) -> None:
        self._kill_at = None
        self._signal(signal.SIGKILL if hasattr(signal, "SIGKILL") else signal.SIGTERM)

    def _signal(self, sig: int) -> None:
        try:
            if os.name == "posix":
                os.killpg(self._process.pid, sig)
            elif self._process.poll() is None:  # Windows: the whole tree, at once
                subprocess.run(["taskkill", "/T", "/F", "/PID", str(self._process.pid)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False,
                               creationflags=_NO_CONSOLE)
        except ProcessLookupError:
            pass
