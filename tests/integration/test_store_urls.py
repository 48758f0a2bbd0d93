"""Stores on URLs: init writes the backends into the directory's marker, later
commands use them, a second directory attaches, and no secret is ever printed."""

from __future__ import annotations

import io
import json
import os
import stat
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from backends import PG_VAR, fresh_name, postgres_url, s3_url, server_url

from ckpt import DiskFormat, InvalidValue, Store, StoreNotFound, WrongKey
from ckpt.cli import run


def _cli(*args: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run(["--actor", "t", *args], out, err)
    return code, out.getvalue() + err.getvalue()


def _secrets(events: str) -> list[str]:
    found = [urlsplit(events).password or "", os.environ.get("AWS_SECRET_ACCESS_KEY", "")]
    assert all(len(s) >= 8 for s in found)  # real secrets, so the greps below can fail
    return found


def test_init_with_urls_writes_the_marker_and_every_command_uses_it(tmp_path: Path) -> None:
    events, chunks = postgres_url(), s3_url()
    store = str(tmp_path / "s")
    code, text = _cli("--store", store, "init", "--events", events, "--chunks", chunks)
    assert code == 0 and "initialised an empty ckpt store" in text
    marker = tmp_path / "s" / "ckpt-store.json"
    assert stat.S_IMODE(marker.stat().st_mode) == 0o600  # it holds the password
    meta = json.loads(marker.read_text())
    assert meta["events"] == events and meta["chunks"] == chunks
    assert not (tmp_path / "s" / "events.sqlite").exists()

    image = tmp_path / "d.img"
    image.write_bytes(os.urandom(49_152) + bytes(49_152))
    outputs = []
    for args in (
        ("vm", "add", "web", "--disk", "D", "--json"),
        ("checkpoint", "create", "web", "one", "--disk", f"D={image}", "--json"),
        ("checkpoint", "create", "web", "two"),
        ("tree", "web", "--json"),
        ("log", "--json"),
        ("log",),
        ("stats", "--json"),
        ("verify", "--json"),
        ("verify", "--log"),
        ("gc", "--grace", "0", "--json"),
        ("restore", "web", "one", "--disk", "D", "-o", str(tmp_path / "r.img")),
        ("projections", "rebuild", "--json"),
        ("info", "--json"),
    ):
        code, text = _cli("--store", store, *args)
        assert code == 0, f"{args}: {text}"
        outputs.append(text)
    assert (tmp_path / "r.img").read_bytes() == image.read_bytes()
    info = json.loads(outputs[-1])
    assert info["events_backend"] == "postgresql" and info["chunks_backend"] == "s3"
    assert ":***@" in info["events"] and info["chunks"] == chunks and info["position"] == 4
    # The same store by URL alone, and from a second directory (another host).
    code, text = _cli("--events", events, "--chunks", chunks, "tree", "web", "--json")
    assert code == 0 and [e["name"] for e in json.loads(text)] == ["one", "two"]
    code, text = _cli("--store", str(tmp_path / "h2"), "init", "--events", events,
                      "--chunks", chunks)  # fmt: skip
    assert code == 0 and "attached to the ckpt store" in text
    code, text = _cli("--store", str(tmp_path / "h2"), "log", "--json")
    assert code == 0 and len(json.loads(text)) == 4
    outputs.append(text)
    for secret in _secrets(events):
        for text in outputs:
            assert secret not in text


def test_errors_name_the_backend_but_never_a_secret(tmp_path: Path) -> None:
    events, chunks = postgres_url(), s3_url()
    password = urlsplit(events).password or ""
    seen: list[str] = []

    def cli(*args: str) -> tuple[int, str]:
        code, text = _cli(*args)
        seen.append(text)
        return code, text

    with Store.init(tmp_path / "s", events=events, chunks=chunks):
        pass
    wrong = events.replace(f":{password}@", ":not-the-password-7f3a@")
    code, text = cli("--events", wrong, "--chunks", chunks, "log")
    assert code == 34 and "password authentication failed" in text
    assert "not-the-password-7f3a" not in text and "***" in text
    refused = f"postgresql://ckpt:{password}@127.0.0.1:1/ckpt_test"  # nothing listens on 1
    code, text = cli("--events", refused, "--chunks", chunks, "log")
    assert code == 34 and password not in text
    code, text = cli("--events", events, "--chunks", s3_url(), "log")  # no store there
    assert code == 20 and "init" in text and password not in text
    code, text = cli("--events", events, "log")
    assert code == 14 and "--chunks" in text
    code, text = cli("--store", str(tmp_path / "s"), "--events", events, "log")
    assert code == 14 and "not both" in text and password not in text
    code, text = cli("--events", "mysql://u:p@h/db", "--chunks", chunks, "log")
    assert code == 14 and "postgresql://" in text
    code, text = cli("--events", events, "--chunks", chunks + "&colour=blue", "log")
    assert code == 14 and "colour" in text
    for secret in _secrets(events):
        for text in seen:
            assert secret not in text


def test_an_encrypted_store_on_urls_checks_its_key_from_any_host(tmp_path: Path) -> None:
    events, chunks = postgres_url(), s3_url()
    key = bytes(range(32))
    with Store.init(tmp_path / "a", encrypt=True, events=events, chunks=chunks, key=key) as s:
        s.register_vm("secret-vm")
    with Store.open(None, events=events, chunks=chunks, key=key) as s:
        assert [vm.name for vm in s.vms()] == ["secret-vm"]
    with pytest.raises(WrongKey):
        Store.open(None, events=events, chunks=chunks, key=bytes(32))
    with pytest.raises(WrongKey):
        Store.init(tmp_path / "b", encrypt=True, events=events, chunks=chunks, key=bytes(32))
    with pytest.raises(StoreNotFound):
        Store.open(None, events=postgres_url(), chunks=s3_url())


def test_a_mistyped_schema_is_no_store_and_never_an_empty_one(tmp_path: Path) -> None:
    events, chunks = postgres_url(), s3_url()
    image = tmp_path / "d.img"
    image.write_bytes(os.urandom(16_384))
    with Store.init(tmp_path / "s", events=events, chunks=chunks) as store:
        store.register_vm("web", [("D", DiskFormat.VHDX)])
        store.create_checkpoint("web", "one", disks={"D": image})
    typo = events.rsplit("=", 1)[0] + "=nosuchschema" + fresh_name("x")
    code, text = _cli("--events", typo, "--chunks", chunks, "gc", "--grace", "0")
    assert code == 20 and "no ckpt event tables" in text
    other = postgres_url()  # another store's event log beside these chunks
    with Store.init(tmp_path / "other", events=other, chunks=s3_url()):
        pass
    code, text = _cli("--events", other, "--chunks", chunks, "gc", "--grace", "0")
    assert code == 35 and "belongs to store" in text
    code, text = _cli("--store", str(tmp_path / "s2"), "init", "--events", postgres_url(),
                      "--chunks", chunks)  # fmt: skip
    assert code == 35 and "holds no store" in text
    with Store.open(tmp_path / "s") as store:  # nothing was collected
        assert store.verify().ok
        out = io.BytesIO()
        store.restore_disk("web", "one", "D", out)
        assert out.getvalue() == image.read_bytes()


def test_attaching_follows_the_stores_encryption(tmp_path: Path) -> None:
    events, chunks = postgres_url(), s3_url()
    Store.init(tmp_path / "plain", events=events, chunks=chunks).close()
    with pytest.raises(InvalidValue, match="not encrypted"):
        Store.init(tmp_path / "b", encrypt=True, events=events, chunks=chunks, key=bytes(32))
    sealed_events, sealed_chunks = postgres_url(), s3_url()
    key = bytes(range(32))
    Store.init(tmp_path / "sealed", True, sealed_events, sealed_chunks, key=key).close()
    with pytest.raises(WrongKey):
        Store.init(tmp_path / "c", events=sealed_events, chunks=sealed_chunks)
    with Store.init(tmp_path / "d", True, sealed_events, sealed_chunks, key=key) as s:
        assert s.attached and s.keyring is not None


def test_passwords_with_any_characters_stay_secret(tmp_path: Path) -> None:
    import psycopg

    admin = urlsplit(server_url(PG_VAR))
    role, password = fresh_name("r"), "Pw/with?odd#chars@" + fresh_name("")
    with psycopg.connect(
        host=admin.hostname, port=admin.port, user=admin.username, password=admin.password,
        dbname="ckpt_test", autocommit=True,
    ) as conn:  # fmt: skip
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        conn.execute(f"GRANT CREATE ON DATABASE ckpt_test TO {role}")
    base = f"postgresql://{role}:{password}@{admin.hostname}:{admin.port}/ckpt_test"
    events, chunks = f"{base}?schema={fresh_name('s')}", s3_url()
    outputs = [_cli("--store", str(tmp_path / "s"), "init", "--events", events,
                    "--chunks", chunks)]  # fmt: skip
    assert outputs[0][0] == 0, outputs[0][1]
    outputs.append(_cli("--store", str(tmp_path / "s"), "info", "--json"))
    outputs.append(_cli("--events", f"{base}?schema=nothere", "--chunks", chunks, "log"))
    outputs.append(_cli("--events", f"{base}x", "--chunks", chunks, "log"))  # no such database
    outputs.append(_cli("--events", base.replace("/ckpt_test", ":99x/db"), "--chunks", chunks,
                        "log"))  # fmt: skip
    outputs.append(_cli("--events", f"postgresql://u@h/db?password={password}",
                        "--chunks", chunks, "log"))  # fmt: skip
    assert [code for code, _ in outputs] == [0, 0, 20, 34, 14, 14], outputs
    for _, text in outputs:
        assert password not in text and "odd#chars" not in text, text


def test_hosts_initialising_the_same_new_store_at_once_end_up_on_one_store(
    tmp_path: Path,
) -> None:
    import subprocess
    import sys

    events, chunks = postgres_url(), s3_url()
    ckpt_cli = Path(sys.executable).with_name("ckpt")
    args = ["init", "--events", events, "--chunks", chunks]
    procs = [
        subprocess.Popen(
            [str(ckpt_cli), "--store", str(tmp_path / f"h{i}"), *args],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(6)
    ]
    results = [(p.wait(timeout=120), p.communicate()) for p in procs]
    assert all(code == 0 for code, _ in results), results
    ids = {json.loads((tmp_path / f"h{i}" / "ckpt-store.json").read_text()).get("store_id")
           for i in range(6)}  # fmt: skip
    assert len(ids) == 1 and None not in ids
    with Store.open(tmp_path / "h0") as a:
        a.register_vm("shared")
    with Store.open(tmp_path / "h5") as b:
        assert [vm.name for vm in b.vms()] == ["shared"]
