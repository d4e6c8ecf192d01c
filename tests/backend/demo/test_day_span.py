"""The simulated day's span as the demo prints and reports it."""

from datetime import UTC, datetime

from backend.demo.checks import day_span


def test_span_within_a_date_shows_the_date_once() -> None:
    start = datetime(2026, 12, 5, 13, 0, tzinfo=UTC)
    end = datetime(2026, 12, 5, 13, 30, tzinfo=UTC)
    assert day_span(start, end) == "2026-12-05 13:00-13:30 UTC"


def test_whole_day_ends_at_the_next_midnight_with_its_date() -> None:
    start = datetime(2026, 12, 5, 0, 0, tzinfo=UTC)
    end = datetime(2026, 12, 6, 0, 0, tzinfo=UTC)
    assert day_span(start, end) == "2026-12-05 00:00 - 2026-12-06 00:00 UTC"
