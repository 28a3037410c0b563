"""The scheduler loop: ``hub worker`` (its own process) and the background thread inside ``hub serve``.

Each loop turn dispatches one batch (its own transactions, committed batch by batch; on PostgreSQL the next batch
is claimed while the previous one is being sent, see ``Dispatcher``); when nothing was due it waits
``HUB_WORKER_POLL_SECONDS``. An exception is logged and the loop carries on after a pause (a database that
went away comes back; nothing claimed is lost because leases expire). Retention runs at start and then daily.
SIGTERM/SIGINT (``hub worker``) or ``stop()`` end the loop after the batch in flight.
"""

from __future__ import annotations

import atexit
import gc
import logging
import signal
import threading
from datetime import datetime, timedelta
from types import FrameType

from flask import Flask

from hub.db import utcnow
from hub.delivery.dispatch import DeliveryContext, Dispatcher, RunSummary, delivery_context, run_once
from hub.delivery.retention import purge

log = logging.getLogger(__name__)

RETENTION_INTERVAL = timedelta(days=1)
MAX_ERROR_PAUSE = 30.0


def freeze_startup_heap() -> None:
    """For a process that only runs the scheduler (``hub worker``): move everything alive after start-up (modules,
    the app, SQLAlchemy's metadata) out of the cyclic garbage collector's view.

    A batch allocates enough objects to trigger full collections, and each one would walk that whole static heap
    again (measured: 10-15% of the worker's CPU time). Objects allocated later are collected as usual.
    """
    gc.collect()
    gc.freeze()


class Worker:
    def __init__(self, context: DeliveryContext, *, retention: bool = True) -> None:
        self.context = context
        self.retention = retention
        self._stop = threading.Event()
        self._next_retention: datetime | None = None
        self.total = RunSummary()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        self._stop.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT finish the batch in flight, then stop (main thread only)."""

        def handle(signum: int, _frame: FrameType | None) -> None:
            log.info("received %s; stopping after the current batch", signal.Signals(signum).name)
            self.stop()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)

    def _retention_due(self, now: datetime) -> bool:
        return self.retention and (self._next_retention is None or now >= self._next_retention)

    def run_retention_if_due(self, now: datetime) -> None:
        if not self._retention_due(now):
            return
        self._next_retention = now + RETENTION_INTERVAL
        ctx = self.context
        summary = purge(ctx.sessionmaker, ctx.encryptor, ctx.options, now=now)
        for line in summary.lines():
            log.info("retention: %s", line)

    def run_until_idle(self) -> RunSummary:
        """``hub worker --once``: everything due now, then return."""
        self.run_retention_if_due(utcnow())
        summary = run_once(self.context)
        self.total.add(summary)
        return summary

    def run(self) -> None:
        """Loop until stopped."""
        log.info("scheduler %s started", self.context.worker_id)
        errors = 0
        dispatcher = Dispatcher(self.context, on_done=self._batch_done)
        try:
            while not self._stop.is_set():
                try:
                    now = utcnow()
                    if self._retention_due(now):
                        dispatcher.drain()
                        self.run_retention_if_due(now)
                    claimed = dispatcher.dispatch(now=now)
                    errors = 0
                    # A full batch means more is probably due: go on at once.
                    if claimed < self.context.options.batch_size:
                        dispatcher.drain()
                        self._stop.wait(self.context.options.poll_seconds)
                except Exception:
                    errors += 1
                    pause = min(MAX_ERROR_PAUSE, self.context.options.poll_seconds * 2**errors)
                    log.exception("scheduler batch failed; trying again in %.1f s", pause)
                    self._stop.wait(pause)
        finally:
            dispatcher.close()
            self.context.close()
        log.info("scheduler %s stopped", self.context.worker_id)

    def _batch_done(self, summary: RunSummary) -> None:
        self.total.add(summary)
        if summary.claimed:
            log.info("batch: %s", ", ".join(f"{k} {v}" for k, v in summary.as_dict().items() if v))


def start_background_worker(app: Flask) -> Worker:
    """Run the scheduler in a daemon thread of this process (``hub serve``); it stops at interpreter exit."""
    worker = Worker(delivery_context(app))
    thread = threading.Thread(target=worker.run, name="hub-scheduler", daemon=True)
    thread.start()

    def shutdown() -> None:
        worker.stop()
        thread.join(timeout=worker.context.options.request_timeout[1] + 5)

    atexit.register(shutdown)
    app.extensions["hub.worker"] = worker
    return worker
