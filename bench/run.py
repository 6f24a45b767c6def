"""Benchmark misp-enrich against misp-modules on a slow DNS server on loopback.

Run with `make bench` (or `.venv/bin/python bench/run.py --help`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import functools
import os
import platform
import random
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson

from bench import servers
from bench.dns_server import DNSProcess
from bench.load import (
    Result,
    bench_name,
    closed_loop,
    dns_query,
    probe_under_load,
)
from bench.report import Row, as_json, markdown_table, simple_table

RESULTS = servers.ROOT / "bench" / "results"
ANCHOR_MODULES_RATE = 47.0
SPEEDUP_GOAL = 20.0
CACHE_P50_GOAL_MS = 2.0
CACHE_RATE_GOAL = 2000.0
MODULES_P99_GOAL_MS = 20.0
MISP_MODULES_TIMEOUT_MS = 1000.0
START_TIMEOUT = 120.0
SETTLE_SECONDS = 15.0
QUIET_CORES = 0.25


@dataclass(frozen=True)
class Plan:
    """How many requests each phase sends, and how long it may take."""

    uncached: dict[int, int]
    cached_sequential: int
    cached_concurrency: int
    cached_requests: int
    probe_concurrency: int
    probes: int
    upstream_queries: int
    upstream_indicators: int
    upstream_concurrency: int
    phase_seconds: float
    cached_seconds: float


FULL = Plan(
    uncached={10: 500, 100: 1000, 500: 2500},
    cached_sequential=2000,
    cached_concurrency=50,
    cached_requests=10000,
    probe_concurrency=500,
    probes=200,
    upstream_queries=1000,
    upstream_indicators=100,
    upstream_concurrency=50,
    phase_seconds=90.0,
    cached_seconds=30.0,
)
QUICK = Plan(
    uncached={10: 40, 100: 200, 500: 500},
    cached_sequential=200,
    cached_concurrency=50,
    cached_requests=1000,
    probe_concurrency=500,
    probes=30,
    upstream_queries=200,
    upstream_indicators=20,
    upstream_concurrency=20,
    phase_seconds=20.0,
    cached_seconds=5.0,
)


@dataclass
class Target:
    """A server under test and what was measured on it."""

    server: servers.Server
    phases: dict[str, dict[str, Any]] = field(default_factory=dict)
    results: dict[str, Result] = field(default_factory=dict)
    figures: dict[str, float | None] = field(default_factory=dict)
    failure: str | None = None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark misp-enrich against misp-modules on loopback."
    )
    parser.add_argument("--quick", action="store_true", help="small counts (smoke)")
    parser.add_argument(
        "--skip-misp-modules", action="store_true", help="measure misp-enrich only"
    )
    parser.add_argument(
        "--dns-delay-ms", type=float, default=100.0, help="upstream DNS delay"
    )
    parser.add_argument(
        "--dns-port",
        type=int,
        default=53,
        help="DNS port on 127.0.0.1; misp-modules can only use 53",
    )
    parser.add_argument(
        "--output",
        nargs="?",
        const="auto",
        metavar="NAME",
        help="also write NAME.md and NAME.json under bench/results/",
    )
    parser.add_argument(
        "--rev",
        help="run misp-enrich from this git revision (e.g. HEAD) instead of the "
        "work tree, so uncommitted edits do not change the figures",
    )
    parser.add_argument(
        "--enrich-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an environment variable for misp-enrich (repeatable), e.g. "
        "MISP_ENRICH_CACHE=sqlite or MISP_ENRICH_DNS_CONCURRENCY=256",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="before each phase, wait up to this long for other processes to "
        "leave the cores idle (0: do not wait)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run misp-enrich under cProfile (slower) and print its hot spots",
    )
    return parser.parse_args(argv)


def raise_file_limit() -> None:
    """Raise the open-file limit: 500 connections each way need descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def bodies(phase: str, count: int, nameserver: str) -> list[bytes]:
    """Return /query bodies for `count` distinct names of a phase."""
    return [
        orjson.dumps(dns_query(bench_name(phase, i), nameserver)) for i in range(count)
    ]


