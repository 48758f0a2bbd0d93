"""The small mends of issue 12 item 7, found trying the CLI as a new user would:
a missing file is "not found" (exit 12); ``--memory`` refused says why in words a
user acts on; masking secrets leaves other text alone and still hides passwords;
``init`` creates a missing S3 bucket and every other command calls a missing
bucket by its name (exit 20).

The S3 tests have botocore's ``Stubber`` play the server; the last ones run on
the test servers (tests/backends.py) and skip without them.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from backends import fresh_name, postgres_url, s3_url
from botocore.stub import Stubber

from ckpt import InvalidValue, NotFound, Store, StoreNotFound
from ckpt.cli import run
from ckpt.domain import FileRole
from ckpt.storage.chunks import S3ChunkBackend
from ckpt.storage.locations import scrub, secrets_in


def _cli(*args: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run(["--actor", "t", *args], out, err)
    return code, out.getvalue() + err.getvalue()


@pytest.fixture
def store_dir(tmp_path: Path) -> str:
    store = str(tmp_path / "s")
    assert _cli("--store", store, "init")[0] == 0
    assert _cli("--store", store, "vm", "add", "web", "--disk", "D")[0] == 0
    return store


# --- a file that does not exist is not found -----------------------------------


@pytest.mark.parametrize(
    "command",
    [
        pytest.param("checkpoint create web c --disk D={missing}.img", id="image"),
        pytest.param("checkpoint create web c --disk D={missing}.vhdx", id="vhdx"),
        pytest.param("checkpoint create web c --config {missing}.vmcx", id="config"),
        pytest.param(
            "checkpoint create web c --disk D={image} --changed-blocks D={missing}.txt",
            id="changed-blocks",
        ),
        pytest.param("sync web --disk D={missing}.img", id="sync"),
        pytest.param("import disk web D {missing}.img", id="import-raw"),
        pytest.param("import disk web D {missing}.vhdx", id="import-vhdx"),
        pytest.param("import hyperv {missing}", id="import-hyperv"),
    ],
)
def test_a_file_that_does_not_exist_is_not_found(
    store_dir: str, tmp_path: Path, command: str
) -> None:
    image = tmp_path / "d.img"
    image.write_bytes(bytes(4096))
    missing = str(tmp_path / "no-such")
    args = command.format(missing=missing, image=image).split()
    code, text = _cli("--store", store_dir, *args)
    assert code == 12, text
    assert "No such file or directory" in text and "no-such" in text
    code, text = _cli("--store", store_dir, "info", "--json")
    assert json.loads(text)["position"] == 1  # the VM's registration only: nothing recorded


def test_a_missing_image_raises_not_found_in_the_api_and_a_directory_stays_invalid(
    tmp_path: Path,
) -> None:
    with Store.init(tmp_path / "s") as store:
        store.register_vm("web")
        with pytest.raises(NotFound, match="No such file"):
            store.create_checkpoint("web", "c", disks={"web": tmp_path / "no-such.img"})
        with pytest.raises(NotFound, match="No such file"):
            store.import_disk("web", "web", tmp_path / "no-such.img")
    code, text = _cli("--store", str(tmp_path / "s"), "checkpoint", "create", "web", "c",
                      "--disk", f"web={tmp_path}")  # fmt: skip
    assert code == 14 and "is a directory" in text  # there, but not a file: invalid


# --- --memory refused, with the reason -----------------------------------------


def test_memory_on_a_production_checkpoint_says_to_take_a_standard_one(
    store_dir: str, tmp_path: Path
) -> None:
    memory = tmp_path / "m.bin"
    memory.write_bytes(b"memory")
    assert _cli("--store", store_dir, "vm", "start", "web")[0] == 0
    code, text = _cli("--store", store_dir, "checkpoint", "create", "web", "c",
                      "--memory", str(memory))  # fmt: skip
    assert code == 14
    assert "production checkpoints hold no memory; take a standard checkpoint " in text
    assert "(--type standard)" in text
    assert "is running" not in text and " or " not in text  # one reason, the real one
    code, text = _cli("--store", store_dir, "checkpoint", "create", "web", "c",
                      "--memory", str(memory), "--type", "standard")  # fmt: skip
    assert code == 0, text


def test_memory_of_a_vm_that_is_off_says_there_is_nothing_in_memory(
    store_dir: str, tmp_path: Path
) -> None:
    memory = tmp_path / "m.bin"
    memory.write_bytes(b"memory")
    for kind in ("production", "standard"):
        code, text = _cli("--store", store_dir, "checkpoint", "create", "web", "c",
                          "--memory", str(memory), "--type", kind)  # fmt: skip
        assert code == 14
        assert "the VM is off, so there is nothing in memory to save" in text
        assert "production" not in text and "--type standard" not in text


def test_the_api_gives_the_same_reasons(tmp_path: Path) -> None:
    memory = tmp_path / "m.bin"
    memory.write_bytes(b"memory")
    with Store.init(tmp_path / "s") as store:
        store.register_vm("web")
        with pytest.raises(InvalidValue, match="VM is off"):
            store.create_checkpoint("web", "c", files={FileRole.MEMORY: memory})
        store.start_vm("web")
        with pytest.raises(InvalidValue, match="production checkpoints hold no memory"):
            store.create_checkpoint("web", "c", files={FileRole.MEMORY: memory})


# --- secrets: masked where they stand, other text left alone --------------------


def test_a_short_url_password_does_not_mangle_names_that_contain_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issue's report: password ``ckpt`` printed ``'***-store.json'``."""
    for name in ("PGPASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                 "AWS_SESSION_TOKEN", "AWS_PROFILE"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-role lookup
    events = "postgresql://ckpt:ckpt@127.0.0.1:1/ckpt"  # never reached: the chunks fail first
    code, text = _cli("--events", events, "--chunks",
                      "s3://ckpt-bars/store?endpoint=http://127.0.0.1:1", "log")  # fmt: skip
    assert code != 0
    assert "'ckpt-store.json'" in text and "s3://ckpt-bars/store" in text, text
    chunks = (tmp_path / "ckpt-bars").as_uri()
    code, text = _cli("--events", events, "--chunks", chunks, "log")
    assert code == 20
    assert "no ckpt store at events postgresql://ckpt:***@127.0.0.1:1/ckpt" in text, text
    assert f"chunks {chunks}" in text and "holds no ckpt-store.json" in text
    assert "***-" not in text


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("at postgresql://u:ab@h/db failed", "at postgresql://u:***@h/db failed"),
        ("'postgresql://u:p/w?x#y@z@h:5/db'", "'postgresql://u:***@h:5/db'"),
        ("conninfo: host=h password=pw1 user=u", "conninfo: host=h password=*** user=u"),
        ("postgresql://u@h/db?password=pw1&schema=s", "postgresql://u@h/db?password=***&schema=s"),
    ],
)
def test_a_password_in_a_url_or_an_option_is_masked_whatever_its_length(
    text: str, shown: str
) -> None:
    assert scrub(text, []) == shown


