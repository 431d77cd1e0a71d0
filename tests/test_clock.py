"""The hub's clock (router/clock.py): monotonic and wall time from one source, one conversion
between them that never makes a due time earlier, and a fake clock tests move by hand."""

from __future__ import annotations

import threading

import pytest

from zmq_mq.router.clock import Clock, FakeClock, SystemClock


def test_a_fake_clock_stands_still_until_advanced_and_moves_both_clocks_together():
    clock = FakeClock(wall_ms=1_000_000, monotonic_ms=50)
    assert (clock.wall_ms(), clock.monotonic_ms()) == (1_000_000, 50)
    assert clock.wall_ms() == 1_000_000  # no time passes by itself
    clock.advance(2.5)
    assert clock.monotonic_ns() == 52_500_000 and clock.wall_ns() == 1_000_002_500_000
    assert (clock.wall_ms(), clock.monotonic_ms()) == (1_000_002, 52)  # whole ms round down
    with pytest.raises(ValueError):
        clock.advance(-1)


def test_wall_to_monotonic_rounds_up_so_a_due_time_never_becomes_an_earlier_deadline():
    # Given a wall clock on a whole ms while the monotonic one is 0.6 ms into its millisecond
    clock = FakeClock(wall_ms=1_000_000, monotonic_ms=50)
    clock.advance(0.6)
    clock.set(wall_ms=1_000_000)
    # When a wall due time is turned into a monotonic deadline
    deadline = clock.wall_to_monotonic_ms(1_001_500)
    # Then the monotonic clock reaches the deadline (monotonic_ms() >= deadline) only once the
    # wall clock has passed the due time, not 0.6 ms before (rounding down gave 1550)
    assert deadline == 1551
    clock.advance(1499.999999)
    assert clock.wall_ms() < 1_001_500 and clock.monotonic_ms() < deadline
    # and within a ms after it (deadlines are whole ms)
    clock.advance(0.400001)
    assert clock.wall_ms() == 1_001_500 and clock.monotonic_ms() >= deadline


def test_set_steps_the_wall_clock_alone_and_the_conversion_follows_it():
    clock = FakeClock(wall_ms=10_000, monotonic_ms=100)
    clock.set(wall_ms=20_000)  # as NTP may step it
    assert clock.monotonic_ms() == 100 and clock.wall_ms() == 20_000
    assert clock.wall_to_monotonic_ms(20_500) == 600
    clock.set(monotonic_ms=200)
    assert clock.wall_ms() == 20_100
    with pytest.raises(ValueError):
        clock.set(monotonic_ms=150)


def test_a_fake_clock_tells_its_watchers_when_it_jumps_until_they_stop_watching():
    clock = FakeClock()
    calls = []
    unwatch = clock.watch(lambda: calls.append(clock.monotonic_ms()))
    clock.advance(5)
    clock.set(monotonic_ms=clock.monotonic_ms() + 10)
    unwatch()
    clock.advance(1)
    assert len(calls) == 2 and calls[1] - calls[0] == 10
    unwatch()  # twice is fine


def test_a_fake_clock_read_while_another_thread_advances_it_only_goes_forward():
    clock = FakeClock()
    stop = threading.Event()
    seen: list[tuple[int, int]] = []

    def reader():
        while not stop.is_set():
            seen.append((clock.monotonic_ns(), clock.wall_ns()))

    t = threading.Thread(target=reader)
    t.start()
    try:
        for _ in range(2000):
            clock.advance(0.001)
    finally:
        stop.set()
        t.join(10)
    monos = [m for m, _ in seen]
    walls = [w for _, w in seen]
    assert monos == sorted(monos) and walls == sorted(walls)


def test_the_system_clock_reads_the_machine_clocks_and_converts_with_one_pair_of_reads():
    import time

    clock = SystemClock()
    assert isinstance(clock, Clock)
    before = time.time_ns() // 1_000_000
    wall = clock.wall_ms()
    assert before <= wall <= time.time_ns() // 1_000_000
    # a wall time 1 s ahead is about 1 s ahead on the monotonic clock too, never less
    mono_now = clock.monotonic_ms()
    ahead = clock.wall_to_monotonic_ms(clock.wall_ms() + 1000)
    assert 999 <= ahead - mono_now <= 1100
    assert clock.watch(lambda: None)() is None  # a real clock never jumps
