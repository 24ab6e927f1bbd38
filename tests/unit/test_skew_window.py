"""`skew --since`: the window arithmetic (which instants are compared, how far back events
are read for the features' lookback, sessions included). tests/e2e/test_skew_periodic.py
runs it on a replay."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import pytest

from feast_bytewax.config import SkewConfig
from feast_bytewax.errors import ConfigError
from feast_bytewax.features.spec import EngineSpec, FeatureSpec
from feast_bytewax.skew.report import skew_options
from feast_bytewax.skew.window import read_start, resolve_window, session_cut
from feast_bytewax.timeutil import US_PER_S, parse_duration, parse_instant, to_us

S = US_PER_S
NOW = to_us(datetime(2026, 3, 1, 12, 0, tzinfo=UTC))


# -- durations and instants -----------------------------------------------------------------


@pytest.mark.parametrize("text,seconds", [("90", 90), ("90s", 90), ("15m", 900),
                                          ("1.5h", 5400), ("2d", 172800), (" 15M ", 900)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "m", "15x", "-5m", "0s", "inf", "1e999h"])
def test_bad_durations_are_refused(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_an_instant_is_iso_or_a_duration_back_from_a_reference():
    assert parse_instant("15m", NOW) == NOW - 900 * S
    assert parse_instant("2026-03-01T11:00:00Z", NOW) == NOW - 3600 * S
    assert parse_instant("2026-03-01T13:00:00+02:00", 0) == NOW - 3600 * S
    with pytest.raises(ValueError, match="UTC offset"):
        parse_instant("2026-03-01T11:00:00", NOW)
    with pytest.raises(ValueError, match="neither"):
        parse_instant("yesterday", NOW)


# -- the window -----------------------------------------------------------------------------


def test_default_end_leaves_the_watermark_delay_and_settle_out():
    w = resolve_window("15m", None, NOW, watermark_delay_s=5, settle_s=30)
    assert w.end_us == NOW - 35 * S
    assert w.start_us == w.end_us - 900 * S  # a duration counts back from the end


def test_consecutive_runs_tile_time():
    a = resolve_window("15m", None, NOW, 5, 30)
    b = resolve_window("15m", None, NOW + 900 * S, 5, 30)
    assert b.start_us == a.end_us


def test_until_as_iso_or_duration_back_from_now():
    w = resolve_window("2026-03-01T10:00:00Z", "2026-03-01T11:00:00Z", NOW, 5, 30)
    assert (w.start_us, w.end_us) == (NOW - 7200 * S, NOW - 3600 * S)
    w = resolve_window("10m", "1m", NOW, 5, 30)
    assert (w.start_us, w.end_us) == (NOW - 660 * S, NOW - 60 * S)


def test_an_empty_or_inverted_window_is_refused():
    with pytest.raises(ConfigError, match="not before"):
        resolve_window("2026-03-01T11:00:00Z", "2026-03-01T11:00:00Z", NOW, 5, 30)
    with pytest.raises(ConfigError, match="not before"):
        resolve_window("2026-03-01T12:30:00Z", None, NOW, 5, 30)


def test_config_refuses_since_with_start_and_until_alone():
    with pytest.raises(ValueError, match="not both"):
        SkewConfig(since="15m", start=datetime(2026, 3, 1, tzinfo=UTC))
    with pytest.raises(ValueError, match="give --since too"):
        SkewConfig(until="1m")
    with pytest.raises(ValueError, match="neither"):
        SkewConfig(since="soon")


def test_skew_options_carry_the_window_resolved_against_now():
    opts = skew_options(SkewConfig(since="15m", watermark_delay=2, settle=8), now_us=NOW)
    assert opts.windowed
    assert (opts.window_start_us, opts.window_end_us) == (NOW - 910 * S, NOW - 10 * S)
    assert opts.start_us is None and opts.end_us is None
    assert not skew_options(SkewConfig(), now_us=NOW).windowed


def _spec(*features: FeatureSpec) -> EngineSpec:
    return EngineSpec(join_key="user_id", push_source="push", features=features)


def _feature(name: str, kind: str, window_s: float, slide_s: float = 0) -> FeatureSpec:
    return FeatureSpec(name=name, view="v", function="count", column="amount", kind=kind,
                       window_us=round(window_s * S), slide_us=round(slide_s * S), where=(),
                       dtype="int64")


SPEC = _spec(_feature("c_1h", "sliding", 3600, 300), _feature("c_30m", "sliding", 1800, 60),
             _feature("s", "session", 600))


def test_events_are_read_one_longest_window_before_the_window():
    assert read_start(NOW, SPEC) == NOW - 3600 * S


def _events(*rows: tuple[str, int]) -> pd.DataFrame:
    return pd.DataFrame({"user_id": [k for k, _ in rows],
                         "event_timestamp": [t for _, t in rows],
                         "amount": 1.0})


def test_a_session_open_at_the_window_start_that_may_begin_earlier_moves_the_read_back():
    lo, ws, gap = NOW - 3600 * S, NOW, 600 * S
    # u1: events every 5 min from the read start to the window: one session, maybe longer
    chain = [("u1", lo + i * 300 * S) for i in range(13)]
    assert session_cut(SPEC, _events(*chain), lo, ws)
    # the first event a gap after the read start: nothing earlier can belong to it
    late_start = [("u1", lo + gap + i * 300 * S) for i in range(11)]
    assert not session_cut(SPEC, _events(*late_start), lo, ws)
    # a session near the read start that ended long before the window does not matter
    assert not session_cut(SPEC, _events(("u1", lo + S), ("u1", lo + 60 * S),
                                         ("u1", ws - 5 * gap)), lo, ws)
    # a spec without sessions never moves the read
    no_sessions = _spec(*SPEC.features[:2])
    assert not session_cut(no_sessions, _events(*chain), lo, ws)
