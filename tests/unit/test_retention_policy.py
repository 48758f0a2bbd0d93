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
from datetime import UTC, datetime, timedelta
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
    with pytest.raises(InvalidValue, match="'p1'.*no timezone"):
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
