"""Ingestion benchmark: hub under gunicorn (2 workers of 4 threads) on PostgreSQL, loaded from separate processes.

Run: ``.venv/bin/python bench/ingest.py [--seconds 20] [--clients 8] [--postgres URL]``

What it does, end to end:

1. creates a throwaway PostgreSQL database (dropped at the end), runs ``hub db upgrade`` and
   ``hub api-key create --scope ingest`` against it;
2. starts ``gunicorn -w 2 --threads 4 'hub.app:create_app()'`` (the production configuration of README.md and
   docker-compose.yml) with ``HUB_DATABASE_URL`` pointing at it;
3. from ``--clients`` load-generator *processes* (one persistent HTTP connection each), posts for ``--seconds``:
   first batches of 100 events, then single events; every request's latency is recorded;
4. prints events/s and requests/s, p50/p99 latency per phase, and the peak RSS (``VmHWM``) of each gunicorn
   worker, with the targets next to them, and the load average before and after (the machine may be shared:
   compare runs only at similar load);
5. prints the CPU time each phase cost per event: gunicorn workers, the PostgreSQL backends serving the bench
   database (when the server runs on this machine, read from ``/proc``) and the load generator. On a shared
   machine these move much less than the wall-clock figures, so they are the ones to compare between runs.

``--in-process`` instead calls ``ingest_events`` directly (no HTTP, no gunicorn) on a throwaway PostgreSQL
database and a SQLite file, and prints events/s, SQL statements per event (counted with a
``before_cursor_execute`` listener) and CPU time per event (this process, and the PostgreSQL backend) for
batches of 100 and for single events: where ingestion's own cost is.

Events are realistic for a shop: 60 % carry an email + external_id drawn from a pool of 5,000 people (so most
resolve to an existing profile, some create one), 40 % are anonymous page views with only a ``_fbp`` cookie.
Every event has a unique event_id, so all are accepted (the benchmark checks that).

Targets (issue #5): >= 5,000 events/s batched, >= 500 single-event requests/s, p99 < 100 ms for single events,
RSS < 250 MB per worker.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
from cryptography.fernet import Fernet
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
TARGETS = {"batched_events_per_s": 5000, "single_requests_per_s": 500, "single_p99_ms": 100, "rss_mb": 250}
POOL = 5000
REGIONS = ("US-CA", "DE", "FR", "US-TX", "GB")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_event(rng: random.Random, now: int) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_id": uuid.uuid4().hex,
        "occurred_at": now - rng.randint(0, 60),
        "action_source": "website",
        "source_url": "https://shop.example/p/" + str(rng.randint(1, 500)),
    }
    person = rng.randrange(POOL)
    # A person lives somewhere: the region is theirs, not re-drawn per event (which would rewrite the profile).
    event["context"] = {"region": REGIONS[person % len(REGIONS)]}
    if rng.random() < 0.6:
        event["event"] = "order_completed"
        event["user"] = {
            "email": f"person{person}@shop.example",
            "external_id": f"crm-{person}",
            "fbp": f"fb.1.1764300000000.{1000000 + person}",
            "ip_address": f"203.0.113.{person % 250 + 1}",
            "user_agent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15",
        }
        event["properties"] = {"total": round(rng.uniform(5, 300), 2), "currency": "USD", "order_id": uuid.uuid4().hex}
    else:
        event["event"] = "page_view"
        event["user"] = {"fbp": f"fb.1.1764300000000.{rng.randint(10**8, 10**9)}"}
        event["properties"] = {"path": "/p/" + str(rng.randint(1, 500))}
    return event


def load_worker(port: int, key: str, batch: int, seconds: float, seed: int, out: Any) -> None:
    """One client process: one persistent connection, requests back to back, latencies recorded."""
    rng = random.Random(seed)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    latencies: list[float] = []
    events = accepted = errors = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        now = int(time.time())
        items = [make_event(rng, now) for _ in range(batch)]
        body = json.dumps({"events": items} if batch > 1 else items[0]).encode()
        start = time.perf_counter()
        try:
            connection.request("POST", "/api/v1/events", body=body, headers=headers)
            response = connection.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException):
            errors += 1
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            continue
        latencies.append(time.perf_counter() - start)
        if response.status != 202:
            errors += 1
            continue
        events += batch
        accepted += sum(1 for r in json.loads(payload)["results"] if r["status"] == "accepted")
        if response.getheader("Connection", "").lower() == "close":
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    out.put(
        {
            "latencies": latencies,
            "events": events,
            "accepted": accepted,
            "errors": errors,
            "cpu_seconds": time.process_time(),
        }
    )


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (``/proc/<pid>/stat``), None when it cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_of(pids: Sequence[int]) -> dict[int, float]:
    return {pid: cpu for pid in pids if (cpu := cpu_seconds(pid)) is not None}


def cpu_spent(before: dict[int, float], after: dict[int, float]) -> float:
    # A process that started during the phase spent all of its CPU time in it.
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


def backend_pids(admin: Any, database: str) -> list[int]:
    """PostgreSQL backends connected to the bench database (their CPU is readable only on this machine)."""
    with psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True) as conn:
        rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (database,)).fetchall()
    return [row[0] for row in rows]


def run_phase(
    port: int,
    key: str,
    *,
    batch: int,
    clients: int,
    seconds: float,
    server_pids: Any = list,
    database_pids: Any = list,
) -> dict[str, Any]:
    queue: mp.Queue = mp.Queue()
    workers = [
        mp.Process(target=load_worker, args=(port, key, batch, seconds, 1000 * batch + i, queue))
        for i in range(clients)
    ]
    server_before, database_before = cpu_of(server_pids()), cpu_of(database_pids())
    start = time.perf_counter()
    for worker in workers:
        worker.start()
    parts = [queue.get() for _ in workers]
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - start
    server_cpu = cpu_spent(server_before, cpu_of(server_pids()))
    database_after = cpu_of(database_pids())
    database_cpu = cpu_spent(database_before, database_after) if database_after else float("nan")
    latencies = sorted(x for p in parts for x in p["latencies"])
    requests = len(latencies)

    def pct(q: float) -> float:
        return latencies[min(requests - 1, int(q * requests))] * 1000 if requests else float("nan")

    return {
        "batch": batch,
        "requests": requests,
        "events": sum(p["events"] for p in parts),
        "accepted": sum(p["accepted"] for p in parts),
        "errors": sum(p["errors"] for p in parts),
        "seconds": elapsed,
        "requests_per_s": requests / elapsed,
        "events_per_s": sum(p["events"] for p in parts) / elapsed,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "mean_ms": statistics.fmean(latencies) * 1000 if latencies else float("nan"),
        "server_cpu_s": server_cpu,
        "database_cpu_s": database_cpu,
        "client_cpu_s": sum(p["cpu_seconds"] for p in parts),
    }


def worker_pids(master: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Field 4 (after the parenthesised command name) is the parent pid.
        if int(stat.rsplit(")", 1)[1].split()[1]) == master:
            pids.append(int(entry.name))
    return sorted(pids)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def hub_cli(args: Sequence[str], env: dict[str, str]) -> str:
    result = subprocess.run(
        [PYTHON, "-m", "hub.cli", *args], env=env, cwd=ROOT, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise SystemExit(f"hub {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def wait_until_up(port: int, process: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit("gunicorn exited during start-up")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/healthz")
            if connection.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("gunicorn did not answer /healthz in time")


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def in_process(url: str, *, batches: int, singles: int) -> list[str]:
    """ingest_events called directly: events/s and statements per event, batches of 100, then single events."""
    from datetime import UTC, datetime

    from sqlalchemy import event

    from hub import migrate
    from hub.config import Settings
    from hub.db import create_db_engine, make_sessionmaker
    from hub.encryption import FieldEncryptor
    from hub.events.services import ingest_events

    migrate.upgrade(url)
    settings = Settings(env="test", database_url=url, encryption_keys=(Fernet.generate_key().decode(),))
    encryptor = FieldEncryptor(settings.encryption_keys)
    engine = create_db_engine(url)
    statements = [0]

    @event.listens_for(engine, "before_cursor_execute")
    def _count(*_args: Any) -> None:
        statements[0] += 1

    factory = make_sessionmaker(engine)

    def database_pids() -> list[int]:
        if engine.dialect.name != "postgresql":
            return []
        with engine.connect() as connection:
            query = "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            return list(connection.exec_driver_sql(query).scalars())

    rng = random.Random(7)
    lines = []
    try:
        for label, size, count in (("batches of 100", 100, batches), ("single events", 1, singles)):
            bodies = [[make_event(rng, int(time.time())) for _ in range(size)] for _ in range(count)]
            database_before = cpu_of(database_pids())
            statements[0] = 0
            started, cpu_started = time.perf_counter(), time.process_time()
            for body in bodies:
                with factory() as session:
                    results = ingest_events(session, encryptor, body, settings=settings, now=datetime.now(UTC))
                    session.commit()
                if any(r.status != "accepted" for r in results):
                    raise SystemExit(f"not accepted: {[r for r in results if r.status != 'accepted'][:2]}")
            elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
            events = size * count
            database_after = cpu_of(database_pids())
            database = (
                f", PostgreSQL {cpu_spent(database_before, database_after) / events * 1e6:5.0f} µs"
                if database_after
                else ""
            )
            lines.append(
                f"{label:>15}: {events / elapsed:8.0f} events/s  {statements[0] / events:5.2f} statements/event  "
                f"CPU per event: hub {cpu / events * 1e6:5.0f} µs{database}  ({events} events, {elapsed:.1f} s)"
            )
    finally:
        engine.dispose()
    return lines


def run_in_process(admin: Any, batches: int, singles: int) -> int:
    print(f"hub ingestion, in process (ingest_events, commit per request); load average {load_average()}")
    with tempfile.TemporaryDirectory(prefix="hub-bench-") as directory:
        for line in in_process(f"sqlite:///{directory}/bench.db", batches=batches, singles=singles):
            print(f"  sqlite     {line}")
    name = f"hub_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        url = admin.set(drivername="postgresql+psycopg", database=name).render_as_string(hide_password=False)
        for line in in_process(url, batches=batches, singles=singles):
            print(f"  postgresql {line}")
    finally:
        with psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print(f"load average after: {load_average()}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="duration of each measured phase")
    parser.add_argument("--clients", type=int, default=8, help="load-generator processes (connections)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument(
        "--threads", type=int, default=4, help="gunicorn threads per worker (production: 4; 1: sync workers)"
    )
    parser.add_argument(
        "--postgres",
        default=os.environ.get("HUB_BENCH_POSTGRES_URL", "postgresql://root@127.0.0.1:5432/postgres"),
        help="an admin URL of a PostgreSQL server where a throwaway database may be created",
    )
    parser.add_argument(
        "--in-process", action="store_true", help="call ingest_events directly and count SQL statements per event"
    )
    parser.add_argument("--batches", type=int, default=50, help="--in-process: batches of 100 to ingest")
    parser.add_argument("--singles", type=int, default=1000, help="--in-process: single events to ingest")
    args = parser.parse_args(argv)

    admin = make_url(args.postgres).set(drivername="postgresql")
    if args.in_process:
        return run_in_process(admin, args.batches, args.singles)
    load_before = load_average()
    name = f"hub_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    data_dir = tempfile.mkdtemp(prefix="hub-bench-")
    env = {
        **os.environ,
        "HUB_DATABASE_URL": admin.set(drivername="postgresql+psycopg", database=name).render_as_string(
            hide_password=False
        ),
        "HUB_DATA_DIR": data_dir,
        "HUB_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "HUB_SECRET_KEY": uuid.uuid4().hex * 2,
        "PYTHONPATH": str(ROOT),
    }
    server: subprocess.Popen | None = None
    try:
        hub_cli(["db", "upgrade"], env)
        key = hub_cli(["api-key", "create", "--name", "bench", "--scope", "ingest"], env).strip().splitlines()[0]
        port = free_port()
        server = subprocess.Popen(
            [
                PYTHON,
                "-m",
                "gunicorn",
                "--workers",
                str(args.workers),
                "--threads",
                str(args.threads),
                "--bind",
                f"127.0.0.1:{port}",
                "--log-level",
                "warning",
                "hub.app:create_app()",
            ],
            env=env,
            cwd=ROOT,
        )
        wait_until_up(port, server)
        # Warm-up: imports, caches and connection pools of both workers.
        run_phase(port, key, batch=100, clients=args.clients, seconds=2)
        run_phase(port, key, batch=1, clients=args.clients, seconds=2)

        probes = {
            "server_pids": lambda: worker_pids(server.pid),
            "database_pids": lambda: backend_pids(admin, name),
        }
        batched = run_phase(port, key, batch=100, clients=args.clients, seconds=args.seconds, **probes)
        single = run_phase(port, key, batch=1, clients=args.clients, seconds=args.seconds, **probes)
        rss = {pid: peak_rss_mb(pid) for pid in worker_pids(server.pid)}
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
        with psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    kind = "sync workers" if args.threads == 1 else f"workers of {args.threads} threads"
    print(f"hub ingestion benchmark: gunicorn {args.workers} {kind}, {args.clients} client processes, PostgreSQL")
    print(f"cpus: {os.cpu_count()} (server, PostgreSQL and load generator share them)")
    print(f"load average (1, 5, 15 min) before: {load_before}; after: {load_average()}")
    for label, phase in (("batches of 100", batched), ("single events", single)):
        print(
            f"{label:>15}: {phase['events_per_s']:8.0f} events/s  {phase['requests_per_s']:7.0f} requests/s  "
            f"p50 {phase['p50_ms']:6.1f} ms  p99 {phase['p99_ms']:6.1f} ms  "
            f"({phase['events']} events, {phase['accepted']} accepted, {phase['errors']} errors, "
            f"{phase['seconds']:.1f} s)"
        )
    for label, phase in (("batches of 100", batched), ("single events", single)):
        per_event = 1e6 / max(phase["events"], 1)
        print(
            f"{label:>15}: CPU per event: gunicorn {phase['server_cpu_s'] * per_event:6.0f} µs, "
            f"PostgreSQL {phase['database_cpu_s'] * per_event:6.0f} µs, "
            f"load generator {phase['client_cpu_s'] * per_event:6.0f} µs"
        )
    for pid, mb in rss.items():
        print(f"worker {pid}: peak RSS {mb:.0f} MB")
    checks = {
        "batched events/s >= 5000": batched["events_per_s"] >= TARGETS["batched_events_per_s"],
        "single requests/s >= 500": single["requests_per_s"] >= TARGETS["single_requests_per_s"],
        "single p99 < 100 ms": single["p99_ms"] < TARGETS["single_p99_ms"],
        "RSS < 250 MB per worker": bool(rss) and max(rss.values()) < TARGETS["rss_mb"],
        "every event accepted": batched["accepted"] == batched["events"] and single["accepted"] == single["events"],
    }
    for label, ok in checks.items():
        print(f"  [{'met' if ok else 'MISSED'}] {label}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
