"""Retention policies (issue 16): ``ckpt.domain.retention``.

Terms: a *table test* runs a documented example of an anchor (Proxmox Backup
Server, restic) and asserts which points are kept; each cites where the example
comes from. PBS's convention is ours, so its examples hold as documented;
restic's rules are independent (a snapshot matching any rule is kept), so a
restic example is used as is only where both conventions agree, and where they
differ the test asserts our result and says why. Times are fixed, in UTC.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta, tzinfo
from random import Random
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ckpt.domain.errors import InvalidValue
from ckpt.domain.retention import RULES, Candidate, Duration, Policy, Verdict, select


def at(text: str) -> datetime:
    """``2019-12-04T11:59:15`` (optionally ``Z``) as an aware UTC time."""
    return datetime.fromisoformat(text.removesuffix("Z")).replace(tzinfo=UTC)


def points(*times: str) -> list[Candidate]:
    # Key = the time text: tables read as the anchors print them.
    return [Candidate(t, at(t)) for t in times]


def kept(verdicts: list[Verdict]) -> list[str]:
    return [v.key for v in verdicts if v.keep]


def reasons(verdicts: list[Verdict]) -> Counter[str]:
    """How many points each rule kept ("daily 2026-11-30 1/7" counts as "daily")."""
    return Counter(v.reasons[0].split()[0] for v in verdicts if v.keep)


# --- Duration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "parts", "canonical"),
    [
        ("1y5m7d2h", (1, 5, 7, 2), "1y5m7d2h"),
        ("2d", (0, 0, 2, 0), "2d"),
        ("13d23h", (0, 0, 13, 23), "13d23h"),
        ("1y0m3d", (1, 0, 3, 0), "1y3d"),
        (" 12h ", (0, 0, 0, 12), "12h"),
    ],
)
def test_a_duration_parses_restic_syntax_and_prints_canonically(
    text: str, parts: tuple[int, int, int, int], canonical: str
) -> None:
    d = Duration.parse(text)
    assert (d.years, d.months, d.days, d.hours) == parts
    assert str(d) == canonical
    assert Duration.parse(str(d)) == d


@pytest.mark.parametrize("text", ["", "0d", "0y0h", "2w", "1d1y", "1d1d", "d", "-1d", "1.5d", "7"])
def test_a_bad_or_zero_duration_is_refused_naming_the_text(text: str) -> None:
    with pytest.raises(InvalidValue, match="duration"):
        Duration.parse(text)


@pytest.mark.parametrize(
    ("duration", "t", "expected"),
    [
        ("1m", "2026-03-31T10:00", "2026-02-28T10:00"),  # clamped to the month's end
        ("1m", "2024-03-31T10:00", "2024-02-29T10:00"),  # leap year
        ("1y", "2024-02-29T10:00", "2023-02-28T10:00"),
        ("1m1d", "2026-03-31T10:00", "2026-02-27T10:00"),  # months first, then days
        ("2d3h", "2026-01-01T01:00", "2025-12-29T22:00"),
        ("1y2m3d3h", "2016-01-18T12:02:03", "2014-11-15T09:02:03"),
    ],
)
def test_before_subtracts_calendar_parts_then_hours(duration: str, t: str, expected: str) -> None:
    assert Duration.parse(duration).before(at(t)) == at(expected)


def test_before_counts_hours_in_absolute_time_across_a_clock_change() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    # 2026-03-29 03:00 CEST is 01:00 UTC; 3 real hours earlier is 22:00 UTC the day before.
    t = datetime(2026, 3, 29, 3, 0, tzinfo=berlin)
    assert Duration.parse("3h").before(t) == datetime(2026, 3, 28, 22, 0, tzinfo=UTC)


def test_before_far_in_the_past_stops_at_the_earliest_time() -> None:
    assert Duration.parse("9999y").before(at("2026-01-01T00:00")) == datetime.min.replace(
        tzinfo=UTC
    )


# --- Policy text ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "policy", "canonical"),
    [
        ("daily=7,weekly=4,within=2d", Policy(daily=7, weekly=4, within=Duration(days=2)),
         "within=2d,daily=7,weekly=4"),
        (" keep-last = 3 , keep-yearly=9 ", Policy(last=3, yearly=9), "last=3,yearly=9"),
        ("yearly=1,monthly=2,weekly=3,daily=4,hourly=5,within=1y,last=6",
         Policy(6, 5, 4, 3, 2, 1, Duration(years=1)),
         "last=6,within=1y,hourly=5,daily=4,weekly=3,monthly=2,yearly=1"),
        ("daily=0,weekly=2", Policy(weekly=2), "weekly=2"),
        ("", Policy(), "none"),
        ("none", Policy(), "none"),
        ("daily=0", Policy(), "none"),
    ],
)  # fmt: skip
def test_a_policy_parses_and_prints_in_pbs_order(text: str, policy: Policy, canonical: str) -> None:
    assert Policy.parse(text) == policy
    assert str(policy) == canonical
    assert Policy.parse(canonical) == policy


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("daily=-1", "'daily=-1'"),
        ("daily=1.5", "'daily=1.5'"),
        ("daily=seven", "'daily=seven'"),
        ("daily=", "'daily='"),
        ("daily=7,keep-daily=3", "'daily' is given twice"),
        ("fortnightly=2", "'fortnightly=2'"),
        ("daily", "'daily'"),
        ("daily=7,,weekly=4", "item ''"),
        ("within=0d", "'within=0d'"),
        ("within=2w", "'within=2w'"),
    ],
)
def test_a_bad_policy_is_refused_naming_the_item(text: str, named: str) -> None:
    with pytest.raises(InvalidValue) as refused:
        Policy.parse(text)
    assert named in str(refused.value)
    assert "\n" not in str(refused.value)


def test_a_policy_built_in_code_refuses_negative_counts() -> None:
    with pytest.raises(InvalidValue, match="keep-weekly"):
        Policy(weekly=-1)


def test_the_empty_policy_is_empty_and_any_rule_makes_it_not() -> None:
    assert Policy().empty
    assert all(not Policy(**{rule: 1}).empty for rule in RULES)  # type: ignore[arg-type]
    assert not Policy(within=Duration(hours=1)).empty


# --- select: contract -------------------------------------------------------------------


def test_an_empty_policy_keeps_everything_newest_first() -> None:
    verdicts = select(points("2026-01-01T00:00", "2026-03-01T00:00"), Policy())
    assert verdicts == [
        Verdict("2026-03-01T00:00", True, ("no policy",)),
        Verdict("2026-01-01T00:00", True, ("no policy",)),
    ]


def test_no_candidates_give_no_verdicts() -> None:
    assert select([], Policy(last=1)) == []


def test_a_naive_time_is_refused_naming_the_point() -> None:
    with pytest.raises(InvalidValue, match=r"'p1'.*no timezone"):
        select([Candidate("p1", datetime(2026, 1, 1))], Policy(last=1))


def test_a_key_given_twice_is_refused() -> None:
    with pytest.raises(InvalidValue, match="'p1' is given twice"):
        select([Candidate("p1", at("2026-01-01T00:00"))] * 2, Policy(last=1))


def test_reasons_name_the_rule_the_period_and_the_count() -> None:
    cands = points(
        "2026-11-30T14:10", "2026-11-30T13:10", "2026-11-29T10:00", "2026-11-20T10:00",
        "2026-10-01T10:00", "2025-06-01T10:00", "2025-05-01T10:00",
    )  # fmt: skip
    policy = Policy.parse("last=1,within=1h,hourly=1,daily=1,weekly=1,monthly=1,yearly=1")
    cands.append(Candidate("just-before", at("2026-11-30T14:00")))
    assert {v.key: v.reasons for v in select(cands, policy)} == {
        "2026-11-30T14:10": ("last 1/1",),
        "just-before": ("within 1h",),
        "2026-11-30T13:10": ("hourly 2026-11-30T13 1/1",),
        "2026-11-29T10:00": ("daily 2026-11-29 1/1",),
        "2026-11-20T10:00": ("weekly 2026-W47 1/1",),
        "2026-10-01T10:00": ("monthly 2026-10 1/1",),
        "2025-06-01T10:00": ("yearly 2025 1/1",),
        "2025-05-01T10:00": (),
    }


def test_periods_are_read_in_the_given_timezone() -> None:
    # 23:30 UTC on Nov 29 is 00:30 on Nov 30 in Berlin: one day in Berlin, two in UTC.
    cands = points("2026-11-30T10:00", "2026-11-29T23:30")
    assert kept(select(cands, Policy(daily=2))) == ["2026-11-30T10:00", "2026-11-29T23:30"]
    assert kept(select(cands, Policy(daily=2), ZoneInfo("Europe/Berlin"))) == ["2026-11-30T10:00"]


def test_weeks_are_iso_weeks_across_a_year_end() -> None:
    # 2026-12-31 (Thursday) and 2027-01-03 (Sunday) are both in ISO week 2026-W53.
    verdicts = select(points("2027-01-03T10:00", "2026-12-31T10:00"), Policy(weekly=2))
    assert [v.reasons for v in verdicts] == [("weekly 2026-W53 1/2",), ()]


def test_a_point_a_week_rule_purged_is_not_revived_by_the_month_rule() -> None:
    # PBS's mark_selections marks the older points of a period it took "Remove", and
    # later rules skip them. Saturday Oct 31 loses ISO week 2026-W44 (Oct 26 - Nov 1)
    # to Sunday Nov 1, so the monthly rule never sees it and takes Oct 20 for October.
    cands = points("2026-11-01T10:00", "2026-10-31T10:00", "2026-10-20T10:00")
    verdicts = select(cands, Policy(weekly=1, monthly=2))
    assert [v.reasons for v in verdicts] == [
        ("weekly 2026-W44 1/1",),
        (),
        ("monthly 2026-10 1/2",),
    ]


# --- Table tests: Proxmox Backup Server -------------------------------------------------
# github.com/proxmox/proxmox-backup tests/prune.rs (commit 4940514b), the examples PBS's
# own implementation is held to; "Z" times, as there.

PBS_HOURLY = [f"2019-11-15T{t}" for t in ("09:39:15", "10:49:15", "10:59:15", "11:39:15",
                                          "11:49:15", "11:59:15")]  # fmt: skip
PBS_SIMPLE = ["2019-12-02T11:59:15", "2019-12-03T11:59:15", "2019-12-04T11:59:15",
              "2019-12-04T12:59:15"]  # fmt: skip
PBS_SIMPLE2 = [f"{d}T11:59:15" for d in ("2018-11-15", "2019-11-15", "2019-11-21", "2019-11-22",
               "2019-11-29", "2019-12-01", "2019-12-02", "2019-12-03", "2019-12-04")]  # fmt: skip


@pytest.mark.parametrize(
    ("times", "policy", "expected"),
    [
        # test_prune_hourly
        (PBS_HOURLY, "hourly=3", ["11:59:15", "10:59:15", "09:39:15"]),
        (PBS_HOURLY, "hourly=2", ["11:59:15", "10:59:15"]),
        # test_prune_simple
        (PBS_SIMPLE, "last=4", ["04T12", "04T11", "03T11", "02T11"]),
        (PBS_SIMPLE, "last=3", ["04T12", "04T11", "03T11"]),
        (PBS_SIMPLE, "last=1", ["04T12"]),
        (PBS_SIMPLE, "last=2,daily=2", ["04T12", "04T11", "03T11", "02T11"]),
        (PBS_SIMPLE, "daily=3", ["04T12", "03T11", "02T11"]),
        (PBS_SIMPLE, "daily=2", ["04T12", "03T11"]),
        (PBS_SIMPLE, "weekly=5", ["04T12"]),
        (PBS_SIMPLE, "daily=1,weekly=5", ["04T12"]),
        (PBS_SIMPLE, "monthly=6", ["04T12"]),
        (PBS_SIMPLE, "yearly=7", ["04T12"]),
        (PBS_SIMPLE, "weekly=5,monthly=6,yearly=7", ["04T12"]),
        # test_prune_simple2
        (PBS_SIMPLE2, "daily=1", ["2019-12-04"]),
        (PBS_SIMPLE2, "last=1,daily=1", ["2019-12-04", "2019-12-03"]),
        (PBS_SIMPLE2, "daily=1,weekly=1", ["2019-12-04", "2019-12-01"]),
        (PBS_SIMPLE2, "daily=1,weekly=1,monthly=1", ["2019-12-04", "2019-12-01", "2019-11-22"]),
        (PBS_SIMPLE2, "monthly=1,yearly=1", ["2019-12-04", "2018-11-15"]),
    ],
)
def test_pbs_repository_examples(times: list[str], policy: str, expected: list[str]) -> None:
    got = kept(select(points(*times), Policy.parse(policy)))
    assert len(got) == len(expected)
    assert all(fragment in key for key, fragment in zip(got, expected, strict=True))


def test_pbs_documentation_retention_settings_example() -> None:
    # pbs.proxmox.com/docs/maintenance.html "Retention Settings Example" (docs/maintenance.rst):
    # daily backups, keep-last 3, daily 13, weekly 8, monthly 11, yearly 9: "at least two
    # weeks" of dailies, "two full months" of weeklies, "a year" of monthlies, "at least 10
    # years of coverage". Here: one backup a day at 02:00 from 2014 to Mon 2026-11-30.
    start = datetime(2014, 1, 1, 2, 0, tzinfo=UTC)
    days = (datetime(2026, 11, 30, 2, 0, tzinfo=UTC) - start).days + 1
    cands = [Candidate(f"{t:%Y-%m-%d}", t) for t in (start + timedelta(d) for d in range(days))]
    verdicts = select(cands, Policy.parse("last=3,daily=13,weekly=8,monthly=11,yearly=9"))
    assert reasons(verdicts) == {"last": 3, "daily": 13, "weekly": 8, "monthly": 11, "yearly": 9}
    by_rule: dict[str, list[str]] = {}
    for v in verdicts:
        if v.keep:
            by_rule.setdefault(v.reasons[0].split()[0], []).append(v.key)
    # 16 days in a row; then the Sundays of the 8 ISO weeks before the week of Nov 15.
    assert by_rule["last"] + by_rule["daily"] == [f"2026-11-{d:02d}" for d in range(30, 14, -1)]
    assert by_rule["weekly"] == [
        "2026-11-08", "2026-11-01", "2026-10-25", "2026-10-18",
        "2026-10-11", "2026-10-04", "2026-09-27", "2026-09-20",
    ]  # fmt: skip
    # Month ends from August 2026 back to October 2025, then year ends 2024 back to 2016.
    assert by_rule["monthly"][0] == "2026-08-31" and by_rule["monthly"][-1] == "2025-10-31"
    assert by_rule["yearly"] == [f"{y}-12-31" for y in range(2024, 2015, -1)]


# --- Table tests: restic ----------------------------------------------------------------
# restic.readthedocs.io "Removing snapshots according to a policy" (doc/060_forget.rst).


def test_restic_documentation_keep_daily_5_with_a_missed_day() -> None:
    # Weekdays for two weeks, a second backup on Fridays, Wednesday Apr 30 missed. (The
    # doc's "keep" list prints ID 8a603ddf at 23:00, its "snapshots" list at 11:00: the
    # times are what the example is about, so the keys here are times.) One rule: restic
    # and PBS agree.
    cands = points(
        "2025-04-21T11:00", "2025-04-22T11:00", "2025-04-23T11:00", "2025-04-24T11:00",
        "2025-04-25T11:00", "2025-04-25T23:00", "2025-04-28T11:00", "2025-04-29T11:00",
        "2025-05-01T11:00", "2025-05-02T11:00", "2025-05-02T23:00",
    )  # fmt: skip
    assert kept(select(cands, Policy(daily=5))) == [
        "2025-05-02T23:00", "2025-05-01T11:00", "2025-04-29T11:00", "2025-04-28T11:00",
        "2025-04-25T23:00",
    ]  # fmt: skip


def test_restic_documentation_100_years_of_dailies_differs_by_convention() -> None:
    # restic's doc: a backup every day for 100 years, --keep-daily 7 --keep-weekly 5
    # --keep-monthly 12 --keep-yearly 75 keeps 7 daily, 4 weekly ("the 7 dailies already
    # include 1 weekly"), 12 or 11 monthly and 75 or 74 yearly: restic ORs its rules.
    # DIFFERENCE: in PBS's order each rule counts only periods no earlier rule covered, so
    # every count is spent in full: 7 + 5 + 12 + 75 = 99 points.
    start = datetime(1926, 12, 1, 3, 0, tzinfo=UTC)
    cands = [Candidate(str(d), start + timedelta(d)) for d in range(100 * 365 + 24)]
    verdicts = select(cands, Policy(daily=7, weekly=5, monthly=12, yearly=75))
    assert reasons(verdicts) == {"daily": 7, "weekly": 5, "monthly": 12, "yearly": 75}


# restic's golden files: internal/data/snapshot_policy_test.go (TestApplyPolicy, commit
# a80be147) lists these snapshots (the 5 copies of 2015-10-22 differ there by tags and
# paths, here by key); testdata/policy_keep_snapshots_N holds what each policy keeps.
_RESTIC_TABLE = """
    2014-09-01T10:20:30  2014-09-02T10:20:30  2014-09-05T10:20:30  2014-09-06T10:20:30
    2014-09-08T10:20:30  2014-09-09T10:20:30  2014-09-10T10:20:30  2014-09-11T10:20:30
    2014-09-20T10:20:30  2014-09-22T10:20:30  2014-08-08T10:20:30  2014-08-10T10:20:30
    2014-08-12T10:20:30  2014-08-13T10:20:30  2014-08-13T10:20:30.1  2014-08-15T10:20:30
    2014-08-18T10:20:30  2014-08-20T10:20:30  2014-08-21T10:20:30  2014-08-22T10:20:30
    2014-10-01T10:20:30  2014-10-02T10:20:30  2014-10-05T10:20:30  2014-10-06T10:20:30
    2014-10-08T10:20:30  2014-10-09T10:20:30  2014-10-10T10:20:30  2014-10-11T10:20:30
    2014-10-20T10:20:30  2014-10-22T10:20:30  2014-11-08T10:20:30  2014-11-10T10:20:30
    2014-11-12T10:20:30  2014-11-13T10:20:30  2014-11-13T10:20:30.1  2014-11-15T10:20:30
    2014-11-18T10:20:30  2014-11-20T10:20:30  2014-11-21T10:20:30  2014-11-22T10:20:30
    2015-09-01T10:20:30  2015-09-02T10:20:30  2015-09-05T10:20:30  2015-09-06T10:20:30
    2015-09-08T10:20:30  2015-09-09T10:20:30  2015-09-10T10:20:30  2015-09-11T10:20:30
    2015-09-20T10:20:30  2015-09-22T10:20:30  2015-08-08T10:20:30  2015-08-10T10:20:30
    2015-08-12T10:20:30  2015-08-13T10:20:30  2015-08-13T10:20:30.1  2015-08-15T10:20:30
    2015-08-18T10:20:30  2015-08-20T10:20:30  2015-08-21T10:20:30  2015-08-22T10:20:30
    2015-10-01T10:20:30  2015-10-02T10:20:30  2015-10-05T10:20:30  2015-10-06T10:20:30
    2015-10-08T10:20:30  2015-10-09T10:20:30  2015-10-10T10:20:30  2015-10-11T10:20:30
    2015-10-20T10:20:30  2015-10-22T10:20:30  2015-10-22T10:20:30  2015-10-22T10:20:30
    2015-10-22T10:20:30  2015-10-22T10:20:30  2015-11-08T10:20:30  2015-11-10T10:20:30
    2015-11-12T10:20:30  2015-11-13T10:20:30  2015-11-13T10:20:30.1  2015-11-15T10:20:30
    2015-11-18T10:20:30  2015-11-20T10:20:30  2015-11-21T10:20:30  2015-11-22T10:20:30
    2016-01-01T01:02:03  2016-01-01T01:03:03  2016-01-01T07:08:03  2016-01-03T07:02:03
    2016-01-04T10:23:03  2016-01-04T11:23:03  2016-01-04T12:23:03  2016-01-04T12:24:03
    2016-01-04T12:28:03  2016-01-04T12:30:03  2016-01-04T16:23:03  2016-01-05T09:02:03
    2016-01-06T08:02:03  2016-01-07T10:02:03  2016-01-08T20:02:03  2016-01-09T21:02:03
    2016-01-12T21:02:03  2016-01-12T21:08:03  2016-01-18T12:02:03
