"""Cron maths without a database: parsing, 6-field seconds, macros, and the daylight-saving rule."""

import time
from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest

from scheduler.cron import CronError, CronSchedule, describe, get_zone, normalise

BERLIN = get_zone("Europe/Berlin")


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def local(fires, zone=BERLIN) -> list[str]:
    return [f.astimezone(zone).strftime("%m-%d %H:%M:%S %Z") for f in fires]


# -- parsing -------------------------------------------------------------------------------

@pytest.mark.parametrize("expression, expected", [
    ("*/5 * * * *", "*/5 * * * *"),
    ("  0   3 * *  *  ", "0 3 * * *"),
    ("* * * * * */2", "* * * * * */2"),
    ("@hourly", "0 * * * *"),
    ("@daily", "0 0 * * *"),
    ("@weekly", "0 0 * * 0"),
    ("@monthly", "0 0 1 * *"),
    ("@yearly", "0 0 1 1 *"),
    ("@DAILY", "0 0 * * *"),
])
def test_accepted_expressions(expression, expected):
    assert normalise(expression) == expected


@pytest.mark.parametrize("expression, fragment", [
    ("* * * *", "has 4 fields"),
    ("* * * * * * *", "has 7 fields"),
    ("", "has 0 fields"),
    ("61 * * * *", "not a valid cron expression"),
    ("* 24 * * *", "not a valid cron expression"),
    ("0 0 30 2 *", "never fires"),
    ("@fortnightly", "not a known macro"),
    (None, "must be a string"),
])
def test_rejected_expressions(expression, fragment):
    with pytest.raises(CronError, match=fragment):
        normalise(expression)


def test_six_fields_have_seconds_last():
    cron = CronSchedule("0 12 * * * 30", "UTC")  # 12:00:30 every day
    assert cron.next_after(utc(2025, 1, 1, 11)) == utc(2025, 1, 1, 12, 0, 30)
    every_two = CronSchedule("* * * * * */2", "UTC")
    assert every_two.between(utc(2025, 1, 1, 0, 0, 0, 500), utc(2025, 1, 1, 0, 0, 7)) == [
        utc(2025, 1, 1, 0, 0, 2), utc(2025, 1, 1, 0, 0, 4), utc(2025, 1, 1, 0, 0, 6)]


def test_next_after_is_strictly_after_and_needs_an_aware_time():
    cron = CronSchedule("*/5 * * * *", "UTC")
    assert cron.next_after(utc(2025, 1, 1, 12, 5)) == utc(2025, 1, 1, 12, 10)
    assert cron.next_after(utc(2025, 1, 1, 12, 4, 59, 999999)) == utc(2025, 1, 1, 12, 5)
    with pytest.raises(ValueError, match="aware"):
        cron.next_after(datetime(2025, 1, 1))


def test_expression_is_read_in_its_time_zone():
    cron = CronSchedule("0 9 * * 1-5", "America/New_York")  # weekdays 09:00 in New York
    assert cron.next_after(utc(2025, 1, 3, 15)) == utc(2025, 1, 6, 14)  # Friday after 10:00 EST -> Monday 14:00 UTC
    assert cron.next_after(utc(2025, 7, 1, 0)) == utc(2025, 7, 1, 13)  # EDT


def test_latest_finds_the_last_fire_times_of_a_long_gap_quickly():
    cron = CronSchedule("* * * * * *", "UTC")  # every second
    started = time.perf_counter()
    latest = cron.latest(utc(2025, 6, 1), floor=utc(2024, 6, 1), count=100)
    assert time.perf_counter() - started < 2
    assert len(latest) == 100 and latest[-1] == utc(2025, 6, 1) and latest[0] == utc(2025, 5, 31, 23, 58, 21)
    assert cron.latest(utc(2025, 6, 1, 0, 0, 10), floor=utc(2025, 6, 1, 0, 0, 8), count=100) == [
        utc(2025, 6, 1, 0, 0, 8), utc(2025, 6, 1, 0, 0, 9), utc(2025, 6, 1, 0, 0, 10)]
    daily = CronSchedule("0 3 * * *", "UTC")
    assert daily.latest(utc(2025, 6, 10, 12), floor=utc(2025, 1, 1), count=1) == [utc(2025, 6, 10, 3)]


def test_result_does_not_depend_on_the_process_time_zone(monkeypatch):
    cron = CronSchedule("30 2 * * *", "Europe/Berlin")
    expected = cron.between(utc(2025, 3, 28), utc(2025, 4, 1))
    monkeypatch.setenv("TZ", "America/Los_Angeles")
    time.tzset()
    try:
        assert CronSchedule("30 2 * * *", "Europe/Berlin").between(utc(2025, 3, 28), utc(2025, 4, 1)) == expected
    finally:
        monkeypatch.undo()
        time.tzset()