def repeated_bodies(
    phase: str, count: int, indicators: int, nameserver: str
) -> list[bytes]:
    """Return `count` bodies over `indicators` names, shuffled with a fixed seed."""
    names = [bench_name(phase, i % indicators) for i in range(count)]
    random.Random(7).shuffle(names)
    return [orjson.dumps(dns_query(name, nameserver)) for name in names]


def settle(dns: DNSProcess) -> None:
    """Wait until the upstream sees no query for half a second, then reset it."""
    deadline = time.monotonic() + SETTLE_SECONDS
    last = -1
    while time.monotonic() < deadline:
        seen = dns.stats()["queries"]
        if seen == last:
            break
        last = seen
        time.sleep(0.5)
    dns.reset()


def busy_cpu_seconds() -> float:
    """Return the CPU time the whole machine has spent busy since boot."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (
        int(value) for value in fields[:8]
    )
    return (user + nice + system + irq + softirq + steal) / servers.CLOCK_TICKS


def udp_drops() -> int:
    """Return the machine's count of UDP datagrams dropped for a full buffer."""
    lines = [
        line.split()
        for line in Path("/proc/net/snmp").read_text().splitlines()
        if line.startswith("Udp:")
    ]
    header, values = lines[0], lines[1]
    return int(values[header.index("RcvbufErrors")])


class Meter:
    """CPU seconds of the server, the DNS server and the client over a phase."""

    def __init__(self, target: Target, dns: DNSProcess) -> None:
        self.target = target
        self.dns = dns

    def __enter__(self) -> Meter:
        self.marks = self._now()
        return self

    def _now(self) -> tuple[float, float, float, float, int]:
        assert self.dns.pid is not None
        return (
            self.target.server.cpu(),
            servers.cpu_seconds(self.dns.pid),
            time.process_time(),
            busy_cpu_seconds(),
            udp_drops(),
        )

    def __exit__(self, *exc: object) -> None:
        now = self._now()
        server, upstream, client, busy, drops = (
            b - a for a, b in zip(self.marks, now, strict=True)
        )
        self.usage = {
            "server_cpu_s": round(server, 2),
            "dns_cpu_s": round(upstream, 2),
            "client_cpu_s": round(client, 2),
            # Whatever else ran on the machine meanwhile skews the figures.
            "other_cpu_s": round(max(0.0, busy - server - upstream - client), 2),
            "udp_drops": int(drops),
        }


def wait_for_quiet(max_seconds: float) -> float:
    """Wait, up to max_seconds, until other processes leave the cores alone.

    Returns the busy cores seen last, so a phase run on a busy machine shows.
    """
    noise = machine_noise(0.5)
    deadline = time.monotonic() + max_seconds
    while noise > QUIET_CORES and time.monotonic() < deadline:
        noise = machine_noise(0.5)
    return noise


def measure(
    target: Target,
    dns: DNSProcess,
    phase: str,
    run: Callable[[], Any],
    quiet_wait: float = 0.0,
) -> Result:
    """Run one phase against a target, recording CPU and upstream counts."""
    settle(dns)
    noise = wait_for_quiet(quiet_wait) if quiet_wait > 0 else None
    with Meter(target, dns) as meter:
        outcome = asyncio.run(run())
    probe = None
    if isinstance(outcome, tuple):
        probe, outcome = outcome
    upstream = dns.stats()
    record = {
        **outcome.summary(),
        **meter.usage,
        "busy_cores_before": None if noise is None else round(noise, 2),
        "upstream": upstream,
        "dns_queries_per_answer": round(upstream["queries"] / outcome.ok, 2)
        if outcome.ok
        else None,
    }
    if probe is not None:
        record["modules_probe"] = {
            **probe.summary(),
            "over_misp_timeout": sum(
                1 for s in probe.latencies if s * 1000 > MISP_MODULES_TIMEOUT_MS
            ),
        }
        target.results[phase + ":probe"] = probe
    target.phases[phase] = record
    target.results[phase] = outcome
    print(f"  {target.server.name:12} {phase:16} {_brief(record)}", flush=True)
    return outcome