"""
RESTIC_TIMES = _RESTIC_TABLE.split()
RESTIC_SNAPSHOTS = [Candidate(f"{i:03d} {t}", at(t)) for i, t in enumerate(RESTIC_TIMES)]
NEWEST_10 = ["2016-01-18T12:02:03", "2016-01-12T21:08:03", "2016-01-12T21:02:03",
             "2016-01-09T21:02:03", "2016-01-08T20:02:03", "2016-01-07T10:02:03",
             "2016-01-06T08:02:03", "2016-01-05T09:02:03", "2016-01-04T16:23:03",
             "2016-01-04T12:30:03"]  # fmt: skip
NEWEST_19 = [*NEWEST_10, "2016-01-04T12:28:03", "2016-01-04T12:24:03", "2016-01-04T12:23:03",
                         "2016-01-04T11:23:03", "2016-01-04T10:23:03", "2016-01-03T07:02:03",
                         "2016-01-01T07:08:03", "2016-01-01T01:03:03",
                         "2016-01-01T01:02:03"]  # fmt: skip


@pytest.mark.parametrize(
    ("golden", "policy", "expected"),
    [
        (1, "last=10", NEWEST_10),
        (5, "hourly=20", [NEWEST_10[0], NEWEST_10[1], *NEWEST_10[3:],
                          "2016-01-04T11:23:03", "2016-01-04T10:23:03", "2016-01-03T07:02:03",
                          "2016-01-01T07:08:03", "2016-01-01T01:03:03", "2015-11-22T10:20:30",
                          "2015-11-21T10:20:30", "2015-11-20T10:20:30", "2015-11-18T10:20:30",
                          "2015-11-15T10:20:30", "2015-11-13T10:20:30.1"]),
        (6, "daily=3", ["2016-01-18T12:02:03", "2016-01-12T21:08:03", "2016-01-09T21:02:03"]),
        (12, "weekly=4", ["2016-01-18T12:02:03", "2016-01-12T21:08:03", "2016-01-09T21:02:03",
                          "2016-01-03T07:02:03"]),
        (14, "monthly=6", ["2016-01-18T12:02:03", "2015-11-22T10:20:30", "2015-10-22T10:20:30",
                           "2015-09-22T10:20:30", "2015-08-22T10:20:30",
                           "2014-11-22T10:20:30"]),
        (25, "within=1m14d", NEWEST_19),
        (28, "within=2m2h", [*NEWEST_19, "2015-11-22T10:20:30", "2015-11-21T10:20:30",
                                         "2015-11-20T10:20:30", "2015-11-18T10:20:30"]),
    ],
)  # fmt: skip
def test_restic_golden_files_where_the_conventions_agree(
    golden: int, policy: str, expected: list[str]
) -> None:
    got = kept(select(RESTIC_SNAPSHOTS, Policy.parse(policy)))
    assert [key.split()[1] for key in got] == expected, f"policy_keep_snapshots_{golden}"


def test_restic_golden_file_last_5_daily_5_differs_by_convention() -> None:
    # policy_keep_snapshots_9: restic keeps 6 (the 5 newest, and Jan 7 as the fifth day,
    # because its daily rule also counts the 4 days the 5 newest cover). DIFFERENCE: PBS's
    # daily rule starts after the days keep-last covered (Jan 18, 12, 9, 8) and keeps 5
    # more: Jan 7, 6, 5, 4, 3 -- 10 points.
    verdicts = select(RESTIC_SNAPSHOTS, Policy(last=5, daily=5))
    assert [key.split()[1][:10] for key in kept(verdicts)] == [
        "2016-01-18", "2016-01-12", "2016-01-12", "2016-01-09", "2016-01-08",
        "2016-01-07", "2016-01-06", "2016-01-05", "2016-01-04", "2016-01-03",
    ]  # fmt: skip
    assert reasons(verdicts) == {"last": 5, "daily": 5}


# --- Properties -------------------------------------------------------------------------

BASE = datetime(2024, 1, 1, tzinfo=UTC)
PROPERTY = settings(max_examples=250, deadline=None)


@st.composite
def candidate_lists(draw: st.DrawFn) -> list[Candidate]:
    """Up to 30 points on a grid of one drawn spacing (7 minutes to 40 days), so the
    points share hours, days, weeks, months or years; equal times happen too."""
    spacing = draw(st.sampled_from([7, 50, 6 * 60, 25 * 60, 9 * 24 * 60, 40 * 24 * 60]))
    steps = draw(st.lists(st.integers(0, 120), max_size=30))
    return [
        Candidate(f"p{i:02d}", BASE + timedelta(minutes=step * spacing))
        for i, step in enumerate(steps)
    ]


counts = st.integers(0, 4)
durations = (
    st.tuples(st.integers(0, 1), st.integers(0, 3), st.integers(0, 12), st.integers(0, 30))
    .filter(any)
    .map(lambda parts: Duration(*parts))
)
policies = st.builds(
    Policy,
    last=counts, hourly=counts, daily=counts, weekly=counts, monthly=counts, yearly=counts,
    within=st.none() | durations,
)  # fmt: skip
zones = st.sampled_from(
    [UTC, ZoneInfo("Europe/Berlin"), ZoneInfo("America/St_Johns"), ZoneInfo("Australia/Lord_Howe")]
)


@PROPERTY
@given(policies)
def test_policy_text_round_trips(policy: Policy) -> None:
    assert Policy.parse(str(policy)) == policy


@PROPERTY
@given(candidate_lists(), policies, zones)
def test_every_point_gets_one_verdict_newest_first_with_reasons_iff_kept(
    cands: list[Candidate], policy: Policy, tz: tzinfo
) -> None:
    verdicts = select(cands, policy, tz)
    assert sorted(v.key for v in verdicts) == sorted(c.key for c in cands)
    time_of = dict(cands)
    assert [(time_of[v.key], v.key) for v in verdicts] == sorted(
        ((time_of[v.key], v.key) for v in verdicts), key=lambda tk: (-tk[0].timestamp(), tk[1])
    )
    assert all(bool(v.reasons) == v.keep for v in verdicts)
    if verdicts:
        assert verdicts[0].keep


@PROPERTY
@given(candidate_lists(), policies, zones)
def test_forget_twice_is_forget_once(cands: list[Candidate], policy: Policy, tz: tzinfo) -> None:
    first = [v for v in select(cands, policy, tz) if v.keep]
    kept_keys = {v.key for v in first}
    # Same points kept, and for the same reasons: a second run decides nothing new.
    assert select([c for c in cands if c.key in kept_keys], policy, tz) == first


@PROPERTY
@given(candidate_lists(), policies)
def test_a_rule_with_count_n_keeps_at_most_n_points(cands: list[Candidate], policy: Policy) -> None:
    by_rule = reasons(select(cands, policy))
    for rule in RULES:
        assert by_rule[rule] <= getattr(policy, rule)
    assert by_rule["newest"] == 0  # a non-empty policy's first rule keeps the newest itself


@PROPERTY
@given(candidate_lists(), st.integers(1, 40))
def test_keep_last_alone_keeps_exactly_the_n_newest(cands: list[Candidate], n: int) -> None:
    verdicts = select(cands, Policy(last=n))
    assert [v.keep for v in verdicts] == [i < n for i in range(len(cands))]


@PROPERTY
@given(candidate_lists(), policies, st.randoms(use_true_random=False))
def test_the_result_does_not_depend_on_input_order(
    cands: list[Candidate], policy: Policy, rng: Random
) -> None:
    shuffled = list(cands)
    rng.shuffle(shuffled)
    before = list(cands)
    assert select(shuffled, policy) == select(cands, policy)
    assert cands == before  # the input is not mutated


@PROPERTY
@given(durations)
def test_duration_text_round_trips_and_before_is_earlier(duration: Duration) -> None:
    assert Duration.parse(str(duration)) == duration
    assert duration.before(BASE) < BASE


# Clock changes that step back across midnight make a local day two separate stretches
# of time (America/St_Johns 1987-2010 at 00:01, back 1 or 2 hours; Antarctica/Casey on
# 2010-03-05, 01:59 +11 -> 23:00 +08), the one case the module doc's argument for
# idempotence does not cover. A search of 30,000 cases found no counterexample.
STEP_BACKS = [
    ("America/St_Johns", datetime(1988, 10, 30, 1, 31, tzinfo=UTC)),
    ("Antarctica/Casey", datetime(2010, 3, 4, 14, 59, tzinfo=UTC)),
]


@PROPERTY
@given(
    st.sampled_from(STEP_BACKS),
    st.lists(st.integers(-3 * 24 * 6, 9 * 24 * 6), max_size=12),
    st.builds(Policy, hourly=counts, daily=counts, weekly=counts, monthly=counts, yearly=counts),
)
def test_forget_twice_is_forget_once_where_the_clock_steps_back_over_midnight(
    case: tuple[str, datetime], steps: list[int], policy: Policy
) -> None:
    zone, transition = case
    tz = ZoneInfo(zone)
    cands = [
        Candidate(f"p{i:02d}", transition + timedelta(minutes=10 * s)) for i, s in enumerate(steps)
    ]
    first = [v for v in select(cands, policy, tz) if v.keep]
    kept_keys = {v.key for v in first}
    assert select([c for c in cands if c.key in kept_keys], policy, tz) == first
