"""The process-wide Prometheus metrics of feast-bytewax runs, defined once.

Run counters (`feast_bytewax.observability.stats.FlowStats`) mirror every increment here;
live runs expose them with `serve_metrics`. Histograms are the one source of quantiles:
the freshness SLO (`observability.slo`) reads `FRESHNESS_SECONDS` itself rather than keeping
a second copy of the samples. Buckets resolve 10 ms to 10 s (and beyond, coarsely).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

PREFIX = "feast_bytewax_"
FRESHNESS_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.35, 0.5, 0.75, 1.0, 1.5,
                     2.5, 5.0, 7.5, 10.0, 30.0, 60.0, 300.0)

RUN_COUNTERS = {
    "consumed": "Input records read from the source",
    "rejected": "Invalid input records (dead-letter output)",
    "rows_offline": "Feature rows written to the offline store",
    "rows_online": "Feature rows written to the online store (coalesced per key)",
}
ENTITY_COUNTERS = {
    "processed": "Valid events accepted by an entity's feature step",
    "late": "Valid events older than watermark - allowed lateness (late output)",
    "unkeyed": "Valid events without a value for the entity's join key (not its events)",
    "duplicates": "Events whose event_id the key already had within the lateness horizon",
    "corrections": "Rows re-emitted because a late-but-allowed event changed a value",
    "rows": "Feature rows emitted by an entity's feature step",
    "versions": "Joined-table versions (e.g. profiles) read by an entity's feature step "
                "(also counted as processed or late)",
    "late_versions": "Joined-table versions too late to correct the events they should have "
                     "enriched (also counted as late; dead letters of kind late_version)",
}
PROM_RUN = {name: Counter(PREFIX + name, doc) for name, doc in RUN_COUNTERS.items()}
PROM_ENTITY = {name: Counter(PREFIX + name, doc, ["entity"])
               for name, doc in ENTITY_COUNTERS.items()}

PUSH_SECONDS = Histogram(PREFIX + "push_seconds", "Time of one sink flush through Feast",
                         buckets=FRESHNESS_BUCKETS)
FRESHNESS_SECONDS = Histogram(
    PREFIX + "freshness_seconds",
    "Wall time a row became readable online minus the event time it is stamped with",
    buckets=FRESHNESS_BUCKETS,
)
FRESHNESS_ARRIVAL_SECONDS = Histogram(
    PREFIX + "freshness_since_arrival_seconds",
    "Wall time a row became readable online minus the wall time its event was ingested "
    "(rows caused by an event; sampled)",
    buckets=FRESHNESS_BUCKETS,
)

# -- state size (dataflow.step via observability.state: sums over this process's shards) ---
BUFFERED = Gauge(PREFIX + "buffered_events", "Events waiting for the watermark", ["entity"])
ACTIVE_KEYS = Gauge(PREFIX + "active_keys", "Entity keys with state in this process",
                    ["entity"])
SNAPSHOT_BYTES = Gauge(PREFIX + "snapshot_bytes",
                       "Bytes of the last recovery snapshot of this process's shards",
                       ["entity"])
STATE_BYTES_PER_KEY = Gauge(PREFIX + "state_bytes_per_key",
                            "Last recovery snapshot bytes / the keys it held", ["entity"])

# -- stores that wait (dataflow.retry) ------------------------------------------------------
STORE_ERRORS = Counter(PREFIX + "store_errors", "Failed store write attempts (retried)",
                       ["store"])
STORE_INCIDENTS = Counter(PREFIX + "store_incidents", "Store outages: runs of failed writes",
                          ["store"])
STORE_STALLED = Gauge(PREFIX + "store_stalled", "1 while writes to the store are failing",
                      ["store"])

# -- live runs (feast-bytewax run): Kafka, dead letters, freshness SLO ----------------------
KAFKA_ERRORS = Counter(PREFIX + "kafka_errors", "Kafka client/partition errors by code",
                       ["code"])
KAFKA_LAG = Gauge(PREFIX + "kafka_lag",
                  "Records behind the partition's high watermark (updated about every second "
                  "from the consumer's cached watermark)", ["topic", "partition"])
DEAD_LETTERS_PRODUCED = Counter(PREFIX + "dead_letters_produced",
                                "Dead letters acknowledged by the dead-letter topic(s)", ["kind"])
FRESHNESS_P99 = Gauge(PREFIX + "freshness_p99_seconds",
                      "p99 of freshness (readable - event time) over the SLO window")
SLO_BREACHES = Counter(PREFIX + "freshness_slo_breaches",
                       "Times the freshness p99 went above the SLO (ok -> breach transitions)")
SLO_BREACHED = Gauge(PREFIX + "freshness_slo_breached", "1 while the freshness p99 > SLO")

# -- online lookups (dataflow.lookup) ------------------------------------------------------
LOOKUP_FALLBACKS = Counter(PREFIX + "lookup_fallbacks",
                           "Events given a lookup's fallback instead of a value read, by reason "
                           "(miss, timeout, error, overloaded, no_key)", ["lookup", "reason"])
LOOKUP_REQUESTS = Counter(PREFIX + "lookup_requests",
                          "Read requests a lookup sent to the online store (each <= chunk keys)",
                          ["lookup"])
LOOKUP_CACHE_HITS = Counter(PREFIX + "lookup_cache_hits",
                            "Events whose lookup key the cache answered (a value or a "
                            "remembered miss) without a request", ["lookup"])
LOOKUP_SECONDS = Histogram(PREFIX + "lookup_seconds",
                           "Time of one lookup read request to the online store", ["lookup"],
                           buckets=FRESHNESS_BUCKETS)


# -- provisional online rows (engine.provisional, dataflow.divergence) ---------------------
ONLINE_COMPARED = Counter(PREFIX + "online_compared",
                          "Exact-row intervals compared with the provisional online value",
                          ["entity"])
ONLINE_DIVERGENT = Counter(PREFIX + "online_divergent",
                           "Exact-row intervals over which the provisional online value "
                           "differed from the exact one", ["entity"])
ONLINE_DIVERGENT_SECONDS = Counter(PREFIX + "online_divergent_seconds",
                                   "Event-time seconds the provisional online value differed "
                                   "from the exact one", ["entity"])


def serve_metrics(port: int, host: str) -> None:
    """Expose the Prometheus metrics on http://host:port/metrics (daemon thread). No default
    host here: `LiveConfig.metrics_host` is the one place it is written."""
    start_http_server(port, addr=host)
