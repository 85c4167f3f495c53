"""Event-rate series through the series detector (`EntityDetector.rates`, a `RateSeries`):
which entities get one, the alerts it raises, when it goes, and exact resumes."""

from __future__ import annotations

import pickle

from config.models import AnomalyConfig
from core.records import Alert, Event, Kind
from operators.anomaly import EntityDetector, RateSeries
from support.rates import RateScenario, events, rate_scenario, window_start

# A four-hour "day" (240 windows of 60 s, slots of 5 min) keeps the series short: warm after
# one season (240 windows), three seasons before the burst.
CFG = AnomalyConfig(
    season_period_s=4 * 3600.0, season_slots=48, rank_window=1000, allowed_lateness_s=30.0
)
PERIOD = 4 * 3600.0


def scenario(seed: int = 0, **kw: float) -> RateScenario:
    return rate_scenario(seed, period_s=PERIOD, **kw)  # type: ignore[arg-type]


def index(s: RateScenario, a: Alert) -> int:
    return round((a.window["start"] - window_start(s, 0)) / s.window_s)


def run(det: EntityDetector, evs: list[Event]) -> list[tuple[int, Alert]]:
    """(event index at emission, alert) for every alert; the wall clock follows the events."""
    out = []
    for i, e in enumerate(evs):
        out += [(i, f) for f in det.process([e], now=e.ts) if isinstance(f, Alert)]
    return out


def chat(ts: float, eid: str) -> Event:
    return Event(eid, "chat[0]@0", "acme", Kind.CHAT, "user-1", ts, {"text": "hi"}, ts)


def test_a_busy_entity_gets_its_burst_and_drop_from_the_ensemble() -> None:
    """A daily-ish rate (30 +- 15 a window), then a burst of 3x and later a drop to 0.3x:
    below the threshold rule's factor 5, so only the rate series sees them, at their first
    windows."""
    s = scenario()
    det = EntityDetector(CFG)
    alerts = [a for _, a in run(det, events(s))]
    assert isinstance(det.rates, RateSeries) and det.rates.warm
    burst = [a for a in alerts if s.burst_at <= index(s, a) < s.burst_at + s.burst_len]
    drop = [a for a in alerts if s.drop_at <= index(s, a) < s.drop_at + s.drop_len]
    assert burst and drop
    b, d = burst[0], drop[0]
    assert b.detector.startswith("ensemble/event_rate/") and b.window["kind"] == "burst"
    assert d.detector.startswith("ensemble/event_rate/") and d.window["kind"] == "drop"
    assert index(s, b) == s.burst_at and index(s, d) == s.drop_at
    assert b.value > b.baseline and d.value < d.baseline
    assert b.window["count"] == b.value and b.window["size_s"] == 60.0
    assert b.window["end"] == b.ts == b.window["start"] + 60.0
    assert b.change is not None and d.change is not None  # named by the rate series' tracker
    assert b.event_ids and len(b.event_ids) <= 10
    # The rule alone misses the burst (it may see the deepest window of the drop).
    rule = EntityDetector(CFG.model_copy(update={"rate_series": False}))
    seen = [a for _, a in run(rule, events(s)) if index(s, a) >= s.drop_at]
    assert all(a.detector == "event_rate_drop" for a in seen)
    assert rule.rates is None


def test_the_threshold_rule_speaks_until_the_series_is_warm() -> None:
    """A new busy entity gets a rate series at once, but its first season's rate alerts are
    the rule's, under the rule's names."""
    # The burst at window 120, the input ends before the series is warm (240 windows).
    s = scenario(burst_factor=8.0, days=0.5, gap=0, drop_len=0, tail=5)
    det = EntityDetector(CFG)
    alerts = [a for _, a in run(det, events(s)) if index(s, a) == s.burst_at]
    assert det.rates is not None and not det.rates.warm
    assert [a.detector for a in alerts] == ["event_rate"]


def test_a_sparse_entity_never_gets_a_rate_series() -> None:
    """A chat user with a few events now and then (a day of them): windows and the rule only,
    no series state at any point."""
    det = EntityDetector(CFG)
    t = window_start(scenario(), 0)
    for k in range(24 * 12):  # three events every five minutes
        evs = [chat(t + 300 * k + i, f"c{k}-{i}") for i in range(3)]
        det.process(evs, now=evs[-1].ts)
        assert det.rates is None
    assert "rate_series" not in det.state()
    assert len(pickle.dumps(det.state())) < 2000