def _brief(record: dict[str, Any]) -> str:
    text = (
        f"ok {record['ok']}/{record['requests']} in {record['elapsed_s']:.1f} s, "
        f"{record['ok_per_s']:.1f}/s, p50 {record['p50_ms']} ms, "
        f"p99 {record['p99_ms']} ms, dns {record['upstream']['queries']}"
    )
    if record["failures"]:
        text += f", failures {record['failures']}"
    if "modules_probe" in record:
        probe = record["modules_probe"]
        text += f"; /modules p50 {probe['p50_ms']} ms p99 {probe['p99_ms']} ms"
    return text


def run_phases(
    target: Target, dns: DNSProcess, plan: Plan, nameserver: str, quiet_wait: float
) -> None:
    """Run every measured phase against one server."""
    query_url = target.server.base + "/query"
    tag = "e" if target.server.name == "misp-enrich" else "m"
    phase = functools.partial(measure, target, dns, quiet_wait=quiet_wait)
    for concurrency, count in plan.uncached.items():
        work = bodies(f"{tag}u{concurrency}", count, nameserver)
        phase(
            f"uncached c={concurrency}",
            functools.partial(
                closed_loop, query_url, work, concurrency, plan.phase_seconds
            ),
        )
    same = orjson.dumps(dns_query(bench_name(f"{tag}hit", 0), nameserver))
    # One query fills the cache; the phases below repeat it.
    asyncio.run(closed_loop(query_url, [same], 1, plan.phase_seconds))
    phase(
        "cache-hit c=1",
        functools.partial(
            closed_loop,
            query_url,
            [same] * plan.cached_sequential,
            1,
            plan.cached_seconds,
        ),
    )
    phase(
        f"cache-hit c={plan.cached_concurrency}",
        functools.partial(
            closed_loop,
            query_url,
            [same] * plan.cached_requests,
            plan.cached_concurrency,
            plan.cached_seconds,
        ),
    )
    slow = bodies(f"{tag}slow", plan.probe_concurrency * 20, nameserver)
    phase(
        "modules under load",
        functools.partial(
            probe_under_load,
            target.server.base,
            slow,
            plan.probe_concurrency,
            plan.probes,
            0.02,
            plan.phase_seconds,
        ),
    )
    repeated = repeated_bodies(
        f"{tag}rep", plan.upstream_queries, plan.upstream_indicators, nameserver
    )
    phase(
        "upstream calls",
        functools.partial(
            closed_loop,
            query_url,
            repeated,
            plan.upstream_concurrency,
            plan.phase_seconds,
        ),
    )
    settle(dns)
    target.figures["rss_loaded_mib"] = target.server.rss_mib()


def start_target(target: Target, nameserver: str) -> None:
    """Start a server, take its start-up time and idle RSS, check dns answers."""
    server = target.server
    server.start(START_TIMEOUT)
    target.figures["startup_ms"] = (server.startup_s or 0) * 1000
    status, listing = servers.http_get(server.port, "/modules", timeout=5)
    names = {entry.get("name") for entry in orjson.loads(listing)}
    if status != 200 or "dns" not in names:
        raise RuntimeError(f"{server.name} lists no dns module in GET /modules")
    # Let start-up work (lazy imports, caches) finish before the idle RSS.
    time.sleep(1.0)
    target.figures["rss_idle_mib"] = server.rss_mib()
    check = asyncio.run(
        closed_loop(
            server.base + "/query",
            [orjson.dumps(dns_query(bench_name("check", 0), nameserver))],
            1,
            10.0,
        )
    )
    if check.ok != 1:
        raise RuntimeError(
            f"{server.name}'s dns module did not answer: {dict(check.failures)}"
        )


