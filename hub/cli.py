"""The ``hub`` command line (CONTRACT.md, "Command line")."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import Any, TypeVar

import click
from flask import Flask
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from hub import migrate
from hub.config import ConfigError, Settings, load_settings

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("hub")


def _one_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def friendly_errors(func: F) -> F:
    """Configuration and connection problems end with one line naming the variable, never a traceback."""

    @wraps(func)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from None
        except OperationalError as exc:
            raise click.ClickException(f"HUB_DATABASE_URL: cannot reach the database ({_one_line(exc)})") from None
        except SQLAlchemyError as exc:
            raise click.ClickException(f"database error: {_one_line(exc)}") from None

    return wrapped  # type: ignore[return-value]


def settings() -> Settings:
    return load_settings()


def _configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """hub: a consent-aware customer data hub for Meta's Conversions API."""
    _configure_logging()


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=5000, show_default=True, type=int, help="Port to listen on.")
@click.option("--no-worker", is_flag=True, help="Don't run the scheduler in this process.")
@click.option("--threads", default=8, show_default=True, type=int, help="Request threads.")
@friendly_errors
def serve(host: str, port: int, no_worker: bool, threads: int) -> None:
    """Apply migrations, start the scheduler in-process and serve the UI and API."""
    import waitress

    from hub.app import create_app
    from hub.auth.views import login_links

    app = create_app(settings())
    cfg = app.extensions["hub.settings"]
    engine = app.extensions["hub.engine"]
    migrate.upgrade(cfg.database_url, engine=engine)
    if not no_worker:
        from hub.delivery.worker import start_background_worker

        start_background_worker(app)
    base = f"http://{'localhost' if host in ('127.0.0.1', '0.0.0.0', '::') else host}:{port}"  # noqa: S104
    click.echo(f"hub is serving on {base} (database: {engine.url.render_as_string(hide_password=True)})")
    if not cfg.oidc_configured and not cfg.is_production:
        with app.app_context():
            token = login_links().issue()
        click.echo(f"One-time admin login link (valid 30 minutes, this process only): {base}/login/link/{token}")
    waitress.serve(app, host=host, port=port, threads=threads, ident="hub", _quiet=True)


@main.group()
def db() -> None:
    """Database migrations."""


@db.command("upgrade")
@click.argument("revision", default="head")
@friendly_errors
def db_upgrade(revision: str) -> None:
    """Apply migrations up to REVISION (default: head)."""
    cfg = settings()
    migrate.upgrade(cfg.database_url, revision)
    click.echo(f"database at {revision}")


@db.command("downgrade")
@click.argument("revision")
@friendly_errors
def db_downgrade(revision: str) -> None:
    """Revert migrations down to REVISION ("base" removes everything)."""
    cfg = settings()
    migrate.downgrade(cfg.database_url, revision)
    click.echo(f"database at {revision}")


@db.command("check")
@friendly_errors
def db_check() -> None:
    """Exit non-zero when the database is behind the migrations or the models and migrations disagree."""
    from hub.db import create_db_engine

    cfg = settings()
    engine = create_db_engine(cfg.database_url)
    try:
        if not migrate.is_at_head(engine):
            current = ", ".join(sorted(migrate.current_revisions(engine))) or "empty"
            raise click.ClickException(f"database is at {current}; run `hub db upgrade`")
        drift = migrate.schema_drift(engine)
    finally:
        engine.dispose()
    if drift:
        for diff in drift:
            click.echo(f"  drift: {diff}", err=True)
        raise click.ClickException("models and migrations disagree; add a migration")
    click.echo("database is at head; models and migrations agree")


@contextmanager
def session_scope_for(cfg: Settings) -> Iterator[Session]:
    """One unit of work for a CLI command, on an engine of its own that is disposed afterwards."""
    from hub.db import create_db_engine, make_sessionmaker, session_scope

    engine = create_db_engine(cfg.database_url)
    try:
        with session_scope(make_sessionmaker(engine)) as session:
            yield session
    finally:
        engine.dispose()


@main.group("api-key")
def api_key() -> None:
    """API keys for the JSON API."""


@api_key.command("create")
@click.option("--name", required=True, help="What the key is for, e.g. 'shop backend'.")
@click.option("--scope", type=click.Choice(["ingest", "admin"]), default="ingest", show_default=True)
@friendly_errors
def api_key_create(name: str, scope: str) -> None:
    """Print a new API key once; only its hash is stored."""
    from hub.auth.services import create_api_key

    with session_scope_for(settings()) as session:
        try:
            new = create_api_key(session, name, scope)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
        secret = new.secret
    click.echo(secret)
    click.echo(f"Store it now: hub keeps only its hash. Scope: {scope}.", err=True)


