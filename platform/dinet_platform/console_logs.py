"""A quiet console: the platform's own lines and one progress display on the terminal; what Ray,
Ray Train/Tune/Serve and MLflow print goes to a log file under ``$DINET_HOME/logs/``.

``dinet`` wraps each command in :func:`captured`. It prints the log's path once, then sends
everything written to this process's stdout and stderr to that file: the Python-level streams
(Ray forwards every worker's, actor's and replica's output to them: ``log_to_driver``) and the
file descriptors 1 and 2 themselves (Ray's and MLflow's ``logging`` handlers, C++ core
messages, child processes). The console object the command prints with keeps writing to the
terminal. When the command fails, the last :data:`TAIL_LINES` lines of the log and its path are
printed before the error, so the cause is on the console without ``--verbose``.

``dinet --verbose`` (or ``DINET_VERBOSE=1``) turns all of this off: everything reaches the
console as Ray and MLflow print it.

:func:`progress` is the one live display of a step (a spinner, a bar when the step knows its
length, the elapsed time); code deeper down (the training pipeline, a sweep's trials) updates
it through :func:`update` without being handed it, and prints lines above it with :func:`say`.
It draws only on a terminal and never in verbose mode, where output it does not own would tear
it.

This module imports neither Ray nor MLflow: their knobs are environment variables, read by
them when they print.
"""

from __future__ import annotations

import io
import os
import re
import sys
import time
import traceback
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from dinet_platform.paths import dinet_home

VERBOSE_ENV = "DINET_VERBOSE"
TAIL_LINES = 20

# Read by Ray and MLflow when they print, so they apply to whatever runs while captured.
CAPTURED_ENV = {
    # The log is a file: no ANSI colour codes around "(RayTrainWorker pid=...)".
    "RAY_COLOR_PREFIX": "0",
}


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
"""Terminal escape sequences (Ray still colours its "[repeated 3x across cluster]")."""


def logs_dir() -> Path:
    return dinet_home() / "logs"


def is_verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def set_verbose(verbose: bool) -> None:
    """``dinet --verbose``: an environment variable, so that jobs and child processes this
    command starts see it too."""
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
    else:
        os.environ.pop(VERBOSE_ENV, None)


def new_log_path(name: str, directory: Path | None = None) -> Path:
    """``<directory>/<YYYYmmdd-HHMMSS>-<name>.log``, created empty, never one that exists."""
    directory = directory or logs_dir()
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{name}"
    for attempt in range(1000):
        path = directory / (f"{stem}.log" if attempt == 0 else f"{stem}-{attempt + 1}.log")
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free log file name for {stem} in {directory}")


def tail(path: Path, lines: int = TAIL_LINES) -> list[str]:
    """The last ``lines`` non-empty lines of a text file (a partial last line included)."""
    last: deque[str] = deque(maxlen=lines)
    try:
        with open(path, encoding="utf-8", errors="replace", newline="\n") as file:
            for line in file:
                # A progress bar redraws itself with carriage returns: keep what it showed last.
                shown = ANSI.sub("", line.rstrip("\r\n").rsplit("\r", 1)[-1])
                if shown.strip():
                    last.append(shown)
    except OSError:
        return []
    return list(last)


class _Capture:
    """Where this process's output goes while :func:`captured` is active."""

    def __init__(self, path: Path, stream: IO[str]):
        self.path = path
        self.stream = stream


_capture: _Capture | None = None


def log_path() -> Path | None:
    """The log file of the command running now, if its output is captured."""
    return _capture.path if _capture else None


def mark(text: str) -> None:
    """A line in the log only (e.g. the demo's step titles, to find a step in its log)."""
    if _capture is not None:
        _capture.stream.write(f"\n===== {text} =====\n")
        _capture.stream.flush()


@contextmanager
def captured(console: Console, name: str) -> Iterator[Path | None]:
    """Run the body with this process's output going to a new log file (yielded) under
    :func:`logs_dir`, its path printed on ``console`` first; ``console`` itself keeps printing
    to the terminal. On an exception the log's last lines and path are printed on ``console``
    and the exception propagates (the command then prints the error itself). Verbose mode, or a
    capture already active (a command called by another), runs the body as it is."""
    global _capture
    if is_verbose() or _capture is not None:
        yield log_path()
        return
    path = new_log_path(name)
    console.print(f"[dim]Ray, MLflow and worker output: {escape(str(path))} "
                  f"(dinet --verbose prints it here)[/dim]", highlight=False, soft_wrap=True)
    with _redirected(console, path, name) as stream:
        _capture = _Capture(path, stream)
        try:
            yield path
        finally:
            _capture = None


def _is_failure(exc: BaseException) -> bool:
    """An error, not Ctrl-C or an exit with a status the command chose (``typer.Exit``)."""
    if isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit)):
        return False
    return not hasattr(exc, "exit_code")