def _phase(target: Target | None, phase: str, key: str) -> float | None:
    if target is None or target.failure or phase not in target.phases:
        return None
    value: Any = target.phases[phase]
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value  # type: ignore[no-any-return]


def build_rows(
    enrich: Target, modules: Target | None, plan: Plan, delay_ms: float
) -> list[Row]:
    """Turn both targets' figures into the table's rows, with goals."""
    rows = []

    def figure(target: Target | None, key: str) -> float | None:
        if target is None or target.failure:
            return None
        return target.figures.get(key)

    rows.append(
        Row(
            "start-up until ready",
            figure(enrich, "startup_ms"),
            figure(modules, "startup_ms"),
            "ms",
            "lower",
        )
    )
    rows.append(
        Row(
            "RSS idle",
            figure(enrich, "rss_idle_mib"),
            figure(modules, "rss_idle_mib"),
            "MiB",
            "lower",
        )
    )
    for concurrency, count in plan.uncached.items():
        phase = f"uncached c={concurrency}"
        rate_e = _phase(enrich, phase, "ok_per_s")
        rate_m = _phase(modules, phase, "ok_per_s")
        baseline = rate_m if rate_m else ANCHOR_MODULES_RATE
        rows.append(
            Row(
                f"uncached /query c={concurrency}: answers/s",
                rate_e,
                rate_m,
                "/s",
                "higher",
                f">= {SPEEDUP_GOAL:.0f}x misp-modules"
                + ("" if rate_m else f" ({ANCHOR_MODULES_RATE:.0f}/s anchor)"),
                None if rate_e is None else rate_e >= SPEEDUP_GOAL * baseline,
            )
        )
        p50 = _phase(enrich, phase, "p50_ms")
        rows.append(
            Row(
                f"uncached /query c={concurrency}: p50",
                p50,
                _phase(modules, phase, "p50_ms"),
                "ms",
                "lower",
                f"<= {1.5 * delay_ms:.0f} ms (one DNS round trip)",
                None if p50 is None else p50 <= 1.5 * delay_ms,
            )
        )
        rows.append(
            Row(
                f"uncached /query c={concurrency}: p99",
                _phase(enrich, phase, "p99_ms"),
                _phase(modules, phase, "p99_ms"),
                "ms",
                "lower",
            )
        )
        failed_e = _failed(enrich, phase)
        rows.append(
            Row(
                f"uncached /query c={concurrency}: failed of {count}",
                failed_e,
                _failed(modules, phase),
                "",
                "none",
                "0",
                None if failed_e is None else failed_e == 0,
            )
        )
    p50 = _phase(enrich, "cache-hit c=1", "p50_ms")
    rows.append(
        Row(
            "cache-hit /query c=1: p50",
            p50,
            _phase(modules, "cache-hit c=1", "p50_ms"),
            "ms",
            "lower",
            f"<= {CACHE_P50_GOAL_MS:.0f} ms",
            None if p50 is None else p50 <= CACHE_P50_GOAL_MS,
        )
    )
    hit = f"cache-hit c={plan.cached_concurrency}"
    rate = _phase(enrich, hit, "ok_per_s")
    rows.append(
        Row(
            f"cache-hit /query c={plan.cached_concurrency}: answers/s",
            rate,
            _phase(modules, hit, "ok_per_s"),
            "/s",
            "higher",
            f">= {CACHE_RATE_GOAL:.0f}/s",
            None if rate is None else rate >= CACHE_RATE_GOAL,
        )
    )
    rows.append(
        Row(
            f"cache-hit /query c={plan.cached_concurrency}: p50",
            _phase(enrich, hit, "p50_ms"),
            _phase(modules, hit, "p50_ms"),
            "ms",
            "lower",
        )
    )
    probe = "modules under load"
    p99 = _phase(enrich, probe, "modules_probe.p99_ms")
    rows.append(
        Row(
            f"GET /modules p99, {plan.probe_concurrency} slow queries in flight",
            p99,
            _phase(modules, probe, "modules_probe.p99_ms"),
            "ms",
            "lower",
            f"< {MODULES_P99_GOAL_MS:.0f} ms",
            None if p99 is None else p99 < MODULES_P99_GOAL_MS,
        )
    )
    rows.append(
        Row(
            f"GET /modules p50, {plan.probe_concurrency} slow queries in flight",
            _phase(enrich, probe, "modules_probe.p50_ms"),
            _phase(modules, probe, "modules_probe.p50_ms"),
            "ms",
            "lower",
        )
    )
    rows += upstream_rows(enrich, modules, plan)
    rows.append(
        Row(
            "RSS after the load",
            figure(enrich, "rss_loaded_mib"),
            figure(modules, "rss_loaded_mib"),
            "MiB",
            "lower",
        )
    )
    return rows


