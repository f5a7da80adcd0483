"""Prometheus metrics: per-process counters and a claim latency histogram, plus trials by
state read from the database at scrape time (so every coordinator reports the truth)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from .models import Trial, TrialState


class _TrialsByState(Collector):
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "archsearch_trials", "Trials by state, all studies", labels=["state"]
        )
        counts = {s.value: 0 for s in TrialState}
        try:
            with self.sessions() as s:
                for state, n in s.execute(select(Trial.state, func.count()).group_by(Trial.state)):
                    counts[TrialState(state).value] = n
        except SQLAlchemyError:
            return  # the database is down: /healthz says so; omit the gauge
        for state, n in counts.items():
            family.add_metric([state], n)
        yield family


class Metrics:
    """One registry per app, so tests with several apps do not collide."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.registry = CollectorRegistry()
        self.claims = Counter(
            "archsearch_claims", "Claims answered", ["result"], registry=self.registry
        )
        self.claim_latency = Histogram(
            "archsearch_claim_latency_seconds",
            "Time to answer a claim inside the coordinator",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry,
        )
        self.reports = Counter(
            "archsearch_reports", "Final trial reports accepted", ["kind"], registry=self.registry
        )
        self.registry.register(_TrialsByState(sessions))