def test_secret_variables_are_masked_as_whole_tokens_only() -> None:
    key = "abc/DEF+ghi0123456789jklmnopqrstuvwxyz12"  # 40 characters, like AWS's
    secrets = secrets_in([], {"PGPASSWORD": "ckpt", "AWS_SECRET_ACCESS_KEY": key})
    assert secrets == [key, "ckpt"]
    assert scrub("'/var/ckpt-store.json' s3://ckpt-bars/x ckpt_1 ckpt.d", secrets) == (
        "'/var/ckpt-store.json' s3://ckpt-bars/x ckpt_1 ckpt.d"
    )
    assert scrub("password ckpt. 'ckpt' /ckpt/ :ckpt@", secrets) == (
        "password ***. '***' /***/ :***@"
    )
    assert scrub(f"signed with {key}: denied", secrets) == "signed with ***: denied"


def test_a_long_url_password_is_masked_anywhere_it_stands_and_a_short_one_in_urls() -> None:
    long, short = "Pw/with?odd#chars@x1", "ckpt"
    secrets = secrets_in([f"postgresql://u:{long}@h/db", f"postgresql://u:{short}@h/db"], {})
    assert secrets == [long]  # 'ckpt' is masked where it stands in a URL, not as a word
    assert scrub(f"server said: {long}!", secrets) == "server said: ***!"
    assert scrub(f"postgresql://ckpt:{short}@h/ckpt", secrets) == "postgresql://ckpt:***@h/ckpt"


# --- a missing S3 bucket --------------------------------------------------------


@pytest.fixture
def fake_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIATESTKEYID0000000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fake/Secret+Key0123456789abcdefghijklmno")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


def _stubbed(url: str) -> tuple[S3ChunkBackend, Stubber]:
    backend = S3ChunkBackend(url)
    return backend, Stubber(backend._client)  # the price of scripting S3's answers


@pytest.fixture
def stubbed(fake_credentials: None) -> Iterator[tuple[S3ChunkBackend, Stubber]]:
    backend, stubber = _stubbed("s3://bucket/pre?endpoint=http://127.0.0.1:9&region=us-east-1")
    with stubber:
        yield backend, stubber
        stubber.assert_no_pending_responses()


def _no_bucket(stubber: Stubber, method: str, **expected: Any) -> None:
    stubber.add_client_error(
        method,
        service_error_code="NoSuchBucket",
        service_message="The specified bucket does not exist",
        http_status_code=404,
        expected_params={"Bucket": "bucket", **expected},
    )