@main.group()
def user() -> None:
    """Admin-UI users."""


@user.command("add")
@click.argument("email")
@click.option("--role", type=click.Choice(["admin", "editor", "viewer"]), required=True)
@friendly_errors
def user_add(email: str, role: str) -> None:
    """Pre-authorise EMAIL with ROLE for the admin UI."""
    from hub.auth.services import add_user

    with session_scope_for(settings()) as session:
        try:
            added = add_user(session, email, role)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"{added.email} is {added.role}")


@main.group("import")
def import_group() -> None:
    """Bulk imports."""


@import_group.command("profiles")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, readable=True))
@click.option("--batch-size", default=500, show_default=True, type=click.IntRange(1), help="Rows per commit.")
@friendly_errors
def import_profiles_command(file: str, batch_size: int) -> None:
    """Import profiles from a CSV FILE whose header names CONTRACT user keys (email, phone, external_id,
    first_name, ...) and optionally region. Safe to run again: rows already imported change nothing."""
    import io
    import os

    from hub.db import create_db_engine, make_sessionmaker
    from hub.encryption import FieldEncryptor
    from hub.profiles.importer import ImportHeaderError, import_profiles

    cfg = settings()
    engine = create_db_engine(cfg.database_url)
    size = os.path.getsize(file)
    try:
        with (
            open(file, "rb") as raw,
            io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as text,
            click.progressbar(length=size, label="Importing profiles", file=sys.stderr) as bar,
        ):
            done = 0

            def advance(_rows: int) -> None:
                nonlocal done
                position = raw.tell()  # bytes read so far (the text layer reads ahead in chunks)
                bar.update(position - done)
                done = position

            summary = import_profiles(
                make_sessionmaker(engine),
                FieldEncryptor(cfg.encryption_keys),
                cfg,
                text,
                batch_size=batch_size,
                on_row=advance,
            )
            bar.update(size - done)
    except ImportHeaderError as exc:
        raise click.ClickException(f"{file}: {exc}; nothing was imported") from None
    except UnicodeDecodeError:
        raise click.ClickException(f"{file} is not UTF-8 text; rows before the bad bytes were imported") from None
    finally:
        engine.dispose()
    click.echo(
        f"{summary.rows} rows: {summary.created} created, {summary.merged} merged, {summary.updated} updated, "
        f"{summary.unchanged} unchanged, {summary.rejected} rejected"
    )
    for label, problems, total in (
        ("rejected", summary.rejections, summary.rejected),
        ("note", summary.warnings, summary.warned),
    ):
        for problem in problems:
            click.echo(f"  {label}: row {problem.row}: {problem.reason}")
        if total > len(problems):
            click.echo(f"  ... and {total - len(problems)} more {label} rows")


@main.group()
def consent() -> None:
    """The consent ledger."""


@consent.command("verify")
@friendly_errors
def consent_verify() -> None:
    """Prove the consent_state projection equals a rebuild from the ledger (exit 1 on any mismatch)."""
    from hub.consent.services import verify_projection

    with session_scope_for(settings()) as session:
        mismatches = verify_projection(session)
    if not mismatches:
        click.echo("projection matches the ledger")
        return
    for mismatch in mismatches[:50]:
        click.echo(f"  mismatch: {mismatch}", err=True)
    if len(mismatches) > 50:
        click.echo(f"  ... and {len(mismatches) - 50} more", err=True)
    click.echo(f"{len(mismatches)} projection row(s) differ from the ledger", err=True)
    sys.exit(1)


@main.group()
def cmp() -> None:
    """CMP webhook sources."""


