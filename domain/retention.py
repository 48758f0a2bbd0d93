"""Retention policies: which backup points a keep-policy keeps, and why.

Terms:

- *candidate*: a point that a policy may purge (a backup point, or the content of
  a deleted checkpoint), given as an opaque ``key`` and an aware ``time``.
- *rule*: ``last``, ``within``, ``hourly``, ``daily``, ``weekly``, ``monthly``,
  ``yearly``, each with a count (``within``: a ``Duration``); a *policy* is a set
  of rules, stored as text such as ``"daily=7,weekly=4,within=2d"``.
- *period*: the calendar hour, day, ISO week (Monday to Sunday, ISO week-year),
  month or year of a point's time, read on the wall clock of ``tz`` (UTC unless
  ``--timezone``), so a "day" is the user's day, as PBS reads it in local time.
- *covered*: a period is covered when a point an earlier rule kept falls in it.

The convention is Proxmox Backup Server's (``pbs-datastore/src/prune.rs``,
docs/maintenance.rst "Pruning"), because it makes counts additive and each kept
point is kept by exactly one rule, which is what a ``--dry-run`` must explain:

1. Points are sorted newest first (equal times by key, so the result never
   depends on input order).
2. Rules run in the order last, within, hourly, daily, weekly, monthly, yearly.
3. ``last N`` keeps the N newest points.
4. ``within D`` keeps every point after ``D.before(newest time)``: relative to
   the newest point, not to a clock, so the result never depends on when it
   runs (restic's ``--keep-within``; PBS has none). It sits right after ``last``
   because both describe "the recent past, all of it"; the period rules then
   thin out what is older, as they do after ``last`` in PBS.
5. A period rule with count N walks the points no earlier rule *decided*; it
   skips a point whose period is covered, keeps the newest point of each new
   period until it has N periods, and marks the older points of a period it has
   taken as purged, so no later rule considers them (PBS's ``Remove`` mark: a
   point that lost to a newer one of its own week is not revived by ``monthly``
   when the week straddles a month end). Periods without a point do not count.
6. The newest point is always kept (reason ``newest`` if no rule kept it); an
   empty policy keeps everything (reason ``no policy``), as PBS and restic
   refuse to prune on a policy that keeps nothing.

Unlike restic, rules are not independent: ``last=5,daily=5`` keeps the 5 newest
points *and* 5 more days, where restic keeps the union of two overlapping sets.
Selecting again on only the kept points keeps all of them, for the same reasons
(forget twice = forget once): a rule takes the same periods again, the points it
marked purged are gone, and a point after its stop cannot share a period it took
as long as periods are contiguous in time. That holds in UTC and wherever clock
changes do not step back over midnight; where they do (America/St_Johns until
2010), a search of 30,000 cases around such changes found no counterexample.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta, tzinfo
from typing import NamedTuple

from .errors import InvalidValue

RULES = ("last", "hourly", "daily", "weekly", "monthly", "yearly")
"""The counted rules in PBS's order; ``within`` runs right after ``last``."""

_DURATION = re.compile(r"(?:(\d+)y)?(?:(\d+)m)?(?:(\d+)d)?(?:(\d+)h)?")
_COUNT = re.compile(r"[0-9]+")
# Policy text order (PBS's, with within after last); parse/str round-trip on it.
_TEXT_ORDER = ("last", "within", "hourly", "daily", "weekly", "monthly", "yearly")


@dataclass(frozen=True)
class Duration:
    """A span of calendar time in restic's ``--keep-within`` syntax: ``1y5m7d2h``."""

    years: int = 0
    months: int = 0
    days: int = 0
    hours: int = 0

    def __post_init__(self) -> None:
        parts = [getattr(self, f.name) for f in fields(self)]
        if any(type(p) is not int or p < 0 for p in parts):
            raise InvalidValue(f"duration parts must be whole numbers >= 0, not {self!r}")
        if not any(parts):
            raise InvalidValue("a duration must not be zero (e.g. 2d, 1y6m, 12h)")

    @classmethod
    def parse(cls, text: str) -> Duration:
        """Parse ``[Ny][Nm][Nd][Nh]``, parts in that order, each at most once."""
        match = _DURATION.fullmatch(text.strip())
        if match is None or not text.strip():
            raise InvalidValue(
                f"duration {text!r}: expected years, months, days, hours as e.g. 1y5m7d2h"
            )
        y, m, d, h = (int(g) if g is not None else 0 for g in match.groups())
        if not (y or m or d or h):
            raise InvalidValue(f"duration {text!r}: must not be zero")
        return cls(years=y, months=m, days=d, hours=h)

    def __str__(self) -> str:
        units = zip((self.years, self.months, self.days, self.hours), "ymdh", strict=True)
        return "".join(f"{n}{unit}" for n, unit in units if n)

    def before(self, t: datetime) -> datetime:
        """``t`` minus this duration, as restic's ``AddDate(-y, -m, -d).Add(-h)``.

        Years, months and days move the wall clock of ``t`` (a month back from
        Mar 31 is Feb 28/29: the day is clamped to the month's end, where Go
        would roll over to Mar 3); hours are absolute time. Far in the past the
        result stops at the earliest datetime, which keeps everything.
        """
        try:
            month_index = t.year * 12 + (t.month - 1) - self.years * 12 - self.months
            year, month = divmod(month_index, 12)
            month += 1
            day = min(t.day, _days_in_month(year, month))
            moved = t.replace(year=year, month=month, day=day) - timedelta(days=self.days)
            # Hours in absolute time: through UTC, so a DST change counts as it passed.
            return (moved.astimezone(UTC) - timedelta(hours=self.hours)).astimezone(t.tzinfo)
        except (ValueError, OverflowError):
            return datetime.min.replace(tzinfo=UTC)


