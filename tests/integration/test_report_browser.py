"""``ckpt report`` in a real browser: headless Chromium driven by Playwright.

Chromium is the system's (Debian's ``chromium`` package; ``.ci/run`` installs
it): Playwright starts it through ``executable_path`` and downloads nothing.
The module is skipped, saying why, when the ``playwright`` package or the
browser is missing. One store (tests/report_support.py: 3 VMs, ~220 events, two
with hostile names) and one page load serve every test; a test that changes
the page (filters, hover) puts it back.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cli_support import CLI
from report_support import VMS, build

from ckpt import AuditEntry, Store

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the playwright package is not installed (pip install .[dev])"
)
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip("no chromium to drive (Debian: apt-get install chromium)", allow_module_level=True)

LOAD_LIMIT_MS = 2000  # the bound for ~200 events; measured ~150 ms here


@dataclass
class Opened:
    page: Any  # playwright.sync_api.Page
    log: list[AuditEntry]
    path: Path  # the HTML file
    tmp: Path
    console: list[tuple[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def opened(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Opened]:
    tmp = tmp_path_factory.mktemp("browser")
    store = tmp / "store"
    build(store)
    with Store.open(store) as s:
        log = s.log()
    html = tmp / "report.html"
    CLI(store).ok("verify")  # so the page shows both checks' status
    CLI(store).ok("verify", "--log")
    CLI(store).ok("report", "-o", html)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        o = Opened(page, log, html, tmp)
        page.on("console", lambda m: o.console.append((m.type, m.text)))
        page.on("pageerror", lambda e: o.errors.append(str(e)))

        def dialog(d: Any) -> None:
            o.dialogs.append(d.message)
            d.dismiss()

        page.on("dialog", dialog)
        page.goto(html.as_uri(), wait_until="load")
        yield o
        browser.close()


def visible_rows(page: Any) -> list[int]:
    """Positions of the table rows the browser renders (not hidden)."""
    return page.evaluate(  # type: ignore[no-any-return]
        "Array.from(document.querySelectorAll('table.log tbody tr'))"
        ".filter(r => r.offsetParent !== null).map(r => Number(r.id.slice(1)))"
    )


def iso(e: AuditEntry) -> str:
    return e.time.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_loads_quickly_without_errors_or_dialogs(opened: Opened) -> None:
    ms = opened.page.evaluate(
        "(() => { const n = performance.getEntriesByType('navigation')[0];"
        " return n.loadEventEnd - n.startTime; })()"
    )
    print(f"\nreport of {len(opened.log)} events: loaded in {ms:.0f} ms")
    assert 0 < ms < LOAD_LIMIT_MS
    assert [m for m in opened.console if m[0] in ("error", "warning")] == []
    assert opened.errors == [] and opened.dialogs == []
    for check in ("#verify-chunks", "#verify-log"):
        assert "ok" in opened.page.text_content(check).split()
    # the CSP let the inline script run: it filled the count
    assert (
        opened.page.text_content("#shown") == f"{len(opened.log)} of {len(opened.log)} events shown"
    )


def test_one_mark_per_event_per_vm(opened: Opened) -> None:
    counts = opened.page.evaluate(
        "Object.fromEntries(Array.from(document.querySelectorAll('svg.timeline'))"
        ".map(s => [s.dataset.vm, s.querySelectorAll('.mark').length]))"
    )
    assert counts == {vm: sum(e.vm == vm for e in opened.log) for vm in VMS}
    assert sum(counts.values()) == len(opened.log) > 150


def test_filters_show_exactly_the_matching_rows(opened: Opened) -> None:
    page, log = opened.page, opened.log
    every = [e.position for e in log]
    assert visible_rows(page) == every
    page.select_option("#f-actor", "bob")
    assert visible_rows(page) == [e.position for e in log if e.actor == "bob"] != []
    page.select_option("#f-op", "checkpoint-deleted")
    both = [e.position for e in log if e.actor == "bob" and e.operation == "checkpoint-deleted"]
    assert visible_rows(page) == both != []
    page.select_option("#f-actor", "")
    deleted = [e.position for e in log if e.operation == "checkpoint-deleted"]
    assert visible_rows(page) == deleted and len(deleted) > len(both)
    assert page.text_content("#shown") == f"{len(deleted)} of {len(log)} events shown"
    page.select_option("#f-op", "")
    page.select_option("#f-vm", VMS[1])  # a hostile name, as an option value
    assert visible_rows(page) == [e.position for e in log if e.vm == VMS[1]]
    page.select_option("#f-vm", "")
    # time: from the middle event's second on, then up to it (prefixes, inclusive)
    middle = iso(log[len(log) // 2])
    page.fill("#f-from", middle)
    assert visible_rows(page) == [e.position for e in log if iso(e) >= middle]
    page.fill("#f-from", "")
    page.fill("#f-to", middle)
    assert visible_rows(page) == [e.position for e in log if iso(e) <= middle]
    # a shorter "to" is a prefix: up to the end of that minute, of that day
    minute = middle[:16]
    page.fill("#f-to", minute)
    assert visible_rows(page) == [e.position for e in log if iso(e)[:16] <= minute] != []
    page.fill("#f-to", iso(log[-1])[:10])
    assert visible_rows(page) == every
    page.fill("#f-to", "2000-01")
    assert visible_rows(page) == []
    page.fill("#f-to", "")
    assert visible_rows(page) == every


def test_hovering_a_mark_shows_its_title(opened: Opened) -> None:
    page = opened.page
    deleted = next(e for e in opened.log if e.operation == "checkpoint-deleted")
    mark = page.locator(f'.mark[data-position="{deleted.position}"]')
    assert mark.count() == 1
    title = mark.locator("title").text_content()
    assert title.startswith("checkpoint-deleted") and f"by {deleted.actor} on" in title
    mark.hover()
    tip = page.locator("#tip")
    assert tip.is_visible() and tip.text_content() == title
    page.mouse.move(0, 0)
    assert not tip.is_visible()
    # and a mark links to its row
    assert mark.get_attribute("href") == f"#p{deleted.position}"


def test_full_page_screenshot(opened: Opened) -> None:
    shot = opened.tmp / "report.png"
    opened.page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"\nscreenshot: {shot}")
