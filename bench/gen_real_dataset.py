#!/usr/bin/env python3
"""Real-content dataset: real Debian packages installed and upgraded on an ext4 disk, 5 steps.

Output, in the layout bench/bench_content.py reads (so ``bench_content.py --data OUT`` runs on it
unchanged):

    OUT/ckpt0 .. OUT/ckpt4/disk.img   raw ext4 disk (sparse file, 3 GiB by default)
    OUT/ckpt0 .. OUT/ckpt4/mem.bin    small guest-RAM stand-in (64 MiB): zero pages and copies of
                                      the step's own disk blocks in short runs (page cache)
    OUT/dataset.json                  the packages and versions each step installed/removed

How: ``mkfs.ext4`` on a sparse file, loop-mounted (needs root and loop devices; without them the
script says so and exits 3), then every package is unpacked with ``dpkg-deb -x`` into the mounted
root the way dpkg lays it out (files of the old version that the new one lacks are deleted, a
``var/lib/dpkg/info/PKG.list`` is written, the downloaded .debs sit in ``var/cache/apt/archives``
until the next step's "apt clean").  Packages are fetched with ``apt-get download pkg=version``
into a cache dir (default /tmp/ckpt-debcache, ~450 MB, reused).  Versions come from the archive
the host's apt knows (Debian 12: bookworm, bookworm-updates, bookworm-security carry two or three
versions of many packages): "old" is the lowest version apt-cache madison lists, "mid" the middle
one, "new" the highest; a package with one version is reinstalled unchanged.

Steps:
  0  base system: libc, openssl, python3.11, perl, postgresql-15, git, vim, gcc-12, systemd,
     openssh, curl, nginx, apache2, mariadb, qemu-system-x86, icu, tzdata ... (old versions)
  1  security upgrades: libc, openssl, python3.11, perl, postgresql, openssh, tzdata, ... (mid)
  2  adds: firefox-esr, openjdk-17-jre-headless (old); apt clean
  3  upgrades to the newest versions (firefox-esr major upgrade, openjdk, openssl, ...),
     removes apache2 and qemu-system-x86; apt clean
  4  adds libreoffice-core, thunderbird; removes vim-runtime; apt clean

The kernel picks block placement and writes wall-clock timestamps and journal blocks, so two
runs match statistically, not byte for byte; the archive moves too (dataset.json records the
versions actually used).

Usage:  sudo python3 bench/gen_real_dataset.py OUT [--size-gib 3] [--cache /tmp/ckpt-debcache]
                                              [--small]
  --small: a 256 MiB disk and a handful of small packages (seconds; for the tests).
Stdlib only.  Needs: root, loop devices, e2fsprogs, dpkg-deb, apt-get with the Debian 12 archive.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

MIB = 1 << 20
PAGE = 4096

BASE = [
    "libc6", "libc-bin", "libssl3", "openssl", "libpython3.11-minimal", "libpython3.11-stdlib",
    "python3.11", "perl", "libperl5.36", "perl-modules-5.36", "postgresql-15",
    "postgresql-client-15", "libpq5", "git", "vim", "vim-runtime", "gcc-12", "cpp-12",
    "libstdc++6", "systemd", "libsystemd0", "openssh-server", "openssh-client", "curl",
    "libcurl4", "libxml2", "libglib2.0-0", "nginx-core", "apache2-bin", "mariadb-server-core",
    "libmariadb3", "qemu-system-x86", "libicu72", "tzdata", "libnss3", "libgnutls30", "sudo",
    "libexpat1", "bind9-libs", "libkrb5-3",
]  # fmt: skip
# (step, action, version, packages); action: install (add or upgrade), remove.
PLAN = [
    (0, "install", "old", BASE),
    (1, "install", "mid", [
        "libc6", "libc-bin", "libssl3", "openssl", "libpython3.11-minimal",
        "libpython3.11-stdlib", "python3.11", "perl", "libperl5.36", "perl-modules-5.36",
        "postgresql-15", "postgresql-client-15", "libpq5", "openssh-server", "openssh-client",
        "tzdata", "curl", "libcurl4", "libxml2", "systemd", "libsystemd0",
    ]),
    (2, "install", "old", ["firefox-esr", "openjdk-17-jre-headless"]),
    (3, "install", "new", [
        "firefox-esr", "openjdk-17-jre-headless", "libssl3", "openssl", "tzdata",
        "openssh-server", "openssh-client", "git", "nginx-core", "mariadb-server-core",
        "libmariadb3", "libglib2.0-0", "libnss3", "bind9-libs", "sudo", "libexpat1",
    ]),
    (3, "remove", "", ["apache2-bin", "qemu-system-x86"]),
    (4, "install", "old", ["libreoffice-core", "thunderbird"]),
    (4, "remove", "", ["vim-runtime"]),
]  # fmt: skip
SMALL_PLAN = [
    (0, "install", "old", ["libssl3", "openssl", "tzdata", "libexpat1", "sudo"]),
    (1, "install", "mid", ["libssl3", "openssl", "tzdata"]),
    (2, "install", "old", ["libpq5"]),
    (3, "install", "new", ["libssl3", "openssl", "tzdata", "libexpat1", "sudo"]),
    (3, "remove", "", ["libexpat1"]),
    (4, "install", "new", ["libpq5"]),
    (4, "remove", "", ["sudo"]),
]
STEPS = 5


def log(msg: str) -> None:
    print(f"[gen_real_dataset {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sh(*cmd: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=True, text=True, **kw)  # type: ignore[call-overload]


def out(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, text=True, capture_output=True).stdout


def loop_mount_works(work: str) -> str | None:
    """None if a loop mount works here, else the reason."""
    if os.geteuid() != 0:
        return "not root (a loop mount needs root)"
    for tool in ("mkfs.ext4", "mount", "umount", "dpkg-deb", "apt-get", "apt-cache"):
        if shutil.which(tool) is None:
            return f"{tool} not found"
    img, mnt = os.path.join(work, "probe.img"), os.path.join(work, "probe")
    os.makedirs(mnt, exist_ok=True)
    try:
        with open(img, "wb") as f:
            f.truncate(16 * MIB)
        out("mkfs.ext4", "-q", "-F", img)
        out("mount", "-o", "loop", img, mnt)
        out("umount", mnt)
        return None
    except (subprocess.CalledProcessError, OSError) as e:
        err = getattr(e, "stderr", "") or str(e)
        return f"loop mount failed: {err.strip()}"
    finally:
        os.unlink(img)


def compare_versions(a: str, b: str) -> int:
    if a == b:
        return 0
    lt = subprocess.run(["dpkg", "--compare-versions", a, "lt", b]).returncode == 0
    return -1 if lt else 1


@functools.cache
def versions(pkg: str) -> list[str]:
    vs = {line.split("|")[1].strip() for line in out("apt-cache", "madison", pkg).splitlines()}
    if not vs:
        raise SystemExit(f"apt-cache madison {pkg}: no version (is the Debian 12 archive in apt?)")
    return sorted(vs, key=functools.cmp_to_key(compare_versions))


def pick(pkg: str, which: str) -> str:
    vs = versions(pkg)
    return {"old": vs[0], "mid": vs[len(vs) // 2], "new": vs[-1]}[which]


def download(pkg: str, version: str, cache: str) -> str:
    """The .deb of PKG=VERSION in CACHE, fetched with apt-get download when absent."""
    # apt-get names the file pkg_EPOCH%3aVERSION_arch.deb; older apt drops the epoch
    stems = (f"{pkg}_{version.replace(':', '%3a')}_", f"{pkg}_{version.split(':', 1)[-1]}_")
    found = [f for f in os.listdir(cache) if f.startswith(stems) and f.endswith(".deb")]
    if not found:
        # apt-get drops privileges to _apt, which cannot write a root-owned dir; quiet that.
        sh("apt-get", "download", "-q", f"{pkg}={version}", cwd=cache, capture_output=True)
        found = [f for f in os.listdir(cache) if f.startswith(stems) and f.endswith(".deb")]
    if len(found) != 1:
        raise SystemExit(f"apt-get download {pkg}={version}: expected one .deb, got {found}")
    return os.path.join(cache, found[0])


def deb_paths(deb: str) -> list[str]:
    """Non-directory paths in DEB's data, relative ('usr/bin/x')."""
    tar = subprocess.run(["dpkg-deb", "--fsys-tarfile", deb], check=True, capture_output=True)
    names = subprocess.run(["tar", "-t"], input=tar.stdout, check=True, capture_output=True)
    return [
        n.decode()[2:] if n.startswith(b"./") else n.decode()
        for n in names.stdout.splitlines()
        if n and not n.endswith(b"/")
    ]


