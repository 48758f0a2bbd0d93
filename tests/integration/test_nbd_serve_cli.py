"""``ckpt serve`` end to end: a real store, the ``ckpt`` executable in a
subprocess serving it through ``Store.open_disk``, qemu-img and nbdinfo."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_support import CLI
from nbd_support import disk_bytes, make_certificates

from ckpt.domain import InvalidValue, NotFound, UnknownCheckpoint
from ckpt.exit_codes import TABLE

NEEDS = pytest.mark.skipif(
    any(__import__("shutil").which(t) is None for t in ("qemu-img", "nbdinfo")),
    reason="qemu-img or nbdinfo missing (apt qemu-utils libnbd-bin; .ci/run)",
)
CODE = dict(TABLE)
FIRST = disk_bytes(1024 * 1024, seed=1)
SECOND = disk_bytes(1024 * 1024, seed=2)


@pytest.fixture
def store(tmp_path: Path) -> CLI:
    cli = CLI(tmp_path / "store")
    cli.ok("init")
    cli.ok("vm", "add", "vm", "--disk", "D")
    (tmp_path / "one.raw").write_bytes(FIRST)
    (tmp_path / "two.raw").write_bytes(SECOND)
    cli.ok("checkpoint", "create", "vm", "one", "--disk", f"D={tmp_path / 'one.raw'}")
    cli.ok("checkpoint", "create", "vm", "two", "--disk", f"D={tmp_path / 'two.raw'}")
    return cli


class Served:
    def __init__(self, store: CLI, *args: str) -> None:
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("ckpt")), "--store", str(store.store),
             "serve", *args, "--port", "0", "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        text = ""
        for line in self.proc.stdout:
            text += line
            if line == "}\n":
                break
        assert text, self.proc.stderr.read() if self.proc.stderr else ""
        self.doc = json.loads(text)
        self.url: str = self.doc["url"]

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str]:
        self.proc.send_signal(sig)
        code = self.proc.wait(30)
        return code, self.proc.stderr.read() if self.proc.stderr else ""


@pytest.fixture
def served(store: CLI) -> Iterator[Served]:
    s = Served(store, "vm", "two")
    yield s
    if s.proc.poll() is None:
        s.proc.kill()
        s.proc.wait()


def _convert(url: str, out: Path) -> bytes:
    got = subprocess.run(["qemu-img", "convert", "-O", "raw", url, str(out)], capture_output=True)
    assert got.returncode == 0, got.stderr
    return out.read_bytes()


@NEEDS
def test_serve_prints_where_and_what_then_serves_the_point(served: Served, tmp_path: Path) -> None:
    assert served.doc["exports"] == ["vm/two/D"]
    assert served.doc["url"].startswith("nbd://127.0.0.1:") and served.doc["tls"] is False
    assert set(served.doc) == {"url", "port", "socket", "tls", "overlay", "exports"}
    assert _convert(served.url + "vm/two/D", tmp_path / "a.raw") == SECOND
    assert _convert(served.url, tmp_path / "b.raw") == SECOND  # "" is the one disk
    listed = subprocess.run(["nbdinfo", "--list", served.url], capture_output=True, text=True)
    assert 'export="vm/two/D"' in listed.stdout
    assert served.stop() == (0, "")


@NEEDS
def test_ctrl_c_stops_the_server_with_130(served: Served) -> None:
    code, err = served.stop(signal.SIGINT)
    assert (code, err) == (130, "ckpt: interrupted\n")


@NEEDS
def test_serve_all_lists_every_point_and_reaches_a_deleted_one_with_at(
    store: CLI, tmp_path: Path
) -> None:
    before = store.json("log")[-1]["position"]
    store.ok("checkpoint", "delete", "vm", "one")
    everything = Served(store, "--all")
    try:
        assert everything.doc["exports"] == ["vm/two/D", "vm/Now/D"]
    finally:
        assert everything.stop()[0] == 0
    past = Served(store, "--all", "--at", str(before))
    try:
        assert past.doc["exports"] == ["vm/one/D", "vm/two/D", "vm/Now/D"]
        assert _convert(past.url + "vm/one/D", tmp_path / "one.raw") == FIRST
    finally:
        assert past.stop()[0] == 0


def test_serve_errors_are_one_line_with_their_exit_code(store: CLI) -> None:
    err = store.fails(CODE[InvalidValue], "serve", "vm", "two", "--bind", "0.0.0.0")
    assert err == (
        "ckpt: error: NBD has no authentication: --bind 0.0.0.0 needs --tls-cert/--tls-key "
        "(or use 127.0.0.1 or --socket)\n"
    )
    store.fails(CODE[UnknownCheckpoint], "serve", "vm", "nope")
    assert "no disk 'E'" in store.fails(CODE[NotFound], "serve", "vm", "two", "--disk", "E")
    store.fails(CODE[InvalidValue], "serve", "vm")
    store.fails(CODE[InvalidValue], "serve", "--all", "vm")
    store.fails(CODE[InvalidValue], "serve", "vm", "two", "--port", "70000")
    store.fails(CODE[InvalidValue], "serve", "vm", "two", "--tls-cert", "x.pem")


@NEEDS
def test_memory_and_overlay_exports(store: CLI, tmp_path: Path) -> None:
    memory = disk_bytes(512 * 1024, seed=9)
    (tmp_path / "mem.bin").write_bytes(memory)
    store.ok("vm", "start", "vm")
    store.ok(
        "checkpoint", "create", "vm", "hot", "--type", "standard",
        "--disk", f"D={tmp_path / 'two.raw'}", "--memory", str(tmp_path / "mem.bin"),
    )  # fmt: skip
    overlay = tmp_path / "overlay"
    s = Served(store, "vm", "hot", "--overlay", str(overlay))
    try:
        assert s.doc["exports"] == ["vm/hot/D", "vm/hot/memory"]
        assert _convert(s.url + "vm/hot/memory", tmp_path / "m.raw") == memory
        write = subprocess.run(
            ["qemu-io", "-f", "raw", s.url + "vm/hot/D", "-c", "write -P 7 0 4096"],
            capture_output=True, text=True,
        )  # fmt: skip
        assert write.returncode == 0 and "wrote 4096/4096" in write.stdout, write
    finally:
        assert s.stop()[0] == 0
    assert sorted(f.name for f in overlay.iterdir()) == [
        "vm_hot_D.map", "vm_hot_D.overlay", "vm_hot_memory.map", "vm_hot_memory.overlay"
    ]  # fmt: skip
    again = Served(store, "vm", "hot", "--disk", "D")  # no overlay: the store is unchanged
    try:
        assert _convert(again.url, tmp_path / "d.raw") == SECOND
    finally:
        assert again.stop()[0] == 0


@NEEDS
def test_another_address_is_served_with_tls_only(store: CLI, tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    make_certificates(pki)
    s = Served(store, "vm", "two", "--bind", "0.0.0.0", "--tls-dir", str(pki))
    try:
        assert s.doc["tls"] is True and s.url.startswith("nbds://0.0.0.0:")
        port = s.doc["port"]
        listed = subprocess.run(
            ["nbdinfo", "--size", f"nbds://127.0.0.1:{port}/vm/two/D?tls-certificates={pki}"],
            capture_output=True, text=True,
        )  # fmt: skip
        assert listed.stdout.strip() == str(len(SECOND)), listed.stderr
    finally:
        assert s.stop()[0] == 0