@pytest.mark.parametrize("name", ["Mars/Olympus", "", "../etc/passwd", None])
def test_unknown_time_zones(name):
    with pytest.raises(CronError):
        get_zone(name)


def test_descriptions():
    assert describe("30 2 * * *") == "At 02:30"
    assert describe("* * * * * */2") == "Every 2 seconds"
    assert describe("@daily") == "At 00:00"
    assert describe("61 * * * *") == "invalid expression"


# -- daylight saving (Europe/Berlin: 2025-03-30 02:00 -> 03:00, 2025-10-26 03:00 -> 02:00) ------

def test_daily_0230_runs_once_on_spring_forward_day_at_the_jump():
    fires = CronSchedule("30 2 * * *", "Europe/Berlin").between(utc(2025, 3, 28), utc(2025, 4, 1))
    assert local(fires) == ["03-28 02:30:00 CET", "03-29 02:30:00 CET", "03-30 03:00:00 CEST",
                            "03-31 02:30:00 CEST"]


def test_daily_0230_runs_once_on_fall_back_day_at_the_first_occurrence():
    cron = CronSchedule("30 2 * * *", "Europe/Berlin")
    fires = cron.between(utc(2025, 10, 24), utc(2025, 10, 28))
    assert local(fires) == ["10-24 02:30:00 CEST", "10-25 02:30:00 CEST", "10-26 02:30:00 CEST",
                            "10-27 02:30:00 CET"]
    # Asked from inside the repeated hour (02:10 CET, after the 02:30 CEST run): tomorrow, not 02:30 CET.
    assert cron.next_after(utc(2025, 10, 26, 1, 10)) == utc(2025, 10, 27, 1, 30)


def test_pinned_times_in_the_skipped_hour_collapse_into_one_run():
    cron = CronSchedule("* 2 * * *", "Europe/Berlin")  # every minute of 02:xx
    assert local(cron.between(utc(2025, 3, 29, 23), utc(2025, 3, 30, 3))) == ["03-30 03:00:00 CEST"]
    assert len(cron.between(utc(2025, 10, 25, 23), utc(2025, 10, 26, 3))) == 60  # the first pass only
    several = CronSchedule("30 1-3 * * *", "Europe/Berlin")
    assert local(several.between(utc(2025, 3, 29, 23), utc(2025, 3, 30, 3))) == [
        "03-30 01:30:00 CET", "03-30 03:00:00 CEST", "03-30 03:30:00 CEST"]


def test_hourly_follows_the_real_clock_across_both_transitions():
    cron = CronSchedule("@hourly", "Europe/Berlin")
    assert local(cron.between(utc(2025, 3, 29, 23, 30), utc(2025, 3, 30, 2))) == [
        "03-30 01:00:00 CET", "03-30 03:00:00 CEST", "03-30 04:00:00 CEST"]
    assert local(cron.between(utc(2025, 10, 25, 23, 30), utc(2025, 10, 26, 2))) == [
        "10-26 02:00:00 CEST", "10-26 02:00:00 CET", "10-26 03:00:00 CET"]


@pytest.mark.parametrize("expression, step", [("*/15 * * * *", 900), ("* * * * * */2", 2), ("@hourly", 3600)])
@pytest.mark.parametrize("start", [utc(2025, 3, 29, 22), utc(2025, 10, 25, 22)], ids=["spring", "fall"])
def test_frequent_schedules_keep_their_real_interval(expression, step, start):
    fires = CronSchedule(expression, "Europe/Berlin").between(start, start + timedelta(hours=5))
    gaps = {(b - a).total_seconds() for a, b in pairwise(fires)}
    assert gaps == {step}


def test_new_york_and_sydney_transitions():
    ny = CronSchedule("30 2 * * *", "America/New_York")  # 2025-03-09 and 2025-11-02
    assert local(ny.between(utc(2025, 3, 8, 12), utc(2025, 3, 10, 12)), get_zone("America/New_York")) == [
        "03-09 03:00:00 EDT", "03-10 02:30:00 EDT"]
    assert len(ny.between(utc(2025, 11, 1, 12), utc(2025, 11, 3, 12))) == 2
    sydney = CronSchedule("30 2 * * *", "Australia/Sydney")  # forward 2025-10-05, back 2025-04-06
    zone = get_zone("Australia/Sydney")
    assert local(sydney.between(utc(2025, 10, 3, 12), utc(2025, 10, 5, 12)), zone) == [
        "10-04 02:30:00 AEST", "10-05 03:00:00 AEDT"]
    assert local(sydney.between(utc(2025, 4, 4, 12), utc(2025, 4, 6, 12)), zone) == [
        "04-05 02:30:00 AEDT", "04-06 02:30:00 AEDT"]