@cmp.command("add")
@click.argument("name")
@click.option("--adapter", type=click.Choice(["generic", "didomi", "usercentrics", "ketch"]), default="generic")
@click.option("--auth", "authenticator", type=click.Choice(["hmac", "bearer", "basic"]), default="hmac")
@click.option("--basic-username", default=None, help="User name for --auth basic.")
@click.option("--map", "purpose_map", multiple=True, metavar="CMP_ID=PURPOSE", help="Purpose map entry (repeatable).")
@click.option("--allow-ip", multiple=True, metavar="ADDRESS_OR_CIDR", help="IP allow-list entry (repeatable).")
@friendly_errors
def cmp_add(
    name: str,
    adapter: str,
    authenticator: str,
    basic_username: str | None,
    purpose_map: tuple[str, ...],
    allow_ip: tuple[str, ...],
) -> None:
    """Add a CMP source and print its generated secret once (HMAC key, bearer token or Basic password)."""
    from hub.cmp.sources import SourceError, create_source, generate_secret
    from hub.db import utcnow
    from hub.encryption import FieldEncryptor

    cfg = settings()
    source_settings: dict[str, object] = {}
    if purpose_map:
        pairs = [entry.partition("=") for entry in purpose_map]
        if any(not sep or not key or not value for key, sep, value in pairs):
            raise click.ClickException("--map takes CMP_ID=PURPOSE, e.g. --map c:facebook=ad_user_data")
        source_settings["purpose_map"] = {key: value for key, _, value in pairs}
    if allow_ip:
        source_settings["ip_allow_list"] = list(allow_ip)
    if basic_username:
        source_settings["basic_username"] = basic_username
    secret = generate_secret()
    with session_scope_for(cfg) as session:
        try:
            source = create_source(
                session,
                FieldEncryptor(cfg.encryption_keys),
                name=name,
                adapter=adapter,
                authenticator=authenticator,
                secret=secret,
                settings=source_settings,
                now=utcnow(),
            )
        except SourceError as exc:
            details = "; ".join(f"{path}: {problem}" for path, problem in exc.fields.items())
            raise click.ClickException(f"{exc.message} {details}") from None
    click.echo(secret)
    click.echo(
        f"Store it now: hub shows it only once. Source {source.name!r} ({adapter}, {authenticator}) receives "
        f"webhooks at POST {source.webhook_path}.",
        err=True,
    )


def _reason_line(reason: str | None) -> str:
    # One line, short: a stored internal error can span lines (a database error's SQL and parameters).
    text = (reason or "").strip().splitlines()
    first = text[0] if text else ""
    return first if len(first) <= 300 else first[:297] + "..."


@cmp.command("reprocess")
@click.option("--source", "source_name", default=None, metavar="NAME", help="Only this source's deliveries.")
@click.option("--id", "inbox_ids", multiple=True, type=click.IntRange(1), metavar="N", help="Only this inbox row.")
@click.option("--limit", default=None, type=click.IntRange(1), metavar="N", help="At most N rows, oldest first.")
@click.option("--dry-run", is_flag=True, help="Report what would happen; write nothing.")
@friendly_errors
def cmp_reprocess(source_name: str | None, inbox_ids: tuple[int, ...], limit: int | None, dry_run: bool) -> None:
    """Process failed CMP deliveries again with their source's current configuration (after fixing its purpose
    map or adding a purpose). One line per inbox row, then a summary; rows that still fail keep the new reason.
    Repeatable (--id 3 --id 7)."""
    from hub.cmp.reprocess import UnknownSource, reprocess_failed
    from hub.db import utcnow
    from hub.encryption import FieldEncryptor

    cfg = settings()
    with session_scope_for(cfg) as session:
        try:
            summary = reprocess_failed(
                session,
                FieldEncryptor(cfg.encryption_keys),
                cfg,
                source=source_name,
                ids=list(inbox_ids) or None,
                now=utcnow(),
                limit=limit,
                dry_run=dry_run,
            )
        except UnknownSource as exc:
            raise click.BadParameter(f"no CMP source is called {exc.name!r}", param_hint="'--source'") from None
        if dry_run:
            session.rollback()
    for row in summary.rows:
        line = f"inbox {row.inbox_id}\t{row.source}\t{row.old_status} -> {row.new_status}"
        if row.records:
            line += f"\t{row.records} consent record(s)"
        reason = _reason_line(row.reason)
        click.echo(f"{line}\t{reason}" if reason else line)
    counts = ", ".join(f"{summary.counts.get(s, 0)} {s}" for s in ("processed", "duplicate", "failed", "skipped"))
    prefix = "dry run, nothing written: would be " if dry_run else ""
    click.echo(f"{prefix}{len(summary.rows)} row(s): {counts}; {summary.records} consent record(s)")


@main.group("config")
def config_group() -> None:
    """Configuration as code: mappings, region rules, destinations (no secrets), CMP sources, purposes."""


@config_group.command("export")
@click.argument("file", required=False, type=click.Path(dir_okay=False, writable=True))
@click.option("--json", "as_json", is_flag=True, help="Write JSON instead of YAML.")
@friendly_errors
def config_export(file: str | None, as_json: bool) -> None:
    """Write the configuration document to FILE (default: standard output)."""
    from hub.configuration.document import dump_document
    from hub.configuration.services import export_config

    with session_scope_for(settings()) as session:
        text = dump_document(export_config(session), yaml_format=not as_json)
    if file is None or file == "-":
        click.echo(text, nl=False)
    else:
        with open(file, "w", encoding="utf-8") as handle:
            handle.write(text)
        click.echo(f"configuration written to {file}", err=True)


