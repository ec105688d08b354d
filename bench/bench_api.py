"""7. The read API (`interest serve`): throughput and latency on loopback, idle and during a run.

A bounded closed-loop load: ``CLIENTS`` keep-alive connections, each sending its next request as
soon as the previous answer is in, from a small asyncio HTTP/1.1 client in this process (the
servers are other processes, as in production). Measured, in ``ROUNDS`` alternating rounds (the
machine is shared: alternating spreads a change of load over every variant alike) of
``SECONDS / ROUNDS`` each, after a warm-up:

- ``GET /users/{id}/recommendations?n=10`` over every user with a list in the snapshot, in turn;
- against a trivial FastAPI endpoint (a sync ``def`` returning a two-key dict through a
  response model, as the API's endpoints do) served with the same uvicorn settings on the same
  machine: the ratio is what the warehouse read costs on top of the framework;
- the same two with one client (the latency of a request that does not queue);
- against the endpoint's read function alone (``cli.get_recommendations`` in a loop in this
  process, one thread, no HTTP): what HTTP, FastAPI and the server's threads add to the read;
- the endpoint again while a pipeline process runs the next sample hours on the live warehouse
  and publishes a snapshot after each: the server keeps answering (from the previous snapshot)
  and switches to each new one without a restart.

The warehouse is a copy of the suite's seed (one real sample hour through the whole pipeline)
with ``HOURS_BEFORE`` more sample hours run, so that there are lists for a dozen users.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    HOUR,
    SEED_HOUR,
    WORK_DIR,
    Section,
    build_seed,
    clone_data_dir,
    run_hour,
    section_main,
    settings_for,
)

CLIENTS = 8
SECONDS = 30.0  # per variant, over all rounds
ROUNDS = 3
SINGLE_CLIENT_SECONDS = 9.0  # per variant, over all rounds
WARMUP_SECONDS = 2.0
HOURS_BEFORE = 2  # sample hours run before the measurements (more users with a list)
HOURS_DURING = 2  # run while the load runs
HOST = "127.0.0.1"
_CONTENT_LENGTH = re.compile(rb"content-length: *(\d+)", re.I)


# --- load ------------------------------------------------------------------------------------


class Samples:
    """Latencies and errors of one variant, accumulated over rounds."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.seconds = 0.0

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.latencies)

        def pct(q: float) -> float:
            return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

        return {
            "requests": len(ordered), "seconds": round(self.seconds, 2),
            "rps": len(ordered) / self.seconds, "p50_ms": pct(0.50), "p99_ms": pct(0.99),
            "max_ms": ordered[-1] * 1000, "errors": len(self.errors),
            "error_kinds": sorted(set(self.errors)),
        }


async def _client(port: int, paths: list[str], start: int, step: int, stop: Any,
                  samples: Samples | None) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    i = start
    try:
        while not stop():
            request = f"GET {paths[i % len(paths)]} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
            i += step
            began = time.perf_counter()
            writer.write(request)
            try:
                head = await reader.readuntil(b"\r\n\r\n")
                match = _CONTENT_LENGTH.search(head)
                await reader.readexactly(int(match.group(1)) if match else 0)
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                if samples is not None:
                    samples.errors.append(type(exc).__name__)
                writer.close()
                reader, writer = await asyncio.open_connection(HOST, port)
                continue
            if samples is not None:
                samples.latencies.append(time.perf_counter() - began)
                if head[9:12] != b"200":
                    samples.errors.append(head[9:12].decode())
    finally:
        writer.close()


async def _load(port: int, paths: list[str], clients: int, seconds: float | None,
                samples: Samples, until: Any) -> None:
    warm_end = time.perf_counter() + WARMUP_SECONDS
    await asyncio.gather(*(
        _client(port, paths, c, clients, lambda: time.perf_counter() > warm_end, None)
        for c in range(clients)
    ))
    began = time.perf_counter()
    end = began + seconds if seconds else float("inf")

    def stop() -> bool:
        return time.perf_counter() > end or (until is not None and until())

    await asyncio.gather(*(_client(port, paths, c, clients, stop, samples)
                           for c in range(clients)))
    samples.seconds += time.perf_counter() - began


