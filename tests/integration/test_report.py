"""``ckpt report`` without a browser: the page as HTML text, parsed with html.parser.

Terms: the *page* is the report file; a *mark* is an SVG element of class
``mark`` in a VM's timeline (``svg.timeline``, ``data-vm`` its name); a *row*
is a ``<tr id="p<position>">`` of the audit table. The varied store is built
once per module (tests/report_support.py, ~220 events, ~2 s) and only read;
the tests that verify or remove use small stores of their own.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import io
import json
import os
import sqlite3
import stat
import threading
from collections import Counter
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
from cli_support import CLI
from conftest import Backends
from report_support import HOSTILE, VMS, build

from ckpt import (
    DiskFormat,
    InvalidValue,
    OutputFailed,
    ReportSummary,
    Store,
    StoreCorrupt,
    UnknownVM,
)
from ckpt.exit_codes import TABLE
from ckpt.report import render as report_render

CODE = dict(TABLE)


class Page(HTMLParser):
    """Tags with their attributes, each timeline's marks, the table rows, the text."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.marks: dict[str, list[int]] = {}  # VM name -> positions of its marks
        self.rows: list[int] = []
        self.text: list[str] = []
        self.scripts: list[str] = []
        self.styles: list[str] = []
        self._vm: str | None = None
        self._in: str | None = None
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.append((tag, a))
        classes = a.get("class", "").split()
        if tag == "svg" and "timeline" in classes:
            self._vm = a["data-vm"]
            self.marks[self._vm] = []
        elif "mark" in classes:
            assert self._vm is not None, "a mark outside a timeline"
            self.marks[self._vm].append(int(a["data-position"]))
        elif tag == "tr" and a.get("id", "").startswith("p"):
            self.rows.append(int(a["id"][1:]))
        if tag in ("script", "style"):
            self._in = tag

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self._vm = None
        if tag in ("script", "style"):
            self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "script":
            self.scripts.append(data)
        elif self._in == "style":
            self.styles.append(data)
        else:
            self.text.append(data)

    def attr(self, tag: str, name: str) -> list[str]:
        return [a[name] for t, a in self.tags if t == tag and name in a]