def test_a_missing_bucket_is_named_not_a_failed_listing(
    stubbed: tuple[S3ChunkBackend, Stubber],
) -> None:
    backend, stubber = stubbed
    _no_bucket(stubber, "list_objects_v2", Prefix="pre/ckpt-store.json")
    _no_bucket(stubber, "put_object", Key="pre/a", Body=b"x")
    _no_bucket(stubber, "get_object", Key="pre/a")
    for call in (
        lambda: backend.list("ckpt-store.json"),
        lambda: backend.put("a", b"x"),
        lambda: backend.get("a"),
    ):
        with pytest.raises(StoreNotFound) as info:
            call()
        message = str(info.value)
        assert message.startswith("bucket 'bucket' does not exist")
        assert "cannot list" not in message and "NoSuchBucket" in message
        assert "init" in message


def test_create_bucket_creates_a_missing_one_and_leaves_an_existing_one(
    stubbed: tuple[S3ChunkBackend, Stubber],
) -> None:
    backend, stubber = stubbed
    stubber.add_client_error(
        "head_bucket", service_error_code="404", http_status_code=404,
        expected_params={"Bucket": "bucket"},
    )  # fmt: skip
    stubber.add_response("create_bucket", {}, {"Bucket": "bucket"})  # us-east-1: no constraint
    assert backend.create_bucket() is True
    stubber.add_response("head_bucket", {}, {"Bucket": "bucket"})
    assert backend.create_bucket() is False  # nothing else is called
    stubber.add_client_error(
        "head_bucket", service_error_code="404", http_status_code=404,
        expected_params={"Bucket": "bucket"},
    )  # fmt: skip
    stubber.add_client_error(
        "create_bucket", service_error_code="BucketAlreadyOwnedByYou", http_status_code=409,
        expected_params={"Bucket": "bucket"},
    )  # fmt: skip
    assert backend.create_bucket() is False  # another init was quicker: fine


def test_create_bucket_names_the_region_outside_us_east_1(fake_credentials: None) -> None:
    backend, stubber = _stubbed("s3://bucket/pre?endpoint=http://127.0.0.1:9&region=eu-west-1")
    with stubber:
        stubber.add_client_error(
            "head_bucket", service_error_code="404", http_status_code=404,
            expected_params={"Bucket": "bucket"},
        )  # fmt: skip
        stubber.add_response(
            "create_bucket", {},
            {"Bucket": "bucket", "CreateBucketConfiguration": {"LocationConstraint": "eu-west-1"}},
        )  # fmt: skip
        assert backend.create_bucket() is True
        stubber.assert_no_pending_responses()


def test_a_bucket_we_may_not_create_is_reported(
    stubbed: tuple[S3ChunkBackend, Stubber],
) -> None:
    backend, stubber = stubbed
    stubber.add_client_error(
        "head_bucket", service_error_code="404", http_status_code=404,
        expected_params={"Bucket": "bucket"},
    )  # fmt: skip
    stubber.add_client_error(
        "create_bucket", service_error_code="AccessDenied", service_message="Access Denied",
        http_status_code=403, expected_params={"Bucket": "bucket"},
    )  # fmt: skip
    with pytest.raises(Exception, match=r"cannot create bucket 'bucket' .*AccessDenied") as info:
        backend.create_bucket()
    assert type(info.value).__name__ == "StoreUnavailable"


def _missing_bucket_url() -> str:
    """An S3 URL on the test server naming a bucket that does not exist yet."""
    query = s3_url().partition("?")[2]
    return f"s3://{fresh_name('ckpt-mend-')}/p?{query}"


def _drop_bucket(url: str) -> None:
    backend = S3ChunkBackend(url)
    client = backend._client
    bucket = backend.location.bucket
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for entry in page.get("Contents", []):
            client.delete_object(Bucket=bucket, Key=entry["Key"])
    client.delete_bucket(Bucket=bucket)


def test_init_creates_the_bucket_and_other_commands_name_a_missing_one(tmp_path: Path) -> None:
    events, chunks = postgres_url(), _missing_bucket_url()
    code, text = _cli("--events", events, "--chunks", chunks, "log")
    assert code == 20, text
    assert "bucket 'ckpt-mend-" in text and "does not exist" in text
    assert "cannot list" not in text
    try:
        code, text = _cli("--store", str(tmp_path / "s"), "init", "--events", events,
                          "--chunks", chunks)  # fmt: skip
        assert code == 0 and "initialised an empty ckpt store" in text, text
        image = tmp_path / "d.img"
        image.write_bytes(os.urandom(32_768))
        with Store.open(tmp_path / "s") as store:
            store.register_vm("web")
            store.create_checkpoint("web", "one", disks={"web": image})
            out = io.BytesIO()
            store.restore_disk("web", "one", "web", out)
            assert out.getvalue() == image.read_bytes()
    finally:
        _drop_bucket(chunks)
    code, text = _cli("--store", str(tmp_path / "s"), "log")  # the bucket is gone again
    assert code == 20 and "does not exist" in text, text