def load(port: int, paths: list[str], clients: int, seconds: float | None, samples: Samples,
         until: Any = None) -> None:
    """Closed-loop load on one server for ``seconds`` (or until ``until()``), into ``samples``."""
    asyncio.run(_load(port, paths, clients, seconds, samples, until))


def bare_reads(con: Any, users: list[str], seconds: float, samples: Samples) -> None:
    """The endpoint's read function (cli.get_recommendations) in a loop, one thread, no HTTP."""
    from interest_pipeline import cli
    from interest_pipeline.config import DEFAULT_MODEL_ID

    began = time.perf_counter()
    i = 0
    while time.perf_counter() < began + seconds:
        started = time.perf_counter()
        cli.get_recommendations(con, users[i % len(users)], DEFAULT_MODEL_ID, None, 10)
        samples.latencies.append(time.perf_counter() - started)
        i += 1
    samples.seconds += time.perf_counter() - began


# --- servers ---------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _get(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=10) as response:
        return json.loads(response.read())


def _start(cmd: list[str], port: int, ready_path: str, log: Path) -> subprocess.Popen:
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
        try:
            _get(port, ready_path)
            return proc
        except OSError:
            time.sleep(0.2)
    proc.terminate()
    raise RuntimeError(f"server did not start: {log.read_text()[-2000:]}")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()


def serve_trivial(port: int) -> None:
    """The baseline server: one trivial endpoint, on the API's uvicorn settings."""
    from fastapi import FastAPI
    from pydantic import BaseModel

    from interest_pipeline.api import serve

    class Pong(BaseModel):
        ok: bool
        n: int

    app = FastAPI()

    @app.get("/ping", response_model=Pong)
    def ping() -> dict[str, Any]:
        return {"ok": True, "n": 1}

    serve(app, HOST, port, access_log=False, log_level="warning")


def run_pipeline(data_dir: Path, first: int, hours: int) -> None:
    """What the DAG does per hour (every stage, then publish_snapshot), for ``hours`` hours
    from the seed hour + ``first``."""
    settings = settings_for(data_dir)
    for i in range(first, first + hours):
        start = SEED_HOUR + i * HOUR
        seconds = run_hour(settings, start, publish=True)["total_wall"]
        print(f"hour {start}: {seconds:.1f} s, published", flush=True)


# --- the section -----------------------------------------------------------------------------


def _rows(section: Section, label: str, result: dict[str, Any], base: dict[str, Any],
          base_label: str, note: str) -> None:
    section.add(f"{label}: requests/s", round(result["rps"]), "req/s",
                baseline=round(base["rps"]), baseline_metric=base_label,
                note=f"{note}; errors {result['errors']}")
    for key, name in (("p50_ms", "p50"), ("p99_ms", "p99")):
        section.add(f"{label}: {name} latency", round(result[key], 2), "ms",
                    baseline=round(base[key], 2), baseline_metric=base_label)


