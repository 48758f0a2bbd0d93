"""Random operation sequences against the VirtualMachine aggregate and a reference model.

The reference model knows nothing of layers: it keeps the tree (parent links),
the current checkpoint, the VM state, and the *content* each checkpoint and Now
must show, as a dict block -> value. The test also simulates writes into the
running layer's file and replays the merges and deletions the events record
on those files. After every step the disk content read through each chain
(base first, children overriding) must equal what the model expects: that is
"deleting never loses a layer that a live checkpoint or Now depends on",
checked on data, not only on names.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from ckpt.domain import (
    VALUE_TYPES,
    CheckpointType,
    DiskFormat,
    InvalidValue,
    LayerMerge,
    LayerRemoval,
    NotAllowed,
    Origin,
    VirtualMachine,
    VMState,
)
from ckpt.storage import MsgPackTranscoder

DISKS = ("Boot", "Data")
Content = dict[int, int]


class VMMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.counter = 0
        self.events: list[Any] = []
        self.files: dict[UUID, Content] = {}  # simulated layer file content
        # the reference model
        self.parents: dict[UUID, UUID | None] = {}
        self.snapshots: dict[UUID, dict[str, Content]] = {}
        self.memory: dict[UUID, bool] = {}
        self.current: UUID | None = None
        self.now: dict[str, Content] = {d: {} for d in DISKS}
        self.state = VMState.OFF
        self.ctype = CheckpointType.STANDARD
        self.config = "9.0"
        self.automatic = False
        self.auto_cp: UUID | None = None
        self.next_value = 1

    def origin(self) -> Origin:
        self.counter += 1
        at = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=self.counter)
        return Origin("prop", "host", at, UUID(int=self.counter))

    # ------------------------------------------------------------ plumbing
    def absorb(self) -> None:
        """Apply the new events' layer facts to the simulated files."""
        for event in self.vm.collect_events():
            self.events.append(event)
            new_layers = getattr(event, "new_layers", ()) or getattr(event, "base_layers", ())
            for layer in new_layers:
                self.files[layer.id] = {}
            for change in getattr(event, "changes", ()):
                if isinstance(change, LayerMerge):
                    self.files[change.target].update(self.files.pop(change.source))
                else:
                    assert isinstance(change, LayerRemoval)
                    del self.files[change.layer]

    def read(self, disk: str, leaf: UUID) -> Content:
        from ckpt.domain.layers import chain

        out: Content = {}
        for layer in chain(self.vm.layers, leaf):
            out.update(self.files[layer.id])
        return out

    def model_delete(self, root: UUID, subtree: bool) -> None:
        gone = [root]
        if subtree:
            for cid in gone:
                gone.extend(c for c, p in self.parents.items() if p == cid)
        parent = self.parents[root]
        for cid in gone:
            del self.parents[cid], self.snapshots[cid], self.memory[cid]
        for cid, p in self.parents.items():
            if p in gone:
                self.parents[cid] = parent
        if self.current in gone:
            self.current = parent
        if self.auto_cp in gone:
            self.auto_cp = None

    def model_create(self, cid: UUID, has_memory: bool) -> None:
        self.parents[cid] = self.current
        self.snapshots[cid] = {d: dict(c) for d, c in self.now.items()}
        self.memory[cid] = has_memory
        self.current = cid

    # ------------------------------------------------------------------ rules
    @initialize(config=st.sampled_from(["5.0", "9.0"]), vhd=st.booleans())
    def register(self, config: str, vhd: bool) -> None:
        fmt = DiskFormat.VHD if vhd else DiskFormat.VHDX
        self.config = config
        self.vm = VirtualMachine.register(
            self.origin(), "VM", [(d, fmt) for d in DISKS], config, CheckpointType.STANDARD
        )
        self.absorb()

    @rule(disk=st.sampled_from(DISKS), block=st.integers(0, 5))
    def write(self, disk: str, block: int) -> None:
        value = self.next_value
        self.next_value += 1
        self.files[self.vm.running[disk]][block] = value
        self.now[disk][block] = value

    @rule(
        requested=st.sampled_from(
            [
                CheckpointType.STANDARD,
                CheckpointType.PRODUCTION,
                CheckpointType.PRODUCTION_ONLY,
                None,
            ]
        ),
        quiesce=st.booleans(),
        disk=st.sampled_from(DISKS),
        block=st.integers(0, 5),
    )
    def create(
        self, requested: CheckpointType | None, quiesce: bool, disk: str, block: int
    ) -> None:
        """Write one block, then checkpoint: most checkpoints then differ from their parent."""
        self.write(disk, block)
        setting = requested or self.ctype
        if self.ctype is CheckpointType.PRODUCTION_ONLY and requested is not None:
            # --type within the setting: standard refused, production never falls back
            setting = CheckpointType.PRODUCTION_ONLY
        guest_ok = self.config != "5.0" and (
            self.state is VMState.OFF or (self.state is VMState.RUNNING and quiesce)
        )
        try:
            cp = self.vm.create_checkpoint(self.origin(), None, requested, quiesce)
        except NotAllowed:
            assert (
                self.ctype is CheckpointType.DISABLED
                or len(self.parents) >= 50
                or (
                    self.ctype is CheckpointType.PRODUCTION_ONLY
                    and requested is CheckpointType.STANDARD
                )
                or (setting is CheckpointType.PRODUCTION_ONLY and not guest_ok)
            )
            return
        assert self.ctype is not CheckpointType.DISABLED and len(self.parents) < 50
        assert not (
            self.ctype is CheckpointType.PRODUCTION_ONLY and requested is CheckpointType.STANDARD
        )
        standard = setting is CheckpointType.STANDARD or not guest_ok
        assert cp.type is (CheckpointType.STANDARD if standard else CheckpointType.PRODUCTION)
        self.absorb()
        self.model_create(cp.id, standard and self.state is not VMState.OFF)

    @precondition(lambda self: bool(self.parents))
    @rule(data=st.data(), revert=st.booleans())
    def apply(self, data: st.DataObject, revert: bool) -> None:
        if revert and self.current is not None:
            target = self.current
            self.vm.revert(self.origin())
        else:
            target = data.draw(st.sampled_from(sorted(self.parents)))
            self.vm.apply_checkpoint(self.origin(), target)
        self.absorb()
        self.current = target
        self.now = {d: dict(c) for d, c in self.snapshots[target].items()}
        self.state = VMState.SAVED if self.memory[target] else VMState.OFF

    @precondition(lambda self: bool(self.parents))
    @rule(data=st.data(), subtree=st.booleans())
    def delete(self, data: st.DataObject, subtree: bool) -> None:
        target = data.draw(st.sampled_from(sorted(self.parents)))
        self.vm.delete_checkpoint(self.origin(), target, subtree)
        self.absorb()
        self.model_delete(target, subtree)

    @precondition(lambda self: bool(self.parents))
    @rule(data=st.data(), name=st.text(min_size=0, max_size=102))
    def rename(self, data: st.DataObject, name: str) -> None:
        target = data.draw(st.sampled_from(sorted(self.parents)))
        try:
            self.vm.rename_checkpoint(self.origin(), target, name)
        except InvalidValue:
            assert (
                not name.strip()
                or len(name) > 100
                or any(ord(c) < 32 or ord(c) == 127 for c in name)
            )
            return
        self.absorb()
        assert self.vm.checkpoints[target].name == name

    @rule(action=st.sampled_from(["start", "stop", "turn-off", "save", "pause", "resume"]))
    def power(self, action: str) -> None:
        allowed = {
            "start": self.state in (VMState.OFF, VMState.SAVED),
            "stop": self.state in (VMState.RUNNING, VMState.SAVED),
            "turn-off": self.state is not VMState.OFF,
            "save": self.state in (VMState.RUNNING, VMState.PAUSED),
            "pause": self.state is VMState.RUNNING,
            "resume": self.state is VMState.PAUSED,
        }[action]
        before = set(self.vm.checkpoints)
        try:
            if action == "turn-off":
                self.vm.stop(self.origin(), turn_off=True)
            else:
                getattr(self.vm, action)(self.origin())
        except NotAllowed:
            assert not allowed
            return
        assert allowed
        self.absorb()
        if action == "start":
            takes_auto = (
                self.state is VMState.OFF
                and self.automatic
                and not self.parents
                and self.ctype is not CheckpointType.DISABLED
            )
            if takes_auto:
                (cid,) = set(self.vm.checkpoints) - before
                self.model_create(cid, False)
                self.auto_cp = cid
            self.state = VMState.RUNNING
        elif action == "stop":  # Shut Down: only it removes the automatic checkpoint
            if self.state is VMState.RUNNING and self.auto_cp is not None:
                self.model_delete(self.auto_cp, False)
            self.state = VMState.OFF
        elif action == "turn-off":
            self.state = VMState.OFF
        elif action == "resume":
            self.state = VMState.RUNNING
        else:
            self.state = VMState.SAVED if action == "save" else VMState.PAUSED

    @rule(ctype=st.sampled_from(list(CheckpointType)), automatic=st.booleans())
    def settings(self, ctype: CheckpointType, automatic: bool) -> None:
        try:
            self.vm.change_settings(self.origin(), ctype, automatic)
        except NotAllowed:
            assert ctype is CheckpointType.PRODUCTION_ONLY and self.config == "5.0"
            return
        assert not (ctype is CheckpointType.PRODUCTION_ONLY and self.config == "5.0")
        self.absorb()
        self.ctype, self.automatic = ctype, automatic

    @precondition(lambda self: self.config == "5.0")
    @rule()
    def upgrade(self) -> None:
        """Update-VMVersion: off, and no checkpoint with saved state (memory)."""
        try:
            self.vm.change_settings(self.origin(), config_version="9.0")
        except NotAllowed:
            assert self.state is not VMState.OFF or any(self.memory.values())
            return
        assert self.state is VMState.OFF and not any(self.memory.values())
        self.absorb()
        self.config = "9.0"

    # ------------------------------------------------------------- invariants
    @invariant()
    def tree_matches_model(self) -> None:
        assert {cid: cp.parent for cid, cp in self.vm.checkpoints.items()} == self.parents
        assert self.vm.current == self.current
        assert self.vm.state is self.state

    @invariant()
    def chains_run_from_base_to_one_running_layer(self) -> None:
        from ckpt.domain.layers import chain

        for disk in self.vm.disks:
            files = chain(self.vm.layers, self.vm.running[disk.name])
            assert files[0].parent is None and files[0].file == disk.base_file
            assert not [lay for lay in self.vm.layers.values() if lay.parent == files[-1].id]
            bases = [
                lay
                for lay in self.vm.layers.values()
                if lay.disk == disk.name and lay.parent is None
            ]
            assert len(bases) == 1
            ext = disk.format.differencing_extension
            assert all(lay.file.endswith("." + ext) for lay in files[1:])

    @invariant()
    def every_live_layer_is_needed(self) -> None:
        pinned = set(self.vm.running.values()) | {
            lid for cp in self.vm.checkpoints.values() for _, lid in cp.layers
        }
        for layer in self.vm.layers.values():
            kids = [x for x in self.vm.layers.values() if x.parent == layer.id]
            assert layer.id in pinned or layer.parent is None or len(kids) >= 2

    @invariant()
    def content_survives(self) -> None:
        """Each checkpoint and Now read back exactly what the model expects."""
        assert set(self.files) == set(self.vm.layers)
        for cid, cp in self.vm.checkpoints.items():
            for disk, lid in cp.layers:
                assert self.read(disk, lid) == self.snapshots[cid][disk]
        for disk, lid in self.vm.running.items():
            assert self.read(disk, lid) == self.now[disk]

    def teardown(self) -> None:
        """Replaying the events, after a msgpack round trip, rebuilds the same VM."""
        if not self.events:
            return
        codec = MsgPackTranscoder(VALUE_TYPES)
        replayed: Any = None
        for event in self.events:
            state = codec.decode(codec.encode(dict(vars(event))))
            copy = object.__new__(type(event))
            object.__setattr__(copy, "__dict__", state)
            replayed = copy.mutate(replayed)
        assert replayed.checkpoints == self.vm.checkpoints
        assert replayed.layers == self.vm.layers
        assert replayed.running == self.vm.running
        assert replayed.current == self.vm.current
        assert replayed.state == self.vm.state
        assert replayed.config_version == self.vm.config_version


VMMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
TestVMStateMachine = VMMachine.TestCase
