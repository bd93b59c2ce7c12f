"""Session artifacts (ONNX exports, bundles) made in child processes on a background thread, in the order the
collected tests first need them, while the tests that need none run: an export is ~30-70 s of mostly
single-threaded work, and CI machines have a second core.

Each job is a list of commands (real `export-model` runs, or tests/build_artifacts.py for the exports the tests make
through the Python API) writing under the session's temp folder. A fixture asks for its job's result; it waits for the
job if it is queued or running, and runs it at once if it was never queued (a test requested dynamically). The
fixture then asserts on the commands' exit codes and output exactly as it did when it ran them itself."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
JOB_TIMEOUT_S = 1800


@dataclass
class Command:
    argv: list[str]
    cwd: Path | None = None


@dataclass
class Job:
    name: str
    commands: Callable[[Path], list[Command]]  # given the job's folder
    after: tuple[str, ...] = ()  # jobs whose outputs this one reads
    folder: Path | None = None
    results: list[subprocess.CompletedProcess] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    started: bool = False


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def export_model(*args: str) -> list[str]:
    return python("-m", "zsdeploy.cli.export_model", *args)


def build_artifacts(*args: str) -> list[str]:
    return python(str(TESTS / "build_artifacts.py"), *args)


class Prefetcher:
    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}
        self.root: Path | None = None
        self._lock = threading.Lock()
        self._current: subprocess.Popen | None = None
        self._stopping = False
        self._thread: threading.Thread | None = None

    def define(self, name: str, commands: Callable[[Path], list[Command]], after: tuple[str, ...] = ()) -> None:
        self.jobs[name] = Job(name, commands, after)

    def start(self, root: Path, fixtures_in_order: list[str]) -> None:
        """Queue the jobs of `fixtures_in_order` (fixture names, first use first; jobs are named after fixtures)."""
        self.root = root
        order: list[str] = []

        def add(name: str) -> None:
            for dep in self.jobs[name].after:
                add(dep)
            if name not in order:
                order.append(name)

        for name in fixtures_in_order:
            if name in self.jobs:
                add(name)
        if order:
            self._thread = threading.Thread(target=self._run_all, args=(order,), name="prefetch", daemon=True)
            self._thread.start()

    def _run_all(self, order: list[str]) -> None:
        for name in order:
            if self._stopping:
                return
            self._run(self.jobs[name])

    def _run(self, job: Job) -> None:
        with self._lock:
            if job.started:
                wait = True
            else:
                job.started, wait = True, False
        if wait:
            job.done.wait()
            return
        try:
            for dep in job.after:
                self.result(dep)
            assert self.root is not None
            job.folder = self.root / job.name
            job.folder.mkdir(parents=True, exist_ok=True)
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(
                [str(TESTS), *filter(None, [os.environ.get("PYTHONPATH")])])}
            for cmd in job.commands(job.folder):
                if self._stopping:
                    break
                proc = subprocess.Popen(cmd.argv, cwd=cmd.cwd or REPO, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
                self._current = proc
                try:
                    out, err = proc.communicate(timeout=JOB_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    out, err = proc.communicate()
                    err += f"\n[prefetch] killed after {JOB_TIMEOUT_S} s"
                self._current = None
                job.results.append(subprocess.CompletedProcess(cmd.argv, proc.returncode, out, err))
                if proc.returncode != 0:
                    break  # the fixture reports it
        finally:
            job.done.set()

    def result(self, name: str) -> tuple[Path, list[subprocess.CompletedProcess]]:
        """The job's folder and its commands' results (run now when it was not queued)."""
        job = self.jobs[name]
        if self.root is None:
            raise RuntimeError("prefetch.start() was not called (conftest's pytest_collection_modifyitems)")
        self._run(job)
        job.done.wait()
        assert job.folder is not None
        return job.folder, job.results

    def stop(self) -> None:
        """End of session: a job nobody waited for (a test failed or was interrupted) is not left running."""
        self._stopping = True
        proc = self._current
        if proc is not None and proc.poll() is None:
            proc.kill()


PREFETCH = Prefetcher()
