"""What the SDK and the agent cost a host (a Raspberry Pi is the yardstick).

In a fresh virtual environment holding only the SDK and the agent (what a
host installs, built from this repository's folders at the versions
constraints.txt locks), it measures:

- `import printernizer_stats.sdk`: time and resident memory added to a bare
  Python process, against `import grpc` alone (the floor);
- the agent: time from exec to serving (its health check answers), and its
  resident memory once idle;
- the install footprint: what the SDK, and the agent with it, add to
  site-packages.

    .venv/bin/python -m benchmarks.footprint [--runs 9]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .harness import print_table, rss_kib

ROOT = Path(__file__).resolve().parent.parent
IMPORT_PROBE = """
import json, re, sys, time
def rss():
    return int(re.search(r"VmRSS:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) / 1024
before = rss(); started = time.perf_counter()
import {module}
print(json.dumps({{"ms": (time.perf_counter() - started) * 1000, "mb": rss() - before}}))
"""


def site_packages_mb(python: Path) -> float:
    found = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return sum(p.stat().st_size for p in Path(found).rglob("*") if p.is_file()) / 2**20


def install(python: Path, *folders: str) -> None:
    subprocess.run(
        [
            python,
            "-m",
            "pip",
            "install",
            "--quiet",
            "-c",
            ROOT / "constraints.txt",
            *(ROOT / f for f in folders),
        ],
        check=True,
    )


def import_cost(python: Path, module: str, runs: int) -> tuple[float, float]:
    """Median (ms, MB) of importing `module` in fresh processes."""
    samples = [
        json.loads(
            subprocess.run(
                [python, "-c", IMPORT_PROBE.format(module=module)], capture_output=True, text=True, check=True
            ).stdout
        )
        for _ in range(runs)
    ]
    return statistics.median(s["ms"] for s in samples), statistics.median(s["mb"] for s in samples)


def serving_now(socket_path: Path) -> bool:
    """Whether the agent's health service answers SERVING (probed from here)."""
    if not socket_path.exists():
        return False
    with grpc.insecure_channel(f"unix:{socket_path}") as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=0.5)
        except grpc.RpcError:
            return False
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


def agent_start(python: Path, runs: int) -> tuple[float, float]:
    """Median seconds from exec to serving, and the idle RSS (MB) after 3 s."""
    starts, idle = [], []
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="pzs-") as tmp:
            socket_path, db_path = Path(tmp) / "agent.sock", Path(tmp) / "agent.db"
            started = time.perf_counter()
            process = subprocess.Popen(
                [python, "-m", "printernizer_stats.agent", "--socket", socket_path, "--db", db_path],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                while not serving_now(socket_path):
                    if process.poll() is not None:
                        raise SystemExit("the agent stopped before serving")
                    time.sleep(0.005)
                starts.append(time.perf_counter() - started)
                time.sleep(3)
                idle.append(rss_kib(process.pid)[0] / 1024)
            finally:
                process.terminate()
                process.wait(10)
    return statistics.median(starts), statistics.median(idle)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="pzs-footprint-"))
    try:
        python = workdir / "venv" / "bin" / "python"
        subprocess.run(
            [getattr(sys, "_base_executable", sys.executable), "-m", "venv", workdir / "venv"], check=True
        )
        empty = site_packages_mb(python)
        install(python, "gen", "stats_common", "sdk")
        with_sdk = site_packages_mb(python)
        grpc_ms, grpc_mb = import_cost(python, "grpc", args.runs)
        sdk_ms, sdk_mb = import_cost(python, "printernizer_stats.sdk", args.runs)
        install(python, "stats_agent")
        with_agent = site_packages_mb(python)
        serving, idle = agent_start(python, max(3, args.runs // 3))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print_table(
        "What the SDK and the agent cost a host",
        ["what", "measured", "target"],
        [
            ["`import grpc` alone (the floor)", f"{grpc_ms:.0f} ms, +{grpc_mb:.1f} MB", "—"],
            ["`import printernizer_stats.sdk`", f"{sdk_ms:.0f} ms, +{sdk_mb:.1f} MB", "≤ 100 ms, ≤ 22 MB"],
            ["agent: exec to serving", f"{serving:.2f} s", "≤ 0.5 s"],
            ["agent: idle resident memory", f"{idle:.1f} MB", "≤ 40 MB"],
            ["installed: the SDK (with grpcio, protobuf)", f"{with_sdk - empty:.1f} MB", "—"],
            ["installed: the SDK and the agent", f"{with_agent - empty:.1f} MB", "—"],
        ],
    )


if __name__ == "__main__":
    main()