@contextmanager
def _redirected(console: Console, path: Path, name: str) -> Iterator[IO[str]]:
    saved_env = {key: os.environ.get(key) for key in CAPTURED_ENV}
    log = open(path, "a", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115
    log.write(f"# {name}: {' '.join(sys.argv)}  ({time.strftime('%Y-%m-%d %H:%M:%S')}, "
              f"pid {os.getpid()})\n")
    terminal, own_terminal = _terminal(console)
    saved_console_file = getattr(console, "_file", None)
    saved_streams = (sys.stdout, sys.stderr)
    for stream in saved_streams:
        with suppress(Exception):
            stream.flush()
    saved_fds: dict[int, int] = {}
    for fd in (1, 2):
        with suppress(OSError):
            saved_fds[fd] = os.dup(fd)
    failure: BaseException | None = None
    try:
        console.file = terminal
        os.environ.update(CAPTURED_ENV)
        for fd in saved_fds:
            os.dup2(log.fileno(), fd)
        sys.stdout = sys.stderr = log
        yield log
    except BaseException as exc:
        failure = exc
        raise
    finally:
        last: list[str] = []
        if failure is not None and _is_failure(failure):
            with suppress(Exception):
                log.flush()
            last = tail(path)  # what the libraries said last, before the traceback below
            with suppress(Exception):  # Python prints the traceback on the console too
                log.write(f"\n{name} failed:\n" + "".join(traceback.format_exception(failure)))
        with suppress(Exception):
            log.flush()
        sys.stdout, sys.stderr = saved_streams
        for fd, saved in saved_fds.items():
            os.dup2(saved, fd)
            os.close(saved)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        log.close()
        if failure is not None and _is_failure(failure):
            show_tail(console, path, last)
        elif isinstance(failure, KeyboardInterrupt):
            console.print(f"[dim]log: {escape(str(path))}[/dim]", highlight=False)
        console.file = saved_console_file  # type: ignore[assignment]
        if own_terminal:
            with suppress(Exception):
                terminal.close()


def show_tail(console: Console, path: Path, last: list[str] | None = None) -> None:
    """The last lines of the log ``path`` (or ``last``, read earlier) and its path, on
    ``console``."""
    last = tail(path) if last is None else last
    if last:
        console.rule(f"last {len(last)} lines of {path.name}", style="red")
        for line in last:
            console.print(line, markup=False, highlight=False, soft_wrap=True)
        console.rule(style="red")
    console.print(f"full log: {escape(str(path))}", highlight=False, soft_wrap=True)


def _terminal(console: Console) -> tuple[IO[str], bool]:
    """A stream to the console's current destination that survives fds 1 and 2 being pointed
    at the log: a duplicate of the descriptor when the console writes to one of them."""
    file = console.file
    try:
        fd = file.fileno()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return file, False  # a buffer (a test runner's, a StringIO): it does not move
    if fd not in (1, 2):
        return file, False
    with suppress(Exception):
        file.flush()
    encoding = getattr(file, "encoding", None) or "utf-8"
    return os.fdopen(os.dup(fd), "w", buffering=1, encoding=encoding,
                     errors="replace"), True


class _Display:
    """The live progress display of a step, or nothing (not a terminal, verbose mode)."""

    def __init__(self, console: Console, description: str, total: float | None):
        self.console = console
        self.progress: Progress | None = None
        self.task: TaskID | None = None
        if console.is_terminal and not is_verbose():
            self.progress = Progress(
                SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=True,
                # Ray writes to sys.stdout from its threads: a proxy would put that on the
                # terminal, around the capture.
                redirect_stdout=False, redirect_stderr=False)
            self.task = self.progress.add_task(escape(description), total=total)

    def update(self, **fields: Any) -> None:
        if self.progress is not None and self.task is not None:
            if "description" in fields:
                fields["description"] = escape(fields["description"])
            self.progress.update(self.task, **fields)


_displays: list[_Display] = []


@contextmanager
def progress(console: Console, description: str, total: float | None = None) -> Iterator[None]:
    """The step's live display while the body runs. Opened inside another step's display, it
    takes that display over (description, bar) and gives it back on exit."""
    outer = _displays[-1] if _displays else None
    if outer is not None:
        before = _snapshot(outer)
        outer.update(description=description, total=total, completed=0)
        _displays.append(outer)
        try:
            yield
        finally:
            _displays.pop()
            if before is not None:
                outer.update(**before)
        return
    display = _Display(console, description, total)
    _displays.append(display)
    try:
        if display.progress is not None:
            with display.progress:
                yield
        else:
            yield
    finally:
        _displays.pop()


def _snapshot(display: _Display) -> dict[str, Any] | None:
    if display.progress is None or display.task is None:
        return None
    task = display.progress.tasks[display.task]
    return {"description": task.description, "total": task.total,
            "completed": task.completed}


def update(description: str | None = None, *, completed: float | None = None,
           total: float | None = None, advance: float | None = None) -> None:
    """Update the active step display (if any): a no-op where nothing is displayed."""
    try:
        display = _displays[-1]
    except IndexError:  # none (the watcher threads may outlive a step by a moment)
        return
    fields: dict[str, Any] = {}
    if description is not None:
        fields["description"] = description
    for key, value in (("completed", completed), ("total", total), ("advance", advance)):
        if value is not None:
            fields[key] = value
    display.update(**fields)


def say(text: str, *, markup: bool = False) -> None:
    """A line of the platform's on the active step's console (above its display); printed to
    stdout when no step is active (a Ray Job's driver, a library call)."""
    try:
        console = _displays[-1].console
    except IndexError:
        print(text, flush=True)
        return
    console.print(text, markup=markup, highlight=False, soft_wrap=True)
