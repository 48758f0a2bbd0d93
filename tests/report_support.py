"""A store with a varied history, for the ``ckpt report`` tests.

Terms: a *round* is, per VM, a checkpoint created, renamed, applied, two more
created, two deleted (one a leaf, one merged into its child), a state change and a
backup point (``sync``); three actors take turns. The disks are 64 KiB images
whose 4 KiB stretches change at random (a seed per store), so the events are
many and the bytes few: 3 VMs x 5 rounds come to ~200 events in a few seconds.
Two of the VMs have hostile names, which the page must show as text.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

from ckpt import DiskFormat, Store

HOSTILE = ("<script>alert(1)</script>", '"><img src=x onerror=alert(1)>')
VMS = ("web", *HOSTILE)
ACTORS = ("alice", "bob", "carol")
SIZE = 64 << 10
STRETCH = 4 << 10


class Disks:
    """Each VM's disk image, changed a little before every capture."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.images = {vm: bytearray(self.rng.randbytes(SIZE)) for vm in VMS}

    def next(self, vm: str) -> dict[str, io.BytesIO]:
        image = self.images[vm]
        at = self.rng.randrange(SIZE // STRETCH) * STRETCH
        image[at : at + STRETCH] = self.rng.randbytes(STRETCH)
        return {"D": io.BytesIO(bytes(image))}


def one_round(s: Store, vm: str, n: int, disks: Disks) -> None:
    s.create_checkpoint(vm, f"a{n}", disks=disks.next(vm))
    s.rename_checkpoint(vm, f"a{n}", f"{HOSTILE[0]} {n}" if n % 2 else f"first {n}")
    name = f"{HOSTILE[0]} {n}" if n % 2 else f"first {n}"
    s.create_checkpoint(vm, f"b{n}", disks=disks.next(vm))
    s.apply_checkpoint(vm, name)
    s.create_checkpoint(vm, f"{HOSTILE[1]} c{n}", disks=disks.next(vm))
    s.delete_checkpoint(vm, f"b{n}")  # a leaf: its layer goes
    s.delete_checkpoint(vm, name)  # one child left: its layer merges into the child's
    s.start_vm(vm)
    s.sync(vm, disks.next(vm), name=f"backup {n}")
    s.stop_vm(vm, turn_off=True)


def build(path: Path, rounds: int = 5, seed: int = 19) -> None:
    """Create the store at ``path``: 3 VMs, ``rounds`` rounds each, then a purge
    of the oldest backup points and a gc that reclaims them."""
    disks = Disks(seed)
    with Store.init(path, actor=ACTORS[0]) as s:
        for vm in VMS:
            s.register_vm(vm, [("D", DiskFormat.VHDX)])
    for n in range(rounds):
        with Store.open(path, actor=ACTORS[n % len(ACTORS)], host=f"host{n % 2}") as s:
            for vm in VMS:
                one_round(s, vm, n, disks)
    with Store.open(path, actor="retention") as s:
        s.forget("last=2")
        s.gc(grace_seconds=0)
