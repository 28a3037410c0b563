"""Identity-resolution benchmarks against real databases (the database half of ``bench/identity.py``).

Run: ``.venv/bin/python bench/identity_db.py [--postgres-url URL] [--people N] [--lookup-profiles N] [section ...]``

Sections:

* ``identify`` — identity-resolution throughput in profiles per second for distinct synthetic people (email,
  phone, names, city, country), committed every 500, on SQLite (a file) and on PostgreSQL: batched
  (``resolve_many``, as event batches and imports resolve) and one call per person (``resolve_prepared``, as a
  single ``POST /api/v1/identify`` does). Target on PostgreSQL: at least 2,000 profiles/s.
* ``lookup`` — ``lookup_profile`` latency (normalize + one indexed query) with 1,000,000 profiles and
  identities bulk-loaded with COPY into a throwaway PostgreSQL database. Target: p99 under 5 ms.

Every database is created for the run and dropped afterwards. PostgreSQL comes from ``--postgres-url`` or
``HUB_BENCH_POSTGRES_URL`` / ``HUB_TEST_POSTGRES_URL`` (an admin URL such as postgresql://root@127.0.0.1/postgres);
without one the PostgreSQL parts are skipped and say so.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg
from cryptography.fernet import Fernet
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from hub import migrate
from hub.config import Settings
from hub.db import create_db_engine, make_sessionmaker
from hub.encryption import FieldEncryptor
from hub.profiles import services
from hub.profiles.identifiers import identity_policy
from hub.profiles.services import lookup_profile, prepare_identity, resolve_many, resolve_prepared

COMMIT_EVERY = 500
IDENTIFY_TARGET = 2_000.0
LOOKUP_P99_TARGET_MS = 5.0

_FIRST = ["Ann", "John", "Valéry", "Zoë", "Mary-Jane", "José", "Łukasz", "Chloé", "Ahmed", "Mei"]
_LAST = ["Lee", "Smith", "O'Brien", "García-López", "Müller", "Nguyen", "Kowalski", "Dupont", "Rossi", "Kim"]
_CITIES = [("San Francisco", "US"), ("Berlin", "DE"), ("London", "GB"), ("Paris", "FR"), ("Austin", "US")]


@dataclass
class Database:
    backend: str
    url: str
    drop: Callable[[], None]


def _postgres_admin_url(args: argparse.Namespace) -> str | None:
    return args.postgres_url or os.environ.get("HUB_BENCH_POSTGRES_URL") or os.environ.get("HUB_TEST_POSTGRES_URL")


@contextmanager
def throwaway_database(backend: str, admin_url: str | None) -> Iterator[Database]:
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="hub-bench-") as directory:
            url = f"sqlite:///{Path(directory) / 'bench.db'}"
            migrate.upgrade(url)
            yield Database("sqlite", url, lambda: None)
        return
    if admin_url is None:
        raise RuntimeError("no PostgreSQL URL")
    admin = make_url(admin_url).set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"hub_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_url(admin_url).set(drivername="postgresql+psycopg", database=name).render_as_string(hide_password=False)
    try:
        migrate.upgrade(url)
        yield Database("postgresql", url, lambda: None)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _settings(url: str) -> Settings:
    return Settings(env="test", database_url=url, encryption_keys=(Fernet.generate_key().decode(),))


def synthetic_people(count: int, seed: int) -> list[dict[str, object]]:
    rng = random.Random(seed)
    people = []
    for n in range(count):
        city, country = rng.choice(_CITIES)
        people.append(
            {
                "email": f"Person.{n}.{rng.randint(0, 10**6)}@Bench.Example",
                "phone": f"+1 {rng.choice(['415', '650', '212', '512'])} {rng.randint(200, 999)} {n % 10000:04d}"
                if n < 8_000_000 and rng.random() < 0.7
                else None,
                "first_name": rng.choice(_FIRST),
                "last_name": rng.choice(_LAST),
                "city": city,
                "country": country,
            }
        )
    return people


def _time_identify(db: Database, people: Sequence[dict[str, object]], *, batched: bool) -> tuple[float, int, int]:
    """Identify every person, committing every COMMIT_EVERY: one ``resolve_many`` call per batch (how event
    batches and imports resolve), or one ``resolve_prepared`` call per person."""
    settings = _settings(db.url)
    encryptor = FieldEncryptor(settings.encryption_keys)
    policy = identity_policy(settings.extra)
    engine = create_db_engine(db.url)
    factory = make_sessionmaker(engine)
    created = merged = 0
    now = datetime.now(UTC)
    try:
        session = factory()
        started = time.perf_counter()
        for start in range(0, len(people), COMMIT_EVERY):
            batch = [
                prepare_identity({k: v for k, v in user.items() if v is not None}, region=None, settings=settings)
                for user in people[start : start + COMMIT_EVERY]
            ]
            if batched:
                results = resolve_many(
                    session, encryptor, batch, source="bench", settings=settings, now=now, policy=policy
                )
            else:
                results = [
                    resolve_prepared(session, encryptor, p, source="bench", settings=settings, now=now, policy=policy)
                    for p in batch
                ]
            created += sum(r.created for r in results)
            merged += sum(len(r.merged) for r in results)
            session.commit()
            session.expunge_all()
        elapsed = time.perf_counter() - started
        session.close()
    finally:
        engine.dispose()
    return elapsed, created, merged


def run_identify(args: argparse.Namespace) -> None:
    people = synthetic_people(args.people, args.seed)
    print(f"identify: {len(people):,} distinct synthetic people, committed every {COMMIT_EVERY}")
    backends = ["sqlite"]
    admin = _postgres_admin_url(args)
    if admin:
        backends.append("postgresql")
    else:
        print("  postgresql: skipped (no --postgres-url / HUB_BENCH_POSTGRES_URL / HUB_TEST_POSTGRES_URL)")
    for backend in backends:
        for batched, label in ((True, "resolve_many, 500 per call"), (False, "resolve_prepared, one per call")):
            with throwaway_database(backend, admin) as db:
                elapsed, created, merged = _time_identify(db, people, batched=batched)
            rate = len(people) / elapsed
            verdict = ""
            if backend == "postgresql":
                verdict = f"  target >= {IDENTIFY_TARGET:,.0f}/s: {'MET' if rate >= IDENTIFY_TARGET else 'MISSED'}"
            print(
                f"  {backend:<10} {label:<31} {rate:>8,.0f} profiles/s  ({elapsed:.2f} s; {created:,} created, "
                f"{merged:,} merged){verdict}"
            )


def _bulk_load(url: str, count: int) -> None:
    """COPY ``count`` profiles and their email identities (hash of person{i}@bench.example) into the database."""
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    now = datetime.now(UTC)
    # A real Fernet token is ~140 characters; a fixed one of the same length keeps the rows realistic in size
    # without spending minutes encrypting values the lookup never reads.
    token = Fernet(Fernet.generate_key()).encrypt(b"person000000@bench.example").decode()
    with psycopg.connect(dsn) as conn, conn.cursor() as cursor:
        with cursor.copy("COPY profiles (id, created_at, updated_at, region) FROM STDIN") as copy:
            for n in range(count):
                copy.write_row((f"{n:032x}", now, now, "US"))
        with cursor.copy(
            "COPY identities (profile_id, kind, value_hash, value_encrypted, created_at, last_seen_at) FROM STDIN"
        ) as copy:
            for n in range(count):
                digest = hashlib.sha256(f"person{n}@bench.example".encode()).hexdigest()
                copy.write_row((f"{n:032x}", "email", digest, token, now, now))
        conn.commit()
        cursor.execute("ANALYZE profiles")
        cursor.execute("ANALYZE identities")
        conn.commit()


def _lookup_sql(engine: Engine) -> str:
    """The SQL ``find_profile_by_identity`` sends (driver parameter style), for EXPLAIN."""
    return str(services._FIND_BY_IDENTITY_STATEMENT.compile(dialect=engine.dialect))


def run_lookup(args: argparse.Namespace) -> None:
    admin = _postgres_admin_url(args)
    if not admin:
        print("lookup: skipped (needs PostgreSQL: --postgres-url / HUB_BENCH_POSTGRES_URL / HUB_TEST_POSTGRES_URL)")
        return
    count = args.lookup_profiles
    print(f"lookup: {count:,} profiles with email identities on PostgreSQL; {args.lookups:,} random lookups")
    with throwaway_database("postgresql", admin) as db:
        started = time.perf_counter()
        _bulk_load(db.url, count)
        print(f"  bulk load (COPY) {time.perf_counter() - started:.1f} s")
        settings = _settings(db.url)
        engine = create_db_engine(db.url)
        factory = make_sessionmaker(engine)
        rng = random.Random(args.seed)
        try:
            with factory() as session:
                # The plan lookups run with: one probe of the identities (kind, value_hash) unique index and one of
                # the profiles primary key, whatever the table size.
                print("  plan of the lookup query (EXPLAIN ANALYZE):")
                for (line,) in session.connection().exec_driver_sql(
                    f"EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {_lookup_sql(engine)}",
                    {"kind": "email", "value_hash": hashlib.sha256(b"person7@bench.example").hexdigest()},
                ):
                    print(f"    {line}")
                # Warm the connection and the statement cache, as a running server would be.
                for _ in range(200):
                    lookup_profile(session, "email", f"person{rng.randrange(count)}@bench.example", settings=settings)
                timings: list[float] = []
                misses = 0
                for _ in range(args.lookups):
                    n = rng.randrange(count)
                    email = f" Person{n}@Bench.Example " if n % 2 else f"person{n}@bench.example"
                    t0 = time.perf_counter()
                    found = lookup_profile(session, "email", email, settings=settings)
                    timings.append((time.perf_counter() - t0) * 1000)
                    misses += found != f"{n:032x}"
                session.rollback()
        finally:
            engine.dispose()
    timings.sort()
    p50 = statistics.median(timings)
    p99 = timings[min(len(timings) - 1, int(len(timings) * 0.99))]
    verdict = "MET" if p99 < LOOKUP_P99_TARGET_MS else "MISSED"
    print(
        f"  lookup_profile  p50 {p50:.3f} ms  p99 {p99:.3f} ms  max {timings[-1]:.3f} ms  "
        f"(wrong answers: {misses})  target p99 < {LOOKUP_P99_TARGET_MS} ms: {verdict}"
    )


SECTIONS: dict[str, Callable[[argparse.Namespace], None]] = {"identify": run_identify, "lookup": run_lookup}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--postgres-url", default=None, help="admin URL of a PostgreSQL server for throwaway DBs")
    parser.add_argument("--people", type=int, default=20_000, help="people identified per backend (default 20000)")
    parser.add_argument("--lookup-profiles", type=int, default=1_000_000, help="profiles loaded for lookups")
    parser.add_argument("--lookups", type=int, default=10_000, help="timed lookups (default 10000)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sections", nargs="*", metavar="section", help=f"one of {', '.join(SECTIONS)} (default: all)")
    parser.add_argument("--seed", type=int, default=20261128, help="random seed")
    add_arguments(parser)
    args = parser.parse_args(argv)
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s): {', '.join(unknown)}")
    for section in args.sections or SECTIONS:
        SECTIONS[section](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