def upstream_rows(enrich: Target, modules: Target | None, plan: Plan) -> list[Row]:
    """Rows for the upstream calls that repeated indicators cost."""
    phase = "upstream calls"
    label = f"{plan.upstream_queries} queries / {plan.upstream_indicators} indicators"
    repeats = _phase(enrich, phase, "upstream.repeats")
    names = _phase(enrich, phase, "upstream.names")
    ok = _phase(enrich, phase, "ok")
    fetched_once = (
        None
        if repeats is None
        else repeats == 0
        and names == plan.upstream_indicators
        and ok == plan.upstream_queries
    )
    return [
        Row(
            f"{label}: DNS queries",
            _phase(enrich, phase, "upstream.queries"),
            _phase(modules, phase, "upstream.queries"),
            "",
            "lower",
            f"each of {plan.upstream_indicators} indicators fetched once",
            fetched_once,
        ),
        Row(
            f"{label}: DNS questions asked again",
            repeats,
            _phase(modules, phase, "upstream.repeats"),
            "",
            "none",
            "0",
            None if repeats is None else repeats == 0,
        ),
    ]


def _failed(target: Target | None, phase: str) -> float | None:
    """Return the answers that were errors (not those cut by the time limit)."""
    if _phase(target, phase, "requests") is None:
        return None
    assert target is not None
    return sum(target.phases[phase]["failures"].values())


def cpu_table(targets: list[Target]) -> str:
    """Render the CPU each process used per phase, to show who competed."""
    body = []
    for target in targets:
        for phase, record in target.phases.items():
            body.append(
                [
                    target.server.name,
                    phase,
                    f"{record['elapsed_s']:.1f}",
                    f"{record['server_cpu_s']:.1f}",
                    f"{record['dns_cpu_s']:.1f}",
                    f"{record['client_cpu_s']:.1f}",
                    f"{record['other_cpu_s']:.1f}",
                    _cores(record.get("busy_cores_before")),
                    str(record["upstream"]["queries"]),
                    str(record["dns_queries_per_answer"]),
                    str(record["udp_drops"]),
                ]
            )
    header = [
        "server",
        "phase",
        "wall s",
        "server CPU s",
        "DNS server CPU s",
        "client CPU s",
        "other CPU s",
        "busy cores before",
        "DNS queries",
        "DNS queries/answer",
        "UDP drops",
    ]
    return simple_table(header, body)


