"""The baseline: the same features computed with Bytewax 0.21.1's built-in windowing operators.

Each `FeatureSpec` of the compiled Feast definitions becomes one built-in windowing operator,
keyed by user, on the events its filter selects:

| function | operator | windower |
| --- | --- | --- |
| count | `count_window` | `SlidingWindower(W, S, epoch)` |
| sum / mean | `fold_window` (state `(sum, n)`) | `SlidingWindower(W, S, epoch)` |
| max / min | `max_window` / `min_window` (`by` = the column) | `SlidingWindower(W, S, epoch)` |
| count_distinct | `fold_window` (state: a `set`) | `SessionWindower(gap)` for sessions |

Every operator gets `EventClock(ts_getter, wait_for_system_duration=<watermark delay>,
to_system_utc=lambda t: None)`: event time with the same 5 s delay as ours, and without the
replay busy loop (bytewax issue 578, see shared/notes/field-notes.md). Windows align to the
Unix epoch, as the spec says. A window's result is emitted when it closes (the built-ins
never emit earlier); we map it to the feature value and count it.

What the built-ins cannot do and ours does, so outputs are not row-for-row comparable: no
value as of each event, no decay rows for idle keys, and an event behind a key's watermark
is dropped from every window (late output) instead of being applied as a correction.

`BuiltinKeyState` drives the very same logic classes (`_WindowLogic`, `_FoldWindowLogic`,
the clock and windower logics) without the Bytewax runtime, the way `window()` wires them,
so the per-key state can be inspected and measured (the runtime keeps it inside Rust).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from operator import attrgetter
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.operators import _untyped_none
from bytewax.operators import windowing as win
from bytewax.operators.windowing import (
    EventClock,
    SessionWindower,
    SlidingWindower,
    count_window,
    fold_window,
    max_window,
    min_window,
)

from feast_bytewax.features.spec import EngineSpec, FeatureSpec
from feast_bytewax.records import Event, Mark
from feast_bytewax.timeutil import EPOCH


def ts_of(e: Event):
    """Aware UTC datetime of an event (the built-in clocks work on datetimes)."""
    return EPOCH + timedelta(microseconds=e.event_timestamp)


def no_wakeup(_t):
    """`to_system_utc`: never wake on system time (replay; see field notes, issue 578)."""
    return None


def user_of(e: Event) -> str:
    return e.user_id


def make_clock(watermark_delay_us: int) -> EventClock:
    return EventClock(ts_getter=ts_of, wait_for_system_duration=timedelta(
        microseconds=watermark_delay_us), to_system_utc=no_wakeup)


def make_windower(f: FeatureSpec):
    if f.kind == "session":
        return SessionWindower(gap=timedelta(microseconds=f.window_us))
    return SlidingWindower(length=timedelta(microseconds=f.window_us),
                           offset=timedelta(microseconds=f.slide_us), align_to=EPOCH)


def make_predicate(f: FeatureSpec) -> Callable[[Event], bool]:
    clauses = tuple((attrgetter(c), allowed) for c, allowed in f.where)

    def pred(e: Event) -> bool:
        return all(get(e) in allowed for get, allowed in clauses)

    return pred


# -- folders (module level so they pickle; the built-ins take plain callables) -----------
def _count_folder(s: int, _v: Any) -> int:  # as count_window
    return s + 1


def _sum_builder() -> tuple[float, int]:
    return (0.0, 0)


def _sum_merger(a: tuple, b: tuple) -> tuple:
    return (a[0] + b[0], a[1] + b[1])


def _set_folder(get, s: set, e: Event) -> set:
    s.add(get(e))
    return s


def _set_merger(a: set, b: set) -> set:
    a |= b
    return a


def _sum_folder(get, s: tuple, e: Event) -> tuple:
    return (s[0] + get(e), s[1] + 1)


def _reduce_folder(reducer, s, v):  # as reduce_window's shim_folder
    return v if s is None else reducer(s, v)


@dataclass(frozen=True)
class Plan:
    """How one feature maps onto a built-in operator: the public call for the dataflow and
    the (builder, folder, merger, ordered) that call passes to `window()` internally."""

    feature: FeatureSpec
    op_name: str
    builder: Callable[[], Any]
    folder: Callable[[Any, Any], Any]
    merger: Callable[[Any, Any], Any]
    ordered: bool
    finalize: Callable[[Any], Any]


def plan_for(f: FeatureSpec) -> Plan:
    get = attrgetter(f.column)
    fn = f.function
    if fn == "count":
        return Plan(f, "count_window", lambda: 0, _count_folder, operator.add, False,
                    lambda s: s)
    if fn in ("sum", "mean"):
        fin = (lambda s: s[0]) if fn == "sum" else (lambda s: s[0] / s[1] if s[1] else None)
        return Plan(f, "fold_window", _sum_builder, partial(_sum_folder, get), _sum_merger,
                    True, fin)
    if fn in ("max", "min"):
        reducer = partial(max if fn == "max" else min, key=get)
        return Plan(f, f"{fn}_window", _untyped_none, partial(_reduce_folder, reducer),
                    reducer, False, lambda e: None if e is None else get(e))
    if fn == "count_distinct":
        return Plan(f, "fold_window", set, partial(_set_folder, get), _set_merger, True, len)
    raise ValueError(f"no built-in mapping for function {fn!r} ({f.name})")


def plans(spec: EngineSpec, skip: tuple[str, ...] = ()) -> list[Plan]:
    unknown = set(skip) - set(spec.feature_names)
    if unknown:
        raise ValueError(f"unknown features to skip: {sorted(unknown)}")
    return [plan_for(f) for f in spec.features if f.name not in skip]


def add_windows(events: Stream, spec: EngineSpec, watermark_delay_us: int,
                skip: tuple[str, ...] = ()) -> tuple[Stream, Stream]:
    """Attach one built-in windowing operator per feature to a stream of `Event`s.

    Returns (results, lates): `(user, (feature, window_id, value))` per closed window, and
    the late items of every operator.
    """
    filtered: dict[tuple, Stream] = {}
    keyed: dict[tuple, Stream] = {}
    downs, lates = [], []
    for p in plans(spec, skip):
        f = p.feature
        if f.where not in filtered:
            filtered[f.where] = op.filter(f"filter_{len(filtered)}", events, make_predicate(f))
        clock, windower = make_clock(watermark_delay_us), make_windower(f)
        if p.op_name == "count_window":
            out = count_window(f.name, filtered[f.where], clock, windower, user_of)
        else:
            if f.where not in keyed:
                keyed[f.where] = op.key_on(f"key_{len(keyed)}", filtered[f.where], user_of)
            up = keyed[f.where]
            if p.op_name == "max_window":
                out = max_window(f.name, up, clock, windower, attrgetter(f.column))
            elif p.op_name == "min_window":
                out = min_window(f.name, up, clock, windower, attrgetter(f.column))
            else:
                out = fold_window(f.name, up, clock, windower, p.builder, p.folder, p.merger,
                                  p.ordered)
        name, fin = f.name, p.finalize
        downs.append(op.map_value(f"value_{name}", out.down,
                                  lambda wv, name=name, fin=fin: (name, wv[0], fin(wv[1]))))
        lates.append(out.late)
    return op.merge("results", *downs), op.merge("lates", *lates)


def build_baseline_flow(source, spec: EngineSpec, consumed, results_sink, late_sink,
                        rejected_sink, watermark_delay_us: int,
                        skip: tuple[str, ...] = ()) -> Dataflow:
    """The same validating source as ours (`EventTimeSource`: `Event`s, `Rejected`s and
    partition `Mark`s, which the built-ins have no use for) -> built-in windows -> counting
    sinks. `consumed` (`bench.common.Counter`) counts the records read."""

    def account(batch: list) -> list:
        items = [x for x in batch if type(x) is not Mark]
        consumed.add(len(items))
        return items

    flow = Dataflow("baseline_builtin_windows")
    read = op.flat_map_batch("account", op.input("input", flow, source), account)
    valid = op.branch("split_valid", read, lambda x: type(x) is Event)
    op.output("rejected", valid.falses, rejected_sink)
    results, lates = add_windows(valid.trues, spec, watermark_delay_us, skip)
    op.output("results_out", results, results_sink)
    op.output("late_out", lates, late_sink)
    return flow


# -- the same logic classes, driven without the runtime ----------------------------------
class BuiltinKeyState:
    """All built-in window logics of the features, for the keys of a stream.

    Mirrors what `window()` builds per key (`_WindowLogic(clock.build(None),
    windower.build(None), builder, ordered)`) and what `stateful_batch` does with it: one
    `on_batch` per key per input batch, the logic discarded when it reports itself empty,
    `on_eof` at the end. `to_system_utc` returns None, so `on_notify` is never due.
    """

    def __init__(self, spec: EngineSpec, watermark_delay_us: int, skip: tuple[str, ...] = ()):
        self.plans = plans(spec, skip)
        self.preds = [make_predicate(p.feature) for p in self.plans]
        self.clocks = [make_clock(watermark_delay_us) for _ in self.plans]
        self.windowers = [make_windower(p.feature) for p in self.plans]
        self.builders = [self._window_builder(p) for p in self.plans]
        # per feature: key -> _WindowLogic
        self.logics: list[dict[str, Any]] = [{} for _ in self.plans]
        self.emitted = 0
        self.late = 0

    @staticmethod
    def _window_builder(p: Plan):
        # fold_window's shim_builder
        def shim_builder(resume_state):
            state = resume_state if resume_state is not None else p.builder()
            return win._FoldWindowLogic(p.folder, p.merger, state)

        return shim_builder

    def _count(self, events) -> None:
        for _wid, typ, _obj in events:
            if typ == "E":
                self.emitted += 1
            elif typ == "L":
                self.late += 1

    def on_batch(self, batch: list[Event]) -> None:
        for i, pred in enumerate(self.preds):
            by_key: dict[str, list] = {}
            for e in batch:
                if pred(e):
                    by_key.setdefault(e.user_id, []).append(e)
            logics = self.logics[i]
            for k, vals in by_key.items():
                logic = logics.get(k)
                if logic is None:
                    logic = logics[k] = win._WindowLogic(
                        self.clocks[i].build(None), self.windowers[i].build(None),
                        self.builders[i], self.plans[i].ordered)
                events, discard = logic.on_batch(vals)
                self._count(events)
                if discard:
                    del logics[k]

    def on_eof(self) -> None:
        for logics in self.logics:
            for logic in logics.values():
                events, _ = logic.on_eof()
                self._count(events)
            logics.clear()

    def keys(self) -> set[str]:
        return {k for logics in self.logics for k in logics}