def run(args: Any) -> Section:
    from interest_pipeline import snapshot
    from interest_pipeline.warehouse import connect

    section = Section("read API (interest serve)")
    scale = 1 / 6 if args.quick else 1.0
    hours_before, hours_during = (1, 1) if args.quick else (HOURS_BEFORE, HOURS_DURING)
    seed = build_seed(WORK_DIR)
    data = clone_data_dir(seed, WORK_DIR / "api", with_landing=True)
    warehouse = data / "warehouse.duckdb"
    # More sample hours first, so that the list is read for more users than the seed's few.
    run_pipeline(data, 1, hours_before)
    con = connect(snapshot.snapshot_path(warehouse), read_only=True)
    users = [u for (u,) in con.execute(
        "select distinct user_id from recommendations order by user_id"
    ).fetchall()]
    rec_paths = [f"/users/{quote(u, safe='')}/recommendations?n=10" for u in users]

    trivial_port, port = _free_port(), _free_port()
    trivial = _start([sys.executable, __file__, "--serve-trivial", str(trivial_port)],
                     trivial_port, "/ping", WORK_DIR / "api_trivial.log")
    server = _start(
        [sys.executable, "-m", "interest_pipeline.cli", "serve", "--warehouse", str(warehouse),
         "--port", str(port), "--no-access-log", "--log-level", "warning"],
        port, "/health", WORK_DIR / "api_server.log",
    )
    variants = {name: Samples() for name in ("trivial", "recs", "trivial_1", "recs_1", "bare")}
    per_round = SECONDS * scale / ROUNDS
    single = SINGLE_CLIENT_SECONDS * scale / ROUNDS
    first = hours_before + 1
    try:
        try:
            for r in range(ROUNDS):
                order = [("trivial", trivial_port, ["/ping"]), ("recs", port, rec_paths)]
                for name, p, paths in order if r % 2 == 0 else order[::-1]:
                    load(p, paths, CLIENTS, per_round, variants[name])
                    load(p, paths, 1, single, variants[f"{name}_1"])
                bare_reads(con, users, single, variants["bare"])
        finally:
            con.close()
            _stop(trivial)
        before = _get(port, "/health")
        busy = Samples()
        pipeline_log = WORK_DIR / "api_pipeline.log"
        with pipeline_log.open("w") as fh:
            began = time.monotonic()
            pipeline = subprocess.Popen(
                [sys.executable, __file__, "--run-pipeline", str(data), str(first),
                 str(hours_during)],
                stdout=fh, stderr=subprocess.STDOUT,
            )
            load(port, rec_paths, CLIENTS, None, busy, until=lambda: pipeline.poll() is not None)
            pipeline.wait()
            pipeline_seconds = time.monotonic() - began
        if pipeline.returncode != 0:
            raise RuntimeError(f"pipeline failed: {pipeline_log.read_text()[-2000:]}")
        after = _get(port, "/health")
    finally:
        _stop(server)

    result = {name: samples.summary() for name, samples in variants.items()}
    result["during_pipeline_run"] = busy.summary()
    idle, base = result["recs"], result["trivial"]
    label = "GET /users/{id}/recommendations"
    same = "trivial FastAPI endpoint (same server settings)"
    note = (f"{CLIENTS} clients, {len(users)} users in turn, n=10; {idle['requests']:,} "
            f"requests in {idle['seconds']:.0f} s ({ROUNDS} rounds alternating with the baseline)")
    _rows(section, label, idle, base, same, note)
    one = result["recs_1"]
    _rows(section, f"{label}, 1 client", one, result["trivial_1"], same,
          f"{one['requests']:,} requests in {one['seconds']:.0f} s")
    bare = result["bare"]
    section.add(f"{label}: requests/s against its read alone", round(idle["rps"]), "req/s",
                baseline=round(bare["rps"]),
                baseline_metric="cli.get_recommendations in a loop (1 thread, no HTTP)",
                note=f"the read alone: p50 {bare['p50_ms']:.2f} ms, p99 {bare['p99_ms']:.2f} ms "
                     "per call")
    last_hour = SEED_HOUR + (first + hours_during - 1) * HOUR
    served = after["last_run"]["interval_start"]
    busy_result = result["during_pipeline_run"]
    _rows(section, "same, during a pipeline run", busy_result, idle, "same, idle",
          f"{hours_during} hours run and published in {pipeline_seconds:.0f} s beside the load; "
          f"then serving the run of {served} (the last: {last_hour.isoformat()}), no restart")
    section.details = {
        "clients": CLIENTS, "rounds": ROUNDS, "warmup_seconds": WARMUP_SECONDS,
        "users": len(users), **result, "pipeline_seconds": pipeline_seconds,
        "health_before_run": before, "health_after_run": after,
        "measured_at": datetime.now().isoformat(timespec="seconds"),
    }
    return section


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve-trivial"]:
        serve_trivial(int(sys.argv[2]))
    elif sys.argv[1:2] == ["--run-pipeline"]:
        run_pipeline(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
    else:
        section_main(run)