def test_a_busy_entity_that_goes_quiet_drops_its_series() -> None:
    """Silence is zero windows while it lasts (wall time closes them); after
    `rate_series_quiet_windows` of them the series goes, and the entity is back to the rule."""
    cfg = CFG.model_copy(update={"rate_series_quiet_windows": 30})
    s = scenario(days=1.0, burst_len=0, drop_len=0, tail=0)
    det = EntityDetector(cfg)
    run(det, events(s))
    assert det.rates is not None
    n = det.rates.series.n
    last = events(s)[-1].ts
    det.tick(last + 60.0 * 10)
    assert det.rates is not None and det.rates.series.n > n and det.rates.quiet > 0
    assert det.next_wake() is not None
    det.tick(last + 60.0 * 40)
    assert det.rates is None and "rate_series" not in det.state()
    # The same silence seen only when the entity comes back (no wake-up in between).
    again = EntityDetector(cfg)
    run(again, events(s))
    assert again.rates is not None
    again.process([chat(last + 60.0 * 40, "back")], now=last + 60.0 * 40)
    assert again.rates is None


def test_a_restart_gives_the_same_rate_alerts_at_the_same_windows() -> None:
    """Snapshots (pickled) taken warm before the burst, two windows into it (its alert held
    for its change) and inside the drop's first window (open), resumed at the wall time of
    the restart: the alerts and the state after it are the uninterrupted run's."""
    s = scenario(seed=3)
    evs = events(s)
    straight = run(EntityDetector(CFG), evs)
    assert any(a.detector.startswith("ensemble/event_rate/") for _, a in straight)
    burst, drop = sum(s.counts[: s.burst_at]), sum(s.counts[: s.drop_at])
    for cut in (burst - 300, burst + sum(s.counts[s.burst_at : s.burst_at + 2]), drop + 4):
        live = EntityDetector(CFG)
        before = run(live, evs[:cut])
        snap = pickle.loads(pickle.dumps(live.state()))
        assert "rate_series" in snap
        resumed = EntityDetector(CFG, snap, now=evs[cut - 1].ts)
        after = [(i + cut, a) for i, a in run(resumed, evs[cut:])]
        assert before + after == straight
        run(live, evs[cut:])
        assert pickle.dumps(resumed.state()) == pickle.dumps(live.state())


def test_a_snapshot_without_a_rate_series_loads() -> None:
    """Snapshots from before rate series (no `rate_series` key): the entity resumes on the
    rule and gets a series again at its next busy window."""
    s = scenario(days=0.5, burst_len=0, drop_len=0, tail=0)
    evs = events(s)
    live = EntityDetector(CFG)
    run(live, evs[:-100])
    old = {k: v for k, v in live.state().items() if k != "rate_series"}
    resumed = EntityDetector(CFG, pickle.loads(pickle.dumps(old)), now=evs[-101].ts)
    assert resumed.rates is None and resumed.rate.state() == live.rate.state()
    run(resumed, evs[-100:])
    assert resumed.rates is not None and resumed.rates.series.n <= 4


def test_turning_rate_series_off_drops_a_resumed_one() -> None:
    s = scenario(days=0.5, burst_len=0, drop_len=0, tail=0)
    live = EntityDetector(CFG)
    run(live, events(s))
    assert live.rates is not None
    off = CFG.model_copy(update={"rate_series": False})
    resumed = EntityDetector(off, pickle.loads(pickle.dumps(live.state())), now=1.0)
    assert resumed.rates is None and "rate_series" not in resumed.state()


def test_the_end_of_input_reports_an_open_burst_once() -> None:
    """A finite input ending in a burst: the rate series raises it from the open window at
    the end of input (on a copy of its state), and not again when the window really closes
    after a graceful stop and restart."""
    s = scenario(seed=1, burst_factor=8.0, burst_len=1, gap=0, drop_len=0, tail=0)
    evs = events(s)
    det = EntityDetector(CFG)
    run(det, evs)
    series = pickle.dumps(det.state()["rate_series"])
    raised = det.flush(evs[-1].ts)
    assert pickle.dumps(det.state()["rate_series"]) == series  # the series did not move
    assert any(
        a.detector.startswith("ensemble/event_rate/") and a.window["kind"] == "burst"
        for a in raised
    )
    later = window_start(s, len(s.counts) + 2)
    resumed = EntityDetector(CFG, pickle.loads(pickle.dumps(det.state())), now=evs[-1].ts)
    out = resumed.process([chat(later, "next")], now=later)
    starts = {a.window["start"] for a in raised}
    assert not [f for f in out if isinstance(f, Alert) and f.window["start"] in starts]