def _cores(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def failure_notes(targets: list[Target]) -> list[str]:
    """List the kinds of failed answers each phase saw."""
    notes = []
    for target in targets:
        if target.failure:
            notes.append(f"- {target.server.name} not measured: {target.failure}")
        for phase, record in target.phases.items():
            for kind, count in record["failures"].items():
                notes.append(f"- {target.server.name}, {phase}: {count} x {kind}")
            if record["unfinished_at_time_limit"]:
                notes.append(
                    f"- {target.server.name}, {phase}: "
                    f"{record['unfinished_at_time_limit']} still in flight at the "
                    "phase's time limit"
                )
    return notes


def machine(
    modules_version: str | None, args: argparse.Namespace, revision: str | None
) -> dict[str, Any]:
    """Describe the machine and software the run used."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    commit = revision or _work_tree_state()
    from modules import __version__

    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": len(os.sched_getaffinity(0)),
        "memory": memory,
        "cpu": cpu,
        "python": platform.python_version(),
        "misp_enrich": f"{__version__} ({commit})",
        "misp_modules": modules_version or "not measured",
        "dns_delay_ms": args.dns_delay_ms,
        "mode": "quick" if args.quick else "full",
        "misp_enrich_env": " ".join(args.enrich_env) or "defaults",
        "command": " ".join(["bench/run.py", *sys.argv[1:]]),
    }


def _work_tree_state() -> str:
    """Describe the work tree: its commit, and whether edits are on top of it."""
    git = ["git", "-C", str(servers.ROOT)]
    head = subprocess.run(
        [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        [
            *git,
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            "modules",
            "expansion",
        ],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return f"work tree at {head or 'no commit'}" + (
        " with uncommitted edits in modules/ or expansion/" if dirty else ""
    )


def render(rows: list[Row], targets: list[Target], info: dict[str, Any]) -> str:
    """Return the whole report as markdown."""
    facts = ", ".join(f"{key}: {value}" for key, value in info.items())
    parts = [
        "## Results",
        "",
        facts,
        "",
        "ratio: how many times better misp-enrich is (above 1.0x it wins).",
        "",
        markdown_table(rows),
        "",
        "### CPU per phase (all processes share the machine's cores)",
        "",
        cpu_table(targets),
    ]
    notes = failure_notes(targets)
    if notes:
        parts += ["", "### Failed answers", "", *notes]
    return "\n".join(parts) + "\n"


def write_outputs(name: str, markdown: str, data: str) -> list[Path]:
    """Write the report under bench/results/ and return the paths."""
    if name == "auto":
        name = datetime.datetime.now().strftime("bench-%Y%m%d-%H%M%S")
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / Path(name).name
    paths = [stem.with_suffix(".md"), stem.with_suffix(".json")]
    paths[0].write_text(markdown)
    paths[1].write_text(data)
    return paths


def print_profile(path: Path) -> None:
    """Print where misp-enrich spent its time, from the cProfile dump."""
    import io
    import pstats

    if not path.exists():
        print(f"no profile was written to {path}")
        return
    text = io.StringIO()
    stats = pstats.Stats(str(path), stream=text)
    stats.sort_stats("tottime").print_stats(30)
    stats.sort_stats("cumulative").print_stats(30)
    report = path.with_suffix(".txt")
    report.write_text(text.getvalue())
    print(text.getvalue())
    print(f"profile: {path} (summary in {report})")


@contextlib.contextmanager
def stopping(items: list[Any]) -> Iterator[None]:
    """Stop every process in the list on the way out, whatever happened."""
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        yield
    finally:
        for item in reversed(items):
            with contextlib.suppress(Exception):
                item.stop()
        signal.signal(signal.SIGTERM, previous)


def enrich_server(
    args: argparse.Namespace,
    nameserver: str,
    logs: Path,
    source: Path = servers.ROOT,
    profile: Path | None = None,
    cache_dir: Path | None = None,
) -> servers.Server:
    """Describe the misp-enrich server with the settings given on the command line."""
    server = servers.misp_enrich(
        servers.free_port(), nameserver, logs, source, profile, cache_dir
    )
    server.env.update(extra_env(args.enrich_env))
    return server


def extra_env(items: list[str]) -> dict[str, str]:
    """Read NAME=VALUE pairs given on the command line."""
    env = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"--enrich-env takes NAME=VALUE, not '{item}'")
        env[name] = value
    return env


def machine_noise(seconds: float = 1.0) -> float:
    """Return how many cores other processes keep busy right now."""
    before = busy_cpu_seconds()
    time.sleep(seconds)
    return (busy_cpu_seconds() - before) / seconds


def prepare_modules(
    args: argparse.Namespace, dns_port: int
) -> tuple[Path | None, str | None]:
    """Install misp-modules when asked for; return its command or why not."""
    if args.skip_misp_modules:
        return None, "skipped (--skip-misp-modules)"
    if dns_port != 53:
        # Its dns module passes the setting to dnspython as a bare address.
        return None, (
            "its dns module only reaches a nameserver on port 53, and "
            f"127.0.0.1:53 was not available (DNS server on port {dns_port})"
        )
    try:
        return servers.ensure_misp_modules(), None
    except RuntimeError as err:
        return None, f"install failed: {err}"


def start_dns(args: argparse.Namespace) -> DNSProcess:
    """Start the DNS server on the asked port, else on any port."""
    delay = args.dns_delay_ms / 1000
    try:
        return DNSProcess(args.dns_port, delay).start()
    except OSError as err:
        print(f"DNS server: {err}; using a free port instead", flush=True)
        return DNSProcess(0, delay).start()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = QUICK if args.quick else FULL
    raise_file_limit()
    RESULTS.mkdir(parents=True, exist_ok=True)
    logs = RESULTS / "logs"
    noise = machine_noise()
    if noise > 0.2:
        print(
            f"warning: other processes keep {noise:.1f} cores busy; the figures "
            "will be lower than on a quiet machine (see 'other CPU s')",
            flush=True,
        )
    running: list[Any] = []
    with contextlib.ExitStack() as stack, stopping(running):
        dns = start_dns(args)
        running.append(dns)
        nameserver = "127.0.0.1" if dns.port == 53 else f"127.0.0.1:{dns.port}"
        print(f"DNS server on 127.0.0.1:{dns.port}, delay {args.dns_delay_ms} ms")
        executable, skipped = prepare_modules(args, dns.port)

        source, revision = servers.ROOT, None
        if args.rev:
            source = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            revision = servers.export_revision(args.rev, source)
            print(f"misp-enrich from revision {revision}", flush=True)
        profile = RESULTS / "misp-enrich.prof" if args.profile else None
        # A new directory per run: a SQLite cache must start empty too.
        cache_dir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        enrich = Target(
            enrich_server(args, nameserver, logs, source, profile, cache_dir)
        )
        targets = [enrich]
        modules = None
        if executable is not None:
            modules = Target(
                servers.misp_modules(executable, servers.free_port(), logs)
            )
            targets.append(modules)
        elif skipped:
            print(f"misp-modules: {skipped}", flush=True)

        for target in targets:
            running.append(target.server)
            try:
                start_target(target, nameserver)
                print(
                    f"{target.server.name} ready in "
                    f"{target.figures['startup_ms']:.0f} ms",
                    flush=True,
                )
            except (RuntimeError, OSError) as err:
                target.failure = str(err)
                print(f"{target.server.name}: {err}", flush=True)
                target.server.stop()
        if enrich.failure:
            return 1

        measured = [t for t in targets if not t.failure]
        for target in measured:
            print(f"measuring {target.server.name}", flush=True)
            run_phases(target, dns, plan, nameserver, args.quiet_wait)
        for target in measured:
            target.server.stop()

        modules_version = (
            None
            if modules is None or modules.failure
            else (servers.installed_version())
        )
        info = machine(modules_version, args, revision)
        info["other_cores_busy_at_start"] = round(noise, 2)
        if skipped:
            info["misp_modules"] = skipped
        rows = build_rows(enrich, modules, plan, args.dns_delay_ms)
        markdown = render(rows, targets, info)
        print()
        print(markdown)
        if args.output:
            data = as_json(
                rows,
                {
                    "machine": info,
                    "plan": plan.__dict__,
                    "phases": {t.server.name: t.phases for t in targets},
                    "figures": {t.server.name: t.figures for t in targets},
                    "failures": {t.server.name: t.failure for t in targets},
                },
            )
            for path in write_outputs(args.output, markdown, data):
                print(f"wrote {path}")
        if profile is not None:
            print_profile(profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