def remove_files(root: str, rels: list[str]) -> None:
    for rel in rels:
        p = os.path.join(root, rel)
        if os.path.islink(p) or os.path.isfile(p):
            os.unlink(p)


def apply_step(root: str, plan: list, k: int, cache: str, installed: dict, step: dict) -> None:
    archives = os.path.join(root, "var/cache/apt/archives")
    os.makedirs(archives, exist_ok=True)
    if k > 0:  # apt clean: last step's downloaded .debs go (their blocks stay, unzeroed)
        for f in os.listdir(archives):
            if f.endswith(".deb"):
                os.unlink(os.path.join(archives, f))
    info = os.path.join(root, "var/lib/dpkg/info")
    os.makedirs(info, exist_ok=True)
    for k_, action, which, pkgs in plan:
        if k_ != k:
            continue
        for pkg in pkgs:
            if action == "remove":
                if pkg in installed:
                    remove_files(root, installed.pop(pkg)[1])
                    os.unlink(os.path.join(info, f"{pkg}.list"))
                    step["removed"].append(pkg)
                continue
            version = pick(pkg, which)
            deb = download(pkg, version, cache)
            paths = deb_paths(deb)
            if pkg in installed:  # upgrade: the files the new version lacks go
                old_version, old_paths = installed[pkg]
                remove_files(root, sorted(set(old_paths) - set(paths)))
                step["upgraded"].append(f"{pkg} {old_version} -> {version}")
            else:
                step["added"].append(f"{pkg} {version}")
            sh("dpkg-deb", "-x", deb, root)
            shutil.copy(deb, archives)
            with open(os.path.join(info, f"{pkg}.list"), "w") as f:
                f.write("".join(f"/{p}\n" for p in paths))
            installed[pkg] = (version, paths)
            step["deb_bytes"] += os.path.getsize(deb)


