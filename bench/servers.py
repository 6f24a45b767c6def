"""Start, watch and stop the two servers; install misp-modules in its own venv."""

from __future__ import annotations

import contextlib
import http.client
import io
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MISP_MODULES_VERSION = "3.1.1"
# The "minimal" extra brings dnspython and most modules' libraries; "all" needs
# system headers (poppler) to build, which a plain machine lacks.
MISP_MODULES_SPEC = f"misp-modules[minimal]=={MISP_MODULES_VERSION}"
MISP_MODULES_VENV = ROOT / "bench" / f".venv-misp-modules-{MISP_MODULES_VERSION}"
INSTALL_TIMEOUT = 1800.0
STOP_TIMEOUT = 10.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024

# Any stray outbound HTTP from a module would go to a closed loopback port,
# never to the Internet.
OFFLINE_ENV = {
    "HTTP_PROXY": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "http_proxy": "http://127.0.0.1:9",
    "https_proxy": "http://127.0.0.1:9",
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
}


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(port: int, path: str, timeout: float = 1.0) -> tuple[int, bytes]:
    """GET a path from 127.0.0.1:port and return the status and body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def children_of(pid: int) -> list[int]:
    """Return the pids of every descendant of a process."""
    found: list[int] = []
    queue = [pid]
    # Bounded: a process tree here has a handful of members.
    for _ in range(10_000):
        if not queue:
            break
        parent = queue.pop()
        for task in Path(f"/proc/{parent}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                kids = [int(k) for k in task.read_text().split()]
                found += kids
                queue += kids
    return found


def rss_kb(pid: int) -> int:
    """Return the resident set of a process and its descendants, in KiB."""
    total = 0
    for member in [pid, *children_of(pid)]:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def cpu_seconds(pid: int) -> float:
    """Return the CPU time (user + system) of a process and its descendants."""
    total = 0
    for member in [pid, *children_of(pid)]:
        with contextlib.suppress(OSError, IndexError, ValueError):
            # Fields after the parenthesised name; utime and stime are 14 and 15.
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


@dataclass
class Server:
    """One server process under test."""

    name: str
    argv: list[str]
    port: int
    ready_path: str
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    startup_s: float | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float) -> float:
        """Start the process and return the seconds until ready_path answers 200."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("wb")
        started = time.perf_counter()
        self.process = subprocess.Popen(
            self.argv,
            env={**os.environ, **OFFLINE_ENV, **self.env},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.log_path.parent,
            # Its own process group, so stopping it reaches its children only.
            start_new_session=True,
        )
        log.close()
        deadline = started + timeout
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode}: "
                    f"{self.log_tail()}"
                )
            with contextlib.suppress(OSError, http.client.HTTPException):
                status, _ = http_get(self.port, self.ready_path, timeout=1.0)
                if status == 200:
                    self.startup_s = time.perf_counter() - started
                    return self.startup_s
            time.sleep(0.02)
        raise RuntimeError(
            f"{self.name} did not answer {self.ready_path} within {timeout:.0f} s: "
            f"{self.log_tail()}"
        )

    def log_tail(self, lines: int = 8) -> str:
        """Return the last lines the process wrote, for error messages."""
        with contextlib.suppress(OSError):
            text = self.log_path.read_text(errors="replace").strip().splitlines()
            return " | ".join(text[-lines:]) or "(no output)"
        return "(no log)"

    def rss_mib(self) -> float:
        return rss_kb(self.pid) / 1024

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def stop(self) -> None:
        """Stop the process group: SIGTERM, then SIGKILL after a grace period."""
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(STOP_TIMEOUT)


def misp_enrich(
    port: int,
    nameserver: str,
    log_dir: Path,
    source: Path = ROOT,
    profile: Path | None = None,
    cache_dir: Path | None = None,
) -> Server:
    """Describe a misp-enrich server, run from a source tree, with a fresh cache.

    `cache_dir` should be new for each run, so that a SQLite cache never
    carries answers over from an earlier run.
    """
    bin_dir = Path(sys.executable).parent
    if profile is None:
        argv = [str(bin_dir / "misp-enrich")]
    else:
        argv = [sys.executable, "-m", "cProfile", "-o", str(profile), "-m"]
        argv.append("modules.cli")
    argv += ["serve", "--host", "127.0.0.1", "--port", str(port)]
    env = {
        "MISP_ENRICH_CACHE": "memory",
        "MISP_ENRICH_CACHE_PATH": str((cache_dir or log_dir) / "cache.sqlite3"),
        # Server-side default too, so no query can reach the system resolver.
        "MISP_ENRICH_DNS_NAMESERVER": nameserver,
        # Ahead of the editable install, so the chosen tree is what runs.
        "PYTHONPATH": str(source),
    }
    return Server(
        "misp-enrich", argv, port, "/healthcheck", log_dir / "misp-enrich.log", env
    )


def misp_modules(executable: Path, port: int, log_dir: Path) -> Server:
    """Describe a misp-modules server; it is ready once /modules answers."""
    argv = [str(executable), "-l", "127.0.0.1", "-p", str(port)]
    return Server("misp-modules", argv, port, "/modules", log_dir / "misp-modules.log")


def export_revision(rev: str, into: Path) -> str:
    """Write the files of a git revision into a directory; return its short id."""
    done = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", f"{rev}^{{commit}}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"unknown revision '{rev}': {done.stderr.strip()}")
    commit = done.stdout.strip()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", commit],
        capture_output=True,
        timeout=120,
        check=True,
    )
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return commit


def ensure_misp_modules(venv: Path = MISP_MODULES_VENV) -> Path:
    """Install the pinned misp-modules in its own venv once; return its command.

    Raises RuntimeError with the reason when it cannot be installed.
    """
    executable = venv / "bin" / "misp-modules"
    stamp = venv / ".installed"
    if executable.exists() and stamp.exists():
        return executable
    print(f"installing {MISP_MODULES_SPEC} into {venv} (once)...", flush=True)
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(venv)],
        [str(venv / "bin" / "pip"), "install", "--quiet", "--upgrade", "pip"],
        [str(venv / "bin" / "pip"), "install", "--quiet", MISP_MODULES_SPEC],
    ]
    deadline = time.monotonic() + INSTALL_TIMEOUT
    for step in steps:
        try:
            done = subprocess.run(
                step,
                capture_output=True,
                text=True,
                timeout=max(1.0, deadline - time.monotonic()),
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"'{' '.join(step)}' took too long") from None
        if done.returncode != 0:
            tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-5:])
            raise RuntimeError(f"'{' '.join(step)}' failed: {tail}")
    if not executable.exists():
        raise RuntimeError(f"{executable} is missing after the install")
    stamp.write_text(MISP_MODULES_SPEC + "\n")
    return executable


def installed_version(venv: Path = MISP_MODULES_VENV) -> str | None:
    """Return the misp-modules version installed in the venv, if any."""
    python = venv / "bin" / "python"
    if not python.exists():
        return None
    done = subprocess.run(
        [
            str(python),
            "-c",
            "import importlib.metadata as m;print(m.version('misp-modules'))",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return done.stdout.strip() or None