@config_group.command("import")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--dry-run", is_flag=True, help="Print the changes without applying them.")
@friendly_errors
def config_import(file: str, dry_run: bool) -> None:
    """Bring the configuration to FILE (YAML or JSON; "-" reads standard input), all or nothing."""
    from hub.configuration.document import DocumentError, parse_document
    from hub.configuration.services import import_config
    from hub.encryption import FieldEncryptor

    try:
        with click.open_file(file, encoding="utf-8-sig") as handle:
            text = handle.read()
    except OSError as exc:
        raise click.ClickException(f"cannot read {file}: {exc.strerror}") from None
    try:
        # JSON is a subset of YAML, so one parser reads both.
        document = parse_document(text, yaml_format=True)
    except DocumentError as exc:
        raise click.ClickException(exc.message) from None
    cfg = settings()
    actor = f"cli:{os.environ.get('USER') or 'unknown'}"
    with session_scope_for(cfg) as session:
        result = import_config(
            session, document, dry_run=dry_run, actor=actor, encryptor=FieldEncryptor(cfg.encryption_keys)
        )
    for line in result.changes:
        click.echo(line)
    if result.errors:
        for path, problem in result.errors.items():
            click.echo(f"  error: {path}: {problem}", err=True)
        raise click.ClickException(f"{len(result.errors)} problem(s) in {file}; nothing was changed")
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    if not result.changes:
        click.echo("no changes", err=True)
    elif dry_run:
        click.echo(f"dry run: {len(result.changes)} line(s) of changes shown, nothing applied", err=True)
    else:
        click.echo("configuration imported", err=True)


@main.group()
def destination() -> None:
    """Meta pixels (Conversions API destinations)."""


@destination.command("add")
@click.argument("name")
@click.option("--pixel-id", required=True, help="The dataset (pixel) id from Events Manager.")
@click.option("--api-version", default="v26.0", show_default=True, help="Graph API version, e.g. v26.0.")
@click.option("--test-event-code", default=None, help="Route events to Events Manager > Test Events.")
@click.option(
    "--allow-test-events-in-production", is_flag=True, help="Allow --test-event-code with HUB_ENV=production."
)
@click.option("--default", "make_default", is_flag=True, help="Make it the default destination.")
@click.option("--with-app-secret", is_flag=True, help="Also prompt for the app secret (appsecret_proof).")
@friendly_errors
def destination_add(
    name: str,
    pixel_id: str,
    api_version: str,
    test_event_code: str | None,
    allow_test_events_in_production: bool,
    make_default: bool,
    with_app_secret: bool,
) -> None:
    """Add a destination; the access token is read from a prompt (or stdin), never from the command line."""
    from hub.delivery.destinations import DestinationInvalid, create_destination
    from hub.encryption import FieldEncryptor

    cfg = settings()
    token = click.prompt("Access token", hide_input=True, err=True).strip()
    data: dict[str, object] = {"name": name, "pixel_id": pixel_id, "access_token": token, "api_version": api_version}
    if with_app_secret:
        data["app_secret"] = click.prompt("App secret", hide_input=True, err=True).strip()
    if test_event_code:
        data["test_event_code"] = test_event_code
    if allow_test_events_in_production:
        data["allow_test_events_in_production"] = True
    if make_default:
        data["is_default"] = True
    with session_scope_for(cfg) as session:
        try:
            added = create_destination(session, FieldEncryptor(cfg.encryption_keys), data, settings=cfg, actor="cli")
        except DestinationInvalid as exc:
            raise click.ClickException("; ".join(f"{k}: {v}" for k, v in exc.errors.items())) from None
        summary = f"destination {added.name!r} (pixel {added.pixel_id}, {added.api_version})"
        summary += " is the default" if added.is_default else " added"
    click.echo(summary)


@destination.command("list")
@friendly_errors
def destination_list() -> None:
    """List destinations (tokens are never shown)."""
    from hub.delivery.destinations import list_destinations

    with session_scope_for(settings()) as session:
        for row in list_destinations(session):
            flags = (
                [row.status]
                + (["default"] if row.is_default else [])
                + ([] if row.access_token_encrypted else ["no token"])
            )
            line = f"{row.id}\t{row.name}\tpixel {row.pixel_id}\t{row.api_version}\t{', '.join(flags)}"
            if row.status == "paused":
                line += f"\tpaused: {row.paused_reason}"
            click.echo(line)