def _days_in_month(year: int, month: int) -> int:
    if month == 12:
        return 31
    return (datetime(year, month + 1, 1) - datetime(year, month, 1)).days


@dataclass(frozen=True)
class Policy:
    """What to keep: counts per rule (0 = rule unused) and an optional window."""

    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: Duration | None = None

    def __post_init__(self) -> None:
        for name in RULES:
            count = getattr(self, name)
            if type(count) is not int or count < 0:
                raise InvalidValue(f"keep-{name}: must be a whole number >= 0, not {count!r}")
        if self.within is not None and not isinstance(self.within, Duration):
            raise InvalidValue(f"keep-within: must be a Duration, not {self.within!r}")

    @classmethod
    def parse(cls, text: str) -> Policy:
        """Parse ``"daily=7,weekly=4,within=2d"`` (or ``keep-daily=7``); ``""``/``none``: empty."""
        if text.strip().lower() in ("", "none"):
            return cls()
        values: dict[str, int | Duration] = {}
        for raw in text.split(","):
            item = raw.strip()
            name, sep, value = (part.strip() for part in item.partition("="))
            name = name.removeprefix("keep-")
            if not sep or name not in _TEXT_ORDER:
                raise InvalidValue(
                    f"retention policy {text!r}: item {item!r} is not NAME=VALUE with NAME one of "
                    + ", ".join(_TEXT_ORDER)
                )
            if name in values:
                raise InvalidValue(f"retention policy {text!r}: {name!r} is given twice")
            if name == "within":
                try:
                    values[name] = Duration.parse(value)
                except InvalidValue as e:
                    raise InvalidValue(f"retention policy {text!r}: item {item!r}: {e}") from None
            elif _COUNT.fullmatch(value):
                values[name] = int(value)
            else:
                raise InvalidValue(
                    f"retention policy {text!r}: item {item!r}: count must be a whole number >= 0"
                )
        return cls(**values)  # type: ignore[arg-type]  # names and types checked above

    def __str__(self) -> str:
        items = [
            f"{name}={value}"
            for name in _TEXT_ORDER
            if (value := getattr(self, name)) not in (0, None)
        ]
        return ",".join(items) if items else "none"

    @property
    def empty(self) -> bool:
        """True when no rule is set: such a policy keeps everything."""
        return self.within is None and not any(getattr(self, name) for name in RULES)


class Candidate(NamedTuple):
    """A point a policy may purge: an opaque unique key and an aware time."""

    key: str
    time: datetime


class Verdict(NamedTuple):
    """Keep or purge one candidate; ``reasons`` say which rule kept it (empty: purged)."""

    key: str
    keep: bool
    reasons: tuple[str, ...]


def _hour(t: datetime) -> str:
    return f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}"


def _day(t: datetime) -> str:
    return f"{t.year:04d}-{t.month:02d}-{t.day:02d}"


def _week(t: datetime) -> str:
    # ISO week-year: Dec 29-31 can be week 1 of the next year, Jan 1-3 week 52/53.
    iso = t.isocalendar()
    return f"{iso.year:04d}-W{iso.week:02d}"


def _month(t: datetime) -> str:
    return f"{t.year:04d}-{t.month:02d}"


def _year(t: datetime) -> str:
    return f"{t.year:04d}"


_PERIODS: tuple[tuple[str, Callable[[datetime], str]], ...] = (
    ("hourly", _hour),
    ("daily", _day),
    ("weekly", _week),
    ("monthly", _month),
    ("yearly", _year),
)


def select(candidates: Sequence[Candidate], policy: Policy, tz: tzinfo = UTC) -> list[Verdict]:
    """One verdict per candidate, newest first (equal times by key); see the module doc."""
    for c in candidates:
        if c.time.tzinfo is None or c.time.utcoffset() is None:
            raise InvalidValue(f"point {c.key!r}: time {c.time.isoformat()} has no timezone")
    keys = [c.key for c in candidates]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise InvalidValue(f"point {dup!r} is given twice")
    # Stable sorts: by key, then newest first, so equal times stay in key order.
    order = sorted(sorted(candidates, key=lambda c: c.key), key=lambda c: c.time, reverse=True)
    if policy.empty:
        return [Verdict(c.key, True, ("no policy",)) for c in order]

    local = [c.time.astimezone(tz) for c in order]
    # decided[i]: None = undecided, a reason = kept, "" = purged by a period rule.
    decided: list[str | None] = [None] * len(order)

    for i in range(min(policy.last, len(order))):
        decided[i] = f"last {i + 1}/{policy.last}"

    if policy.within is not None and order:
        cutoff = policy.within.before(local[0])
        for i, t in enumerate(local):
            if decided[i] is None and t > cutoff:
                decided[i] = f"within {policy.within}"

    for rule, period_of in _PERIODS:
        count: int = getattr(policy, rule)
        if count:
            _keep_periods(rule, count, [period_of(t) for t in local], decided)

    if order and not decided[0]:
        decided[0] = "newest"
    return [Verdict(c.key, bool(d), (d,) if d else ()) for c, d in zip(order, decided, strict=True)]


def _keep_periods(rule: str, count: int, periods: list[str], decided: list[str | None]) -> None:
    """One period rule, as PBS's ``mark_selections``: see step 5 of the module doc."""
    covered = {p for p, d in zip(periods, decided, strict=True) if d}
    taken: set[str] = set()
    for i, period in enumerate(periods):
        if decided[i] is not None or period in covered:
            continue
        if period in taken:
            decided[i] = ""  # an older point of a period this rule took: purged for good
            continue
        if len(taken) >= count:
            break
        taken.add(period)
        decided[i] = f"{rule} {period} {len(taken)}/{count}"
