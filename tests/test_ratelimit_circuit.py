"""The rate-limit backend's circuit and throttled warnings, on a fake clock: a failed Redis
is skipped but for one probe per interval, its recovery is logged with how long it was
down, and a flood of the same warning is one line per interval saying how many it held."""

from __future__ import annotations

import logging

import pytest

from gateway.ratelimit.circuit import Circuit, ThrottledLog


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "gateway.ratelimit.circuit" and r.levelno == logging.WARNING]


def test_a_warning_flood_is_one_line_per_interval_counting_the_rest(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    log = ThrottledLog(interval_s=30.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="gateway.ratelimit.circuit"):
        log.warning("backend down: %s", "first")
        clock.now += 29.9
        log.warning("backend down: %s", "held")
        log.warning("backend down: %s", "held")
        clock.now = 130.0  # the interval is over, exactly
        log.warning("backend down: %s", "again")
        clock.now += 10
        log.warning("backend down: %s", "held")
        clock.now += 20
        log.warning("backend down: %s", "later")
        clock.now += 30
        log.warning("backend down: %s", "alone")
    assert _warnings(caplog) == [
        "backend down: first",
        "backend down: again (2 similar warnings suppressed)",
        "backend down: later (1 similar warnings suppressed)",
        "backend down: alone",
    ]


def test_the_default_interval_is_thirty_seconds(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    clock.now = 0.0  # a clock that starts at zero: the first warning is not held
    log = ThrottledLog(clock=clock)
    with caplog.at_level(logging.WARNING, logger="gateway.ratelimit.circuit"):
        log.warning("x")
        clock.now += 29.9
        log.warning("x")
        clock.now += 0.1
        log.warning("x")
    assert _warnings(caplog) == ["x", "x (1 similar warnings suppressed)"]


def test_a_failed_backend_gets_one_probe_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    circuit = Circuit(probe_interval_s=2.0, clock=clock)
    assert not circuit.down and circuit.try_call() and circuit.try_call()
    circuit.record(True)
    assert not circuit.down
    circuit.record(False)  # at 100
    assert circuit.down and circuit.down_since == 100.0
    assert not circuit.try_call()
    clock.now = 101.9
    assert not circuit.try_call()
    clock.now = 102.0  # the interval is over: one probe, exactly
    assert circuit.try_call()
    assert not circuit.try_call()  # while it is out, nobody else
    circuit.record(None)  # the probe was cancelled: no verdict, the next may probe
    assert circuit.down and circuit.try_call()
    circuit.record(False)  # the probe failed at 102: next one at 104
    assert circuit.down_since == 100.0  # down since the first failure
    clock.now = 103.9
    assert not circuit.try_call()
    clock.now = 104.5
    with caplog.at_level(logging.WARNING, logger="gateway.ratelimit.circuit"):
        assert circuit.try_call()
        circuit.record(True)
    assert not circuit.down and circuit.down_since is None
    assert circuit.try_call() and circuit.try_call()
    assert _warnings(caplog) == [
        "rate-limit backend answers again after 4.5s; shared limits resumed"]


def test_a_fresh_circuit_is_up_without_waiting() -> None:
    clock = Clock()
    clock.now = 0.0
    circuit = Circuit(probe_interval_s=5.0, clock=clock)
    assert circuit.try_call() and not circuit.down
    circuit.record(False)
    clock.now = 5.0
    assert circuit.try_call()
