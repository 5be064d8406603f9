"""Prometheus metrics, all named `gateway_*` (rules §8).

Every figure an operator alerts on is read from the store when `/metrics` is scraped
(`store.stats`), not counted in memory where the work happens. The work happens in many
processes: `gateway run`'s worker and sender children and their restarts, `gateway ingest`
started by the MTA for each mail, `gateway cases …` and a cron `gateway maintenance`, other
nodes on the same PostgreSQL. In-memory counters showed only the API process's share (0 with
the default `worker.parse_in_subprocess`). prometheus-client's multiprocess mode would have
covered the daemon's own children only, and wants an environment variable set before the
library is imported in each of them and a directory to clear at every start. The store
already records each of these facts once, whichever process wrote it, so every node reports
the same figures. The cost is a few aggregate queries per scrape over indexes (migration 0007).

What stays in memory is only what the daemon's HTTP processes alone know: the case actions
served by its API and pages (`ActionCounts`: a plain list, or with `api.processes` an array in
memory shared by the daemon's HTTP children, so whichever child answers a scrape tells the whole
daemon's count, and a child's restart loses none). The `*_created` series are off: counters read
from the store have no start time.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableSequence

import prometheus_client
from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE  # noqa: N811 - re-exported
from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from store import stats
from store.engine import Database

prometheus_client.disable_created_metrics()

# The case actions of `gateway.lifecycle`, in a fixed order: the slots of `ActionCounts`.
ACTIONS = ("assign", "close", "comment", "note", "reply", "share", "status")

__all__ = ["ACTIONS", "CONTENT_TYPE", "ActionCounts", "StoreMetrics", "count_actions_in", "record_action"]


class ActionCounts:
    """The case actions served by this daemon's HTTP processes, one slot an action."""

    def __init__(self, slots: MutableSequence[int] | None = None) -> None:
        # A `multiprocessing` Array (with its lock) or, in one process, a list.
        self.slots: MutableSequence[int] = slots if slots is not None else [0] * len(ACTIONS)

    def add(self, action: str) -> None:
        lock = getattr(self.slots, "get_lock", None)
        i = ACTIONS.index(action)
        if lock is None:
            self.slots[i] += 1
            return
        with lock():
            self.slots[i] += 1

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily("gateway_case_actions", "Case actions served by the daemon's HTTP API "
                                     "and pages, by action.", labels=["action"])
        for action, count in zip(ACTIONS, list(self.slots), strict=True):
            if count:
                family.add_metric([action], count)
        yield family


_COUNTS = ActionCounts()


def record_action(action: str) -> None:
    _COUNTS.add(action)


def count_actions_in(slots: MutableSequence[int]) -> None:
    """Count this process's actions in `slots` (the daemon's shared array, in an HTTP child)."""
    global _COUNTS
    _COUNTS = ActionCounts(slots)


def _counter(name: str, doc: str, labels: list[str], tally: stats.Tally) -> Metric:
    """A counter from a tally, by the first parts of its keys (summed over the rest)."""
    family = CounterMetricFamily(name, doc, labels=labels)
    totals: dict[tuple[str, ...], float] = {}
    for key, (count, _) in tally.counts.items():
        label = key[:len(labels)]
        totals[label] = totals.get(label, 0) + count
    for label, count in sorted(totals.items()):
        family.add_metric(list(label), count)
    return family


def _latency(tally: stats.Tally) -> Metric:
    per_bucket = [0] * (len(stats.BUCKETS) + 1)
    seconds = 0.0
    for (_, bucket), (count, spent) in tally.counts.items():
        per_bucket[int(bucket)] += int(count)
        seconds += spent
    cumulative, buckets = 0, []
    for bound, count in zip((*map(str, stats.BUCKETS), "+Inf"), per_bucket, strict=True):
        cumulative += count
        buckets.append((bound, cumulative))
    family = HistogramMetricFamily("gateway_processing_seconds", "Receipt to recorded outcome, per mail processed.")
    family.add_metric([], buckets, seconds)
    return family


def _quarantined(tally: stats.Tally) -> Metric:
    family = CounterMetricFamily("gateway_mails_quarantined", "Mails set aside for an operator.")
    family.add_metric([], sum(count for (outcome, _), (count, _) in tally.counts.items() if outcome == "quarantined"))
    return family


def _gauge(name: str, doc: str, label: str, values: dict[str, int], always: tuple[str, ...] = ()) -> Metric:
    family = GaugeMetricFamily(name, doc, labels=[label])
    for key, count in sorted({**dict.fromkeys(always, 0), **values}.items()):
        family.add_metric([key], count)
    return family


def _now(now: stats.Now) -> Iterator[Metric]:
    yield _gauge("gateway_inbox_depth", "Inbox mails waiting or set aside, by state.", "state", now.inbox,
                 stats.INBOX_QUEUED)
    yield _gauge("gateway_outbox_depth", "Notifications not sent yet, by state.", "state", now.outbox,
                 stats.OUTBOX_QUEUED)
    yield _gauge("gateway_notifications_failed", "Notifications given up on and not retried, by event.", "event",
                 now.failed)
    closed = CounterMetricFamily("gateway_cases_auto_closed", "Cases closed by the timed job.")
    closed.add_metric([], now.auto_closed)
    yield closed
    imap = GaugeMetricFamily("gateway_imap_last_fetch_timestamp_seconds",
                             "Unix time of the last successful fetch, by IMAP account and folder.",
                             labels=["account", "folder"])
    for (account, folder), at in sorted(now.imap_fetched.items()):
        imap.add_metric([account, folder], at.timestamp())
    yield imap


class _Scrape:
    """One scrape: the store's figures and this process's own registry."""

    def __init__(self, figures: stats.StoreFigures, now: stats.Now) -> None:
        self._figures, self._now = figures, now

    def collect(self) -> Iterator[Metric]:
        f = self._figures
        yield _counter("gateway_mails_received", "Mails committed to the inbox, by edge.", ["source"], f.received)
        yield _counter("gateway_mails_processed", "Mails processed, by outcome.", ["outcome"], f.processed)
        yield _quarantined(f.processed)
        yield _latency(f.processed)
        yield _counter("gateway_notifications_sent", "Notifications the relay accepted, by event.", ["event"], f.sent)
        yield from _now(self._now)
        yield from _COUNTS.collect()


class StoreMetrics:
    """`/metrics` of one store: its tallies live as long as the API that serves them."""

    def __init__(self, engine: Database) -> None:
        self._engine = engine
        self._figures = stats.StoreFigures()

    async def render(self) -> bytes:
        now = await self._figures.read(self._engine)
        return generate_latest(_Scrape(self._figures, now))  # type: ignore[arg-type]
