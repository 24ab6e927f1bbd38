"""Where a run's joined tables and lookups come from: flags, declarations, sources, steps.

A joined view's versions (profiles) are read from `--profiles` (a parquet file or folder,
local or s3://) and/or, live, `--profiles-topic` (a Kafka topic keyed by the join key); a
replay without `--profiles` reads the view's declared versions (`feast_bytewax.versions`, a
Feast `FileSource` in feast_repo/) when that file exists, and says so when it does not (the
features reading joined columns then see no version: their purchases are skipped). With
several joined views the flags take ``VIEW=PATH,...``.

Lookups (`feast_bytewax.lookup` tags) read the repo's online store per micro-batch with the
`--lookup-*` knobs; `Lookups.summary()` reports, at the end, what every worker's step saw.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from feast_bytewax.config import FlowConfig
from feast_bytewax.dataflow.lookup import LookupSettings, LookupStep, feast_reader
from feast_bytewax.engine.groups import CompiledSpec
from feast_bytewax.errors import ConfigError
from feast_bytewax.features.enrich import Lookup
from feast_bytewax.features.inputs import TableSpec
from feast_bytewax.features.spec import FlowSpec
from feast_bytewax.ingest.files import EventFile, EventFileSource, resolve_event_files
from feast_bytewax.ingest.inventory import event_time_range, input_identity

log = logging.getLogger(__name__)


def named_inputs(text: str | None, spec: FlowSpec, flag: str) -> dict[str, str]:
    """`PATH` (the only joined view) or `VIEW=PATH,...` -> {view: PATH}."""
    if not text:
        return {}
    views = [t.view for t in spec.tables]
    if not views:
        raise ConfigError(f"{flag} {text}: no view of feast_repo/ joins a table "
                          "(feast_bytewax.join): nothing would read it")
    items = [p.strip() for p in text.split(",") if p.strip()]
    if len(items) == 1 and "=" not in items[0].split("://", 1)[0]:
        if len(views) > 1:
            raise ConfigError(f"{flag} {text}: several views are joined {views}; say which "
                              "with VIEW=VALUE,...")
        return {views[0]: items[0]}
    out: dict[str, str] = {}
    for item in items:
        view, sep, value = item.partition("=")
        if not sep or view.strip() not in views or not value.strip():
            raise ConfigError(f"{flag} {item!r}: expected VIEW=VALUE with VIEW one of {views}")
        out[view.strip()] = value.strip()
    return out


@dataclass
class TableFiles:
    """The files of one joined view's versions, resolved before the dataflow starts."""

    table: TableSpec
    path: str
    files: list[EventFile]

    @property
    def identity(self) -> str:
        return input_identity(self.files)

    def time_range(self) -> tuple[int, int] | None:
        return event_time_range(self.files, self.table.timestamp_field)

    def source(self, batch_size: int, s3_endpoint: str | None) -> EventFileSource:
        return EventFileSource(self.path, batch_size=batch_size,
                               columns=self.table.record_columns,
                               s3_endpoint_override=s3_endpoint,
                               timestamp_column=self.table.timestamp_field)


def table_files(cfg: FlowConfig, spec: FlowSpec, s3_endpoint: str | None,
                use_declared: bool) -> dict[str, TableFiles]:
    """The version files of each joined view: `--profiles`, else (replay) the declared ones
    that exist."""
    wanted = named_inputs(cfg.profiles, spec, "--profiles")
    if use_declared:
        for t in spec.tables:
            if t.view in wanted or not t.archive:
                continue
            path = t.archive if "://" in t.archive else str(cfg.resolve(Path(t.archive)))
            if "://" in path or Path(path).exists():
                wanted[t.view] = path
            else:
                log.warning("no versions of joined view %r: its declared file %s does not "
                            "exist (generate it or pass --profiles PATH); features reading "
                            "its columns see no version", t.view, path)
    out = {}
    for view, path in wanted.items():
        try:
            files = resolve_event_files(path, s3_endpoint)
        except (FileNotFoundError, OSError) as e:
            raise ConfigError(f"--profiles {path}: cannot read it ({e}); give a parquet file "
                              f"or folder of {view!r} versions") from None
        out[view] = TableFiles(spec.table(view), path, files)
    return out


@dataclass
class Lookups:
    """Builds one `LookupStep` per worker thread and remembers them for the summary."""

    lookups: tuple[Lookup, ...]
    repo: str
    settings: LookupSettings
    steps: list[LookupStep] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    reader: Callable[[Lookup, list], Mapping[Any, Any]] | None = None
    # per lookup, which events need it (None: all): see `LookupStep`
    wanted: tuple[Callable[[Any], bool], ...] | None = None

    def __call__(self) -> LookupStep:
        step = LookupStep(self.lookups, self.reader or feast_reader(self.repo), self.settings,
                          wanted=self.wanted)
        with self._lock:
            self.steps.append(step)
        return step

    def fallbacks(self) -> dict[tuple[str, str], int]:
        total: dict[tuple[str, str], int] = {}
        for s in self.steps:
            for k, n in s.fallbacks.items():
                total[k] = total.get(k, 0) + n
        return total

    def summary(self) -> str:
        return "; ".join(s.summary() for s in self.steps)

    def close(self) -> None:
        for s in self.steps:
            s.close()


def lookups_for(cfg: FlowConfig, spec: FlowSpec, repo: str | Path) -> Lookups | None:
    """The run's lookups (every entity's, once each), or None when no view looks anything up."""
    seen: dict[str, Lookup] = {}
    gates: dict[str, list[Callable[[Any], bool]]] = {}
    for e in spec.entities:
        cs = CompiledSpec(e)
        for lk in e.enrichment.lookups:
            seen.setdefault(lk.column, lk)
            gates.setdefault(lk.column, []).append(cs.lookup_wanted(lk.column))
    if not seen:
        return None
    settings = LookupSettings(timeout_s=cfg.lookup_timeout,
                              concurrency=cfg.lookup_concurrency, ttl_s=cfg.lookup_ttl)
    wanted = tuple(_any(gates[c]) for c in seen)
    return Lookups(tuple(seen.values()), str(repo), settings, wanted=wanted)


def _any(tests: list[Callable[[Any], bool]]) -> Callable[[Any], bool]:
    """An event is wanted by a lookup when any entity reading it wants it."""
    if len(tests) == 1:
        return tests[0]
    return lambda ev: any(t(ev) for t in tests)