def nonzero_pages(img: str, limit: int) -> list[int]:
    """Page numbers of up to LIMIT non-zero 4 KiB pages of IMG (data extents only)."""
    pages: list[int] = []
    zero = bytes(PAGE)
    with open(img, "rb") as f:
        fd, size, pos = f.fileno(), os.fstat(f.fileno()).st_size, 0
        while pos < size and len(pages) < limit:
            try:
                pos = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fd, pos, os.SEEK_HOLE)
            f.seek(pos)
            while pos < end and len(pages) < limit:
                if f.read(PAGE) != zero:
                    pages.append(pos // PAGE)
                pos += PAGE
    return pages


def write_mem(img: str, path: str, mem_bytes: int, seed: int) -> None:
    """A RAM stand-in: zero pages and short runs of the disk's own blocks (page cache)."""
    rng = random.Random(seed)
    pages = nonzero_pages(img, 1 << 20)
    n = mem_bytes // PAGE
    with open(img, "rb") as disk, open(path, "wb") as f:
        i = 0
        while i < n:
            run = min(rng.randint(1, 64), n - i)
            if rng.random() < 0.4 or not pages:
                f.write(bytes(run * PAGE))
            else:
                start = rng.randrange(len(pages))
                for p in pages[start : start + run]:
                    disk.seek(p * PAGE)
                    f.write(disk.read(PAGE))
                run = min(run, len(pages) - start)
            i += run


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("out")
    ap.add_argument("--size-gib", type=float, default=3.0)
    ap.add_argument("--mem-mib", type=int, default=64)
    ap.add_argument("--cache", default="/tmp/ckpt-debcache")
    ap.add_argument("--small", action="store_true", help="tiny set for tests")
    a = ap.parse_args()
    plan = SMALL_PLAN if a.small else PLAN
    size = int((0.25 if a.small else a.size_gib) * (1 << 30))
    mem_bytes = (4 if a.small else a.mem_mib) * MIB
    os.makedirs(a.out, exist_ok=True)
    os.makedirs(a.cache, exist_ok=True)
    work = tempfile.mkdtemp(prefix="gen-real-", dir=a.out)
    try:
        why = loop_mount_works(work)
        if why:
            log(f"skipped: cannot build the ext4 image here: {why}")
            return 3
        mnt = os.path.join(work, "root")
        os.makedirs(mnt)
        installed: dict[str, tuple[str, list[str]]] = {}
        info: dict = {"size_bytes": size, "mem_bytes": mem_bytes, "small": a.small, "steps": []}
        prev = None
        for k in range(STEPS):
            t0 = time.time()
            d = os.path.join(a.out, f"ckpt{k}")
            os.makedirs(d, exist_ok=True)
            img = os.path.join(d, "disk.img")
            if prev is None:
                with open(img, "wb") as f:
                    f.truncate(size)
                out("mkfs.ext4", "-q", "-F", "-L", "rootfs", img)
            else:
                sh("cp", "--sparse=always", prev, img)
            sh("mount", "-o", "loop", img, mnt)
            step: dict = {"step": k, "added": [], "upgraded": [], "removed": [], "deb_bytes": 0}
            try:
                apply_step(mnt, plan, k, a.cache, installed, step)
                st = os.statvfs(mnt)
                step["used_bytes"] = (st.f_blocks - st.f_bfree) * st.f_frsize
            finally:
                sh("umount", mnt)
            write_mem(img, os.path.join(d, "mem.bin"), mem_bytes, seed=k)
            step["seconds"] = round(time.time() - t0, 1)
            info["steps"].append(step)
            log(
                f"ckpt{k}: +{len(step['added'])} ~{len(step['upgraded'])} "
                f"-{len(step['removed'])} packages, {step['deb_bytes'] / 1e6:.0f} MB of .deb, "
                f"{step['used_bytes'] / 1e6:.0f} MB used, {step['seconds']} s"
            )
            prev = img
    finally:
        shutil.rmtree(work, ignore_errors=True)
    with open(os.path.join(a.out, "dataset.json"), "w") as f:
        json.dump(info, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
