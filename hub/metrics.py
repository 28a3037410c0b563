"""Prometheus metrics. Counters are recorded where things happen; gauges that describe the database (queue
depth, oldest due event, events by status) are read at scrape time so every process reports the same truth."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import SQLAlchemyError

from hub.db import read_only_connection, utcnow


class DatabaseCollector(Collector):
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from hub.delivery.models import Destination
        from hub.events.models import Event

        up = GaugeMetricFamily("hub_database_up", "1 when the database answered this scrape")
        by_status = GaugeMetricFamily("hub_events", "Events by delivery status", labels=["status"])
        depth = GaugeMetricFamily("hub_queue_depth", "Events waiting to be decided or delivered")
        oldest = GaugeMetricFamily(
            "hub_oldest_due_event_age_seconds", "Age of the oldest event that is due and not yet delivered"
        )
        paused = GaugeMetricFamily(
            "hub_destinations_paused", "Destinations paused (for example after Meta refused the access token)"
        )
        now = utcnow()
        try:
            with read_only_connection(self._engine) as conn:
                counts = dict(conn.execute(select(Event.status, func.count()).group_by(Event.status)).all())
                first_due = conn.execute(
                    select(func.min(Event.received_at)).where(
                        Event.status.in_(("pending", "retrying")),
                        (Event.next_attempt_at.is_(None)) | (Event.next_attempt_at <= now),
                    )
                ).scalar()
                paused_count = conn.execute(
                    select(func.count()).select_from(Destination).where(Destination.status == "paused")
                ).scalar()
        except SQLAlchemyError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        for status in ("pending", "sent", "blocked", "retrying", "dead"):
            by_status.add_metric([status], counts.get(status, 0))
        depth.add_metric([], counts.get("pending", 0) + counts.get("retrying", 0))
        oldest.add_metric([], max(0.0, (now - first_due).total_seconds()) if first_due else 0.0)
        paused.add_metric([], paused_count or 0)
        yield from (up, by_status, depth, oldest, paused)


class Metrics:
    """The metrics of one hub process, on their own registry so tests and embedded apps don't collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.http_requests = Counter(
            "hub_http_requests", "HTTP requests served", ["endpoint", "status"], registry=self.registry
        )
        self.events_ingested = Counter(
            "hub_events_ingested", "Events received by the API", ["result"], registry=self.registry
        )
        self.decisions = Counter("hub_decisions", "Forwarding decisions", ["outcome", "reason"], registry=self.registry)
        self.delivery_attempts = Counter(
            "hub_delivery_attempts",
            "Requests sent to the Conversions API",
            ["outcome"],
            registry=self.registry,
        )
        self.meta_errors = Counter(
            "hub_meta_errors",
            "Errors answered by Meta, by numeric code",
            ["code", "subcode"],
            registry=self.registry,
        )
        self.delivery_latency = Histogram(
            "hub_delivery_latency_seconds",
            "Time from an event's receipt to Meta's acknowledgement",
            buckets=(1, 5, 15, 60, 150, 300, 900, 3600, 21600, 86400),
            registry=self.registry,
        )
        self.unknown_outcome_resends = Counter(
            "hub_unknown_outcome_resends",
            "Events resent with the same event_id because an earlier send's outcome was unknown",
            registry=self.registry,
        )
        self.destination_paused = Counter(
            "hub_destination_paused",
            "Destinations paused by an authentication error",
            ["destination"],
            registry=self.registry,
        )
        self.webhooks = Counter(
            "hub_cmp_webhooks", "CMP webhook deliveries", ["source", "result"], registry=self.registry
        )
        self.webhook_batches = Histogram(
            "hub_cmp_webhook_batch_size",
            "CMP webhook deliveries processed together in one transaction (hub.cmp.batch)",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=self.registry,
        )

    def watch_database(self, engine: Engine) -> None:
        self.registry.register(DatabaseCollector(engine))