@destination.command("set-token")
@click.argument("name")
@click.option("--resume/--no-resume", default=True, show_default=True, help="Resume the destination if paused.")
@friendly_errors
def destination_set_token(name: str, resume: bool) -> None:
    """Replace the access token of NAME (read from a prompt or stdin) and resume it."""
    from hub.delivery.destinations import (
        DestinationInvalid,
        DestinationNotFound,
        find_destination,
        resume_destination,
        update_destination,
    )
    from hub.encryption import FieldEncryptor

    cfg = settings()
    token = click.prompt("Access token", hide_input=True, err=True).strip()
    with session_scope_for(cfg) as session:
        try:
            row = find_destination(session, name)
            update_destination(
                session, FieldEncryptor(cfg.encryption_keys), row.id, {"access_token": token}, settings=cfg, actor="cli"
            )
        except DestinationNotFound:
            raise click.ClickException(f"no destination named {name!r}") from None
        except DestinationInvalid as exc:
            raise click.ClickException("; ".join(f"{k}: {v}" for k, v in exc.errors.items())) from None
        if resume:
            resume_destination(session, row.id, actor="cli")
        click.echo(f"token replaced; destination {row.name!r} is {row.status}")


@destination.command("resume")
@click.argument("name")
@friendly_errors
def destination_resume(name: str) -> None:
    """Resume a paused destination: its held events go out again."""
    from hub.delivery.destinations import DestinationNotFound, find_destination, resume_destination

    with session_scope_for(settings()) as session:
        try:
            row = find_destination(session, name)
        except DestinationNotFound:
            raise click.ClickException(f"no destination named {name!r}") from None
        resume_destination(session, row.id, actor="cli")
        click.echo(f"destination {row.name!r} is active")


def _worker_app() -> Flask:
    from hub.app import create_app

    return create_app(settings())


@main.command()
@click.option("--once", is_flag=True, help="Process everything due now, then exit.")
@friendly_errors
def worker(once: bool) -> None:
    """Run the scheduler: dispatch, retries and retention."""
    from hub.delivery.dispatch import delivery_context
    from hub.delivery.worker import Worker, freeze_startup_heap

    app = _worker_app()
    loop = Worker(delivery_context(app))
    freeze_startup_heap()
    if once:
        try:
            summary = loop.run_until_idle()
        finally:
            loop.context.close()
        click.echo(", ".join(f"{k}: {v}" for k, v in summary.as_dict().items()))
        return
    loop.install_signal_handlers()
    loop.run()


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8765, show_default=True, type=int, help="Port to listen on.")
@click.option("--threads", default=8, show_default=True, type=int, help="Request threads.")
@click.option("--token", "tokens", multiple=True, metavar="PIXEL=TOKEN", help="Accept only these tokens (repeatable).")
def sandbox(host: str, port: int, threads: int, tokens: tuple[str, ...]) -> None:
    """The local CAPI sandbox: a Graph API stand-in that validates and records (point HUB_GRAPH_URL at it)."""
    import waitress

    from hub.sandbox.app import create_sandbox_app

    config: dict[str, object] = {}
    if tokens:
        pairs = [entry.partition("=") for entry in tokens]
        if any(not sep or not pixel or not token for pixel, sep, token in pairs):
            raise click.ClickException("--token takes PIXEL=TOKEN")
        config["tokens"] = {pixel: token for pixel, _, token in pairs}
    click.echo(f"CAPI sandbox on http://{host}:{port} (set HUB_GRAPH_URL=http://{host}:{port})")
    waitress.serve(create_sandbox_app(config), host=host, port=port, threads=threads, ident="capi-sandbox", _quiet=True)


@main.command()
@click.option("--dry-run", is_flag=True, help="Only print what would be removed.")
@friendly_errors
def purge(dry_run: bool) -> None:
    """Apply retention now (HUB_RETENTION_CONTEXT_DAYS, HUB_RETENTION_EVENTS_DAYS)."""
    from hub.db import create_db_engine, make_sessionmaker, utcnow
    from hub.delivery.options import delivery_options
    from hub.delivery.retention import purge as apply_retention
    from hub.encryption import FieldEncryptor

    cfg = settings()
    engine = create_db_engine(cfg.database_url)
    try:
        summary = apply_retention(
            make_sessionmaker(engine),
            FieldEncryptor(cfg.encryption_keys),
            delivery_options(cfg),
            now=utcnow(),
            dry_run=dry_run,
        )
    finally:
        engine.dispose()
    for line in summary.lines():
        click.echo(line)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