@pytest.fixture(scope="module")
def varied(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("report") / "store"
    build(path)
    return path


def page_of(store: Path, *args: str, tmp: Path) -> tuple[Page, str, dict[str, object]]:
    out = tmp / "report.html"
    summary = CLI(store).json("report", *args, "-o", out)
    html = out.read_text()
    return Page(html), html, summary


def sha(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


def test_the_page_loads_nothing_from_anywhere_and_forbids_it(varied: Path, tmp_path: Path) -> None:
    page = page_of(varied, tmp=tmp_path)[0]
    values = [v for _, a in page.tags for v in a.values()]
    csp = page.attr("meta", "content")[0]
    assert page.attr("meta", "http-equiv") == ["Content-Security-Policy"]
    assert not [v for v in values if v != csp and ("http:" in v or "https:" in v or "//" in v)]
    assert page.attr("script", "src") == [] and page.attr("link", "href") == []
    assert not [t for t, _ in page.tags if t in ("img", "iframe", "object", "embed", "link")]
    assert all(h.startswith("#") for h in page.attr("a", "href"))
    # The policy allows exactly the one inline style sheet and the one inline script.
    (script,), (style,) = page.scripts, page.styles
    assert csp.startswith("default-src 'none';")
    assert f"script-src '{sha(script)}'" in csp and f"style-src '{sha(style)}'" in csp
    assert "unsafe-inline" not in csp
    # and no event-handler attribute anywhere (a store name cannot bring one in)
    assert not [k for _, a in page.tags for k in a if k.startswith("on")]


def test_hostile_names_are_text(varied: Path, tmp_path: Path) -> None:
    page, html, summary = page_of(varied, tmp=tmp_path)
    text = "".join(page.text)
    for name in HOSTILE:
        assert name in text  # shown, as text
        assert name not in html  # never raw markup
    assert len(page.scripts) == 1 and [t for t, _ in page.tags].count("script") == 1
    assert sorted(summary["vms"]) == sorted(VMS)  # type: ignore[arg-type]
    # the VM filter offers the names as values, escaped in the attribute
    assert set(page.attr("option", "value")) >= set(VMS)


def test_one_mark_per_audit_event_per_vm_each_linking_to_its_row(
    varied: Path, tmp_path: Path
) -> None:
    page, html, summary = page_of(varied, tmp=tmp_path)
    with Store.open(varied) as s:
        log = s.log()
        ops = Counter(e.operation for e in log)
        assert set(page.marks) == set(VMS)
        for vm in VMS:
            assert page.marks[vm] == [e.position for e in s.log(vm)], vm
    # the store has every kind of event the timeline draws
    for op in ("checkpoint-created", "checkpoint-applied", "checkpoint-renamed",
               "checkpoint-deleted", "backup-point-recorded", "content-purged",
               "content-reclaimed", "vm-registered"):  # fmt: skip
        assert ops[op] > 0, op
    assert sum(len(m) for m in page.marks.values()) == len(log) == summary["events"]
    assert page.rows == [e.position for e in log]
    assert {f"#p{p}" for p in page.rows} <= set(page.attr("a", "href"))
    # each row carries its hash link in full (title) and abbreviated
    for e in log[:5] + log[-5:]:
        assert e.link is not None and f'title="{e.link.hex()}">{e.link.hex()[:12]}<' in html
    # a deletion that merged layers is drawn as such, with the merge in its tooltip
    assert 'class="mark k-merge"' in html and "merged D_" in html
    assert summary["bytes"] == (tmp_path / "report.html").stat().st_size


def test_at_renders_the_log_as_it_stood(varied: Path, tmp_path: Path) -> None:
    with Store.open(varied) as s:
        log = s.log()
    cut = log[len(log) // 3]
    page, html, summary = page_of(varied, "--at", str(cut.position), tmp=tmp_path)
    assert page.rows == [e.position for e in log if e.position <= cut.position]
    assert summary["events"] == len(page.rows) < len(log)
    for vm in VMS:
        assert page.marks[vm] == [
            e.position for e in log if e.vm == vm and e.position <= cut.position
        ]
    assert "backup 4" not in html  # a point created after the cut (the last round)
    assert f"--at {cut.position}" in html
    # the same moment given as a time (the last position at or before it)
    timed = page_of(varied, "--at", log[-1].time.isoformat(), tmp=tmp_path)[0]
    assert timed.rows[-1] == log[-1].position


def small(path: Path) -> Store:
    s = Store.init(path, actor="alice")
    s.register_vm("db", [("D", DiskFormat.VHDX)])
    s.create_checkpoint("db", "one", disks={"D": io.BytesIO(b"x" * 8192)})
    return s


def test_verification_status_appears_after_verify_and_verify_log(tmp_path: Path) -> None:
    path = tmp_path / "s"
    small(path).close()
    cli = CLI(path)
    html = page_of(path, tmp=tmp_path)[1]
    assert html.count("never verified") == 2
    cli.ok("verify")
    html = page_of(path, tmp=tmp_path)[1]
    chunks_row = html.split('id="verify-chunks"')[1].split("</tr>")[0]
    assert ">ok<" in chunks_row and html.count("never verified") == 1
    anchor = cli.json("verify", "--log")["anchor"]  # "POSITION:LINK"
    html = page_of(path, tmp=tmp_path)[1]
    log_row = html.split('id="verify-log"')[1].split("</tr>")[0]
    assert "never verified" not in html and anchor in log_row and ">ok<" in log_row
    # not a read model: a rebuild keeps it; the API records as the CLI does
    cli.ok("projections", "rebuild")
    assert anchor in page_of(path, tmp=tmp_path)[1]
    with Store.open(path) as s:
        s.create_checkpoint("db", "two", disks={"D": io.BytesIO(b"y" * 8192)})
        s.verify_log()
        out = io.StringIO()
        s.report(out)
    assert anchor not in out.getvalue()  # the newer run replaced it


def test_a_damaged_log_is_reported_bad(tmp_path: Path) -> None:
    path = tmp_path / "s"
    small(path).close()
    with sqlite3.connect(path / "events.sqlite") as db:
        db.execute("UPDATE ckpt_links SET link = zeroblob(32) WHERE position = 2")
    CLI(path).fails(CODE[StoreCorrupt], "verify", "--log", report=True)
    html = page_of(path, tmp=tmp_path)[1]
    log_row = html.split('id="verify-log"')[1].split("</tr>")[0]
    assert "1 bad" in log_row


def test_a_removed_vm_keeps_its_history_in_the_report(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with small(path) as s:
        s.register_vm("old", [("D", DiskFormat.VHDX)])
        s.remove_vm("old")
    page, html, summary = page_of(path, tmp=tmp_path)
    assert summary["vms"] == ["db", "old"] and page.marks["old"] != []
    assert "(removed)" in html
    only = page_of(path, "old", tmp=tmp_path)
    assert only[2]["vms"] == ["old"] and set(only[0].marks) == {"old"}


def test_bad_input_is_named_and_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "s"
    small(path).close()
    cli = CLI(path)
    out = tmp_path / "out"
    out.mkdir()
    err = cli.fails(CODE[UnknownVM], "report", "db", "nosuch", "-o", out / "r.html")
    assert "'nosuch'" in err
    err = cli.fails(CODE[InvalidValue], "report", "-o", tmp_path / "missing" / "r.html")
    assert "no directory" in err and "missing" in err
    err = cli.fails(CODE[InvalidValue], "report", "-o", out)
    assert "is a directory" in err
    cli.fails(CODE[InvalidValue], "report", "-o", "-", "--json")
    cli.fails(CODE[InvalidValue], "report", "-o", out / "r.html", "--at", "999")
    assert os.listdir(out) == []
    if os.geteuid() != 0:  # root writes anywhere
        out.chmod(0o500)
        try:
            err = cli.fails(CODE[OutputFailed], "report", "-o", out / "r.html")
            assert "r.html" in err
        finally:
            out.chmod(0o700)
        assert os.listdir(out) == []
    with Store.open(path) as s, pytest.raises(InvalidValue, match="text stream"):
        s.report(io.BytesIO())  # type: ignore[arg-type]


def test_a_symlink_a_fifo_and_a_device_are_written_through_not_replaced(tmp_path: Path) -> None:
    """As ``restore -o``: the page was renamed over whatever -o named, so a
    symlink became a file, a FIFO's reader got nothing, and (as root) /dev/null
    became a regular file holding the page."""
    path = tmp_path / "s"
    small(path).close()
    cli = CLI(path)
    page = cli.ok("report", "-o", "-")
    link, target = tmp_path / "latest.html", tmp_path / "reports" / "r.html"
    target.parent.mkdir()
    link.symlink_to(target)
    cli.ok("report", "-o", link)
    assert link.is_symlink() and target.read_text() == page
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()))
    reader.start()
    cli.ok("report", "-o", fifo)
    reader.join(timeout=30)
    assert got == [page] and stat.S_ISFIFO(fifo.lstat().st_mode)
    assert "bytes" in cli.ok("report", "-o", os.devnull)
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)
    assert not list(tmp_path.glob("**/*.ckpt-partial"))


def test_stdout_and_the_api_give_the_same_page(tmp_path: Path) -> None:
    path = tmp_path / "s"
    small(path).close()
    text = CLI(path).ok("report", "-o", "-")
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    with Store.open(path) as s:
        out = io.StringIO()
        summary = s.report(out, ["db"])
    assert isinstance(summary, ReportSummary)
    assert (summary.vms, summary.events) == (["db"], 3)
    assert summary.bytes == len(out.getvalue().encode())
    written = CLI(path).json("report", "-o", tmp_path / "r.html")
    assert set(written) == {"output", "vms", "events", "bytes"}
    assert json.dumps(written["vms"]) == '["db"]' and os.listdir(tmp_path).count("r.html") == 1


def test_a_replica_keeps_no_verify_record_and_its_verify_still_succeeds(tmp_path: Path) -> None:
    path, replica = tmp_path / "s", tmp_path / "replica"
    small(path).close()
    CLI(path).ok("verify", "--log")
    CLI(path).ok("replicate", "--to-store", replica)
    assert page_of(path, tmp=tmp_path)[1].count("never verified") == 1  # chunks
    CLI(replica).ok("verify")
    CLI(replica).ok("verify", "--log")
    # the primary's record is not replicated, and the replica refuses writes
    assert page_of(replica, tmp=tmp_path)[1].count("never verified") == 2


def test_the_verify_record_on_every_backend(tmp_path: Path, backends: Backends) -> None:
    with Store.init(tmp_path / "s", actor="alice", **backends()) as s:
        s.register_vm("db", [("D", DiskFormat.VHDX)])
        s.create_checkpoint("db", "one", disks={"D": io.BytesIO(b"x" * 8192)})
        out = io.StringIO()
        s.report(out)
        assert out.getvalue().count("never verified") == 2
        assert s.verify().ok
        chain = s.verify_log()
        out = io.StringIO()
        s.report(out)
    html = out.getvalue()
    assert "never verified" not in html
    assert f"{chain.last_position}:{chain.last_link.hex()}" in html


def test_a_write_failing_midway_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "s"
    small(path).close()
    out = tmp_path / "out"
    out.mkdir()
    (out / "r.html").write_text("the report before")

    def full(data: object) -> Iterator[str]:
        yield "<!DOCTYPE html>"
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(report_render, "render", full)
    err = CLI(path).fails(CODE[OutputFailed], "report", "-o", out / "r.html")
    assert "No space left on device" in err and "r.html" in err
    assert os.listdir(out) == ["r.html"] and (out / "r.html").read_text() == "the report before"
