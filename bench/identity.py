"""Identity benchmarks for hub.

Run: ``.venv/bin/python bench/identity.py [--rows N] [--seed S] [section ...]``

Sections (run in the order given; default: all that are implemented):

* ``normalize`` — hub's ``normalize_user`` (normalize + SHA-256) against the official ``facebook-business``
  SDK's ``UserData.normalize()`` on the same deterministic synthetic rows, in the same process. Target:
  hub at least 2x the SDK's rows per second. The SDK is timed doing what it does (it neither adds
  country codes to phones nor maps names to codes); rows where it raises are counted, not dropped.
  A second figure times both on exactly the rows the SDK accepts, since it does less work on the rows
  where it raises part-way.

* ``identify``, ``lookup`` — identity-resolution throughput on SQLite and PostgreSQL, and lookup latency
  with 1M profiles on PostgreSQL: see ``bench/identity_db.py`` (its options: ``--postgres-url``, ``--people``,
  ``--lookup-profiles``, ``--lookups``).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import unicodedata
from collections.abc import Callable, Sequence
from pathlib import Path

# Allow `python bench/identity.py` from the repository root without installing hub.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hub.profiles import normalize as hub_normalize

# --------------------------------------------------------------------------------------------------
# Synthetic users
# --------------------------------------------------------------------------------------------------

_FIRST = ["Ann", "John", "Valéry", "Zoë", "O'Neil", "Mary-Jane", "José", "Łukasz", "Chloé", "Ahmed", "Mei", "정"]
_LAST = ["Lee", "Smith", "O'Brien", "García-López", "Müller", "Nguyen", "Kowalski", "Dupont", "Rossi", "Kim"]
_DOMAINS = ["gmail.com", "yahoo.com", "outlook.com", "hotmail.co.uk", "web.de", "example.org", "icloud.com"]
_US_PLACES = [
    ("San Francisco", "CA", "941"),
    ("New York", "New York", "100"),
    ("Austin", "TX", "787"),
    ("Seattle", "Washington", "981"),
    ("Boston", "MA", "021"),
    ("O'Fallon", "Missouri", "633"),
]
_US_AREA_CODES = ["415", "650", "212", "512", "206", "617", "636", "303", "305", "773"]
_UK_PLACES = [("London", "", "SW1A 1AA"), ("Manchester", "", "M1 1AE"), ("Leeds", "", "LS1 4AP")]
_DE_PLACES = [("Berlin", "Berlin", "10115"), ("München", "Bayern", "80331"), ("Köln", "NRW", "50667")]
_GENDERS = ["f", "m", "Female", "male", "F", "woman", "nonbinary", ""]
_USER_AGENT = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Safari/605.1"


def _us_phone(rng: random.Random) -> str:
    area = rng.choice(_US_AREA_CODES)
    exchange = f"{rng.randint(2, 9)}{rng.randint(0, 9)}{rng.randint(0, 9)}"
    line = f"{rng.randint(0, 9999):04d}"
    return rng.choice(
        [
            f"+1 {area} {exchange} {line}",
            f"({area}){exchange}-{line}",
            f"{area}.{exchange}.{line}",
            f"+1{area}{exchange}{line}",
            f"1-{area}-{exchange}-{line}",
        ]
    )


def _uk_phone(rng: random.Random) -> str:
    digits = f"{rng.randint(0, 999999):06d}"
    return rng.choice([f"+44 7700 9{digits[:5]}", f"07700 9{digits[:5]}", f"+44 (0)20 79{digits[:2]} {digits[2:6]}"])


def _de_phone(rng: random.Random) -> str:
    return rng.choice([f"+49 30 {rng.randint(1000000, 9999999)}", f"030 {rng.randint(1000000, 9999999)}"])


def synthetic_users(rows: int, seed: int) -> list[tuple[dict[str, object], str]]:
    """``rows`` CONTRACT ``user`` objects with their event region, generated deterministically."""
    rng = random.Random(seed)
    users: list[tuple[dict[str, object], str]] = []
    for n in range(rows):
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        market = rng.random()
        if market < 0.6:
            city, state, zip3 = rng.choice(_US_PLACES)
            zip_code = f"{zip3}{rng.randint(0, 99):02d}" + rng.choice(["", f"-{rng.randint(0, 9999):04d}"])
            country, region, phone = rng.choice(["US", "us", "United States", "USA"]), "US-CA", _us_phone(rng)
        elif market < 0.8:
            city, state, zip_code = rng.choice(_UK_PLACES)
            country, region, phone = rng.choice(["GB", "UK", "United Kingdom"]), "GB", _uk_phone(rng)
        else:
            city, state, zip_code = rng.choice(_DE_PLACES)
            country, region, phone = rng.choice(["DE", "de", "Germany"]), "DE", _de_phone(rng)
        year, month, day = rng.randint(1940, 2005), rng.randint(1, 12), rng.randint(1, 28)
        dob = rng.choice([f"{year}-{month:02d}-{day:02d}", f"{month}/{day}/{year}", f"{year}{month:02d}{day:02d}"])
        # Mailboxes are ASCII in practice even when the name is not (valéry.müller → valery.muller).
        ascii_first, ascii_last = (
            unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode() or "user" for name in (first, last)
        )
        email = f"{ascii_first}.{ascii_last}{n}@{rng.choice(_DOMAINS)}"
        if rng.random() < 0.3:
            email = f"  {email.upper()} "
        user: dict[str, object] = {
            "email": email,
            "phone": phone,
            "external_id": f"crm-{n}",
            "first_name": first,
            "last_name": last,
            "city": city,
            "state": state,
            "zip": zip_code,
            "country": country,
            "date_of_birth": dob,
            "gender": rng.choice(_GENDERS),
            "fbp": f"fb.1.17643{rng.randint(10**7, 10**8 - 1)}.{rng.randint(10**9, 10**10 - 1)}",
            "ip_address": f"203.0.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
            "user_agent": _USER_AGENT,
        }
        if rng.random() < 0.3:
            user["fbc"] = f"fb.1.17643{rng.randint(10**7, 10**8 - 1)}.IwAR{rng.getrandbits(64):x}"
        for optional in ("phone", "date_of_birth", "gender", "state"):
            if rng.random() < 0.15:
                del user[optional]
        users.append((user, region))
    return users


# --------------------------------------------------------------------------------------------------
# Section: normalize
# --------------------------------------------------------------------------------------------------


def _clear_hub_caches() -> None:
    """Start hub cold, so its lru caches are filled within the timed run like in a fresh process.

    Every per-value cache of the module is cleared; the lookup tables built once from pycountry
    (maxsize 1) are kept warm, as process start-up cost rather than per-row work.
    """
    for value in vars(hub_normalize).values():
        cache_info = getattr(value, "cache_info", None)
        ours = getattr(value, "__module__", None) == hub_normalize.__name__
        if ours and callable(cache_info) and cache_info().maxsize != 1:
            value.cache_clear()


def _time_hub(users: Sequence[tuple[dict[str, object], str]]) -> tuple[float, int]:
    normalize_user = hub_normalize.normalize_user
    rows_with_errors = 0
    _clear_hub_caches()
    start = time.process_time()
    for user, region in users:
        result = normalize_user(user, phone_regions=(region,))
        if result.errors:
            rows_with_errors += 1
    return time.process_time() - start, rows_with_errors


def _time_sdk(users: Sequence[tuple[dict[str, object], str]]) -> tuple[float, list[int]]:
    """CPU seconds for the SDK over ``users``, and the indexes of the rows where it raised."""
    from facebook_business.adobjects.serverside.gender import Gender
    from facebook_business.adobjects.serverside.user_data import UserData

    # The SDK only takes the Gender enum; map the strings a caller would map, skip the rest.
    genders = {"f": Gender.FEMALE, "female": Gender.FEMALE, "woman": Gender.FEMALE}
    genders |= {"m": Gender.MALE, "male": Gender.MALE, "man": Gender.MALE}
    failures: list[int] = []
    start = time.process_time()
    for index, (user, _region) in enumerate(users):
        try:
            data = UserData(
                email=user.get("email"),
                phone=user.get("phone"),
                external_id=user.get("external_id"),
                first_name=user.get("first_name"),
                last_name=user.get("last_name"),
                city=user.get("city"),
                state=user.get("state"),
                zip_code=user.get("zip"),
                country_code=user.get("country"),
                date_of_birth=user.get("date_of_birth"),
                gender=genders.get(str(user.get("gender", "")).strip().lower()),
                fbp=user.get("fbp"),
                fbc=user.get("fbc"),
                client_ip_address=user.get("ip_address"),
                client_user_agent=user.get("user_agent"),
            )
            data.normalize()
        except (TypeError, ValueError):
            failures.append(index)
    return time.process_time() - start, failures


def _best_times(users: Sequence[tuple[dict[str, object], str]], repeat: int) -> tuple[float, list[int], float, int]:
    """Best SDK CPU seconds, rows the SDK raised on, best hub CPU seconds, hub rows with an error.

    The two alternate and each keeps its best run, timed in this process's CPU seconds: the machine
    may be shared, and the best CPU-time run is the one least disturbed by other work.
    """
    sdk_seconds = hub_seconds = float("inf")
    sdk_failures: list[int] = []
    hub_error_rows = 0
    for _ in range(repeat):
        seconds, sdk_failures = _time_sdk(users)
        sdk_seconds = min(sdk_seconds, seconds)
        seconds, hub_error_rows = _time_hub(users)
        hub_seconds = min(hub_seconds, seconds)
    return sdk_seconds, sdk_failures, hub_seconds, hub_error_rows


def _report(label: str, rows: int, sdk_seconds: float, sdk_failures: int, hub_seconds: float, hub_errors: int) -> None:
    sdk_rate, hub_rate = rows / sdk_seconds, rows / hub_seconds
    print(f"[normalize] {label}: {rows:,} rows")
    print(
        f"[normalize]   facebook-business UserData.normalize(): {sdk_rate:,.0f} rows/s "
        f"({sdk_seconds:.2f} CPU s; {sdk_failures:,} rows raised)"
    )
    print(
        f"[normalize]   hub normalize_user (normalize + SHA-256): {hub_rate:,.0f} rows/s "
        f"({hub_seconds:.2f} CPU s; {hub_errors:,} rows with a rejected field)"
    )
    verdict = "meets" if hub_rate >= 2 * sdk_rate else "MISSES"
    print(f"[normalize]   hub / SDK on {label}: {hub_rate / sdk_rate:.2f}x ({verdict} the 2x target)")


def run_normalize(args: argparse.Namespace) -> None:
    users = synthetic_users(args.rows, args.seed)
    print(f"[normalize] seed {args.seed}; best of {args.repeat} runs each")
    sdk_seconds, sdk_failures, hub_seconds, hub_errors = _best_times(users, args.repeat)
    _report("all rows", len(users), sdk_seconds, len(sdk_failures), hub_seconds, hub_errors)
    # The SDK raises part-way through the rows it refuses (national phone numbers, country names), so
    # it does less work on them than on the rest. The second figure times both on exactly the rows the
    # SDK accepts, so that shortcut cannot flatter either side.
    refused = set(sdk_failures)
    accepted = [row for index, row in enumerate(users) if index not in refused]
    sdk_seconds, sdk_failures, hub_seconds, hub_errors = _best_times(accepted, args.repeat)
    _report("rows the SDK accepts", len(accepted), sdk_seconds, len(sdk_failures), hub_seconds, hub_errors)


# Section name -> runner. Identify-throughput and lookup-latency sections register here.
from identity_db import add_arguments as add_database_arguments  # noqa: E402 (bench/ is on sys.path)
from identity_db import run_identify, run_lookup  # noqa: E402

SECTIONS: dict[str, Callable[[argparse.Namespace], None]] = {
    "normalize": run_normalize,
    "identify": run_identify,
    "lookup": run_lookup,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sections", nargs="*", metavar="section", help=f"one of {', '.join(SECTIONS)} (default: all)")
    parser.add_argument("--rows", type=int, default=100_000, help="synthetic rows (default 100000)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per contender; the best counts")
    parser.add_argument("--seed", type=int, default=20261128, help="random seed for the synthetic rows")
    add_database_arguments(parser)
    args = parser.parse_args(argv)
    unknown = [section for section in args.sections if section not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s): {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    for section in args.sections or list(SECTIONS):
        SECTIONS[section](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
