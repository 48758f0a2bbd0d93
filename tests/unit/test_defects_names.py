"""Issue 11 item 6 (ids vs names) and the naming small ones, on the pure domain.

A reference is a name or an id. An id must never silently win over a name (the
issue: deleting by an id that was also another checkpoint's name deleted the
other one), nor the latest of a repeated backup-point name over the others:
such a reference is ``AmbiguousName`` listing what it matches. New names that
read as ids are refused; logs written before that may still hold them, which
these tests write by replacing the name check with the old one.
"""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID, uuid4

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ckpt.domain.vm as vm_module
from ckpt.domain import (
    AmbiguousName,
    DiskCapture,
    DiskFormat,
    InvalidValue,
    Origin,
    UnknownCheckpoint,
    VirtualMachine,
)
from ckpt.domain.naming import check_name

AT = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)


def origin() -> Origin:
    return Origin("tester", "host1", AT, uuid4())


def new_vm(name: str = "v") -> VirtualMachine:
    vm = VirtualMachine.register(origin(), name, [("D", DiskFormat.VHDX)])
    vm.collect_events()
    return vm


def capture(vm: VirtualMachine) -> DiskCapture:
    layer = vm.running["D"]
    return DiskCapture("D", layer, b"m" * 32, len(vm.contents.get(layer, ())), 4096, 4096, 0, 0, 0)


@pytest.fixture
def old_log(monkeypatch: pytest.MonkeyPatch) -> None:
    """Names are checked as before the fix, as in a log written then."""
    monkeypatch.setattr(vm_module, "check_findable_name", check_name, raising=False)


def spellings(value: UUID) -> list[str]:
    text = str(value)
    return [text, "{" + text + "}", text.upper(), "{" + text.upper() + "}"]


SPELLING = pytest.mark.parametrize(
    "form", range(4), ids=["plain", "braces", "upper", "upper+braces"]
)


@SPELLING
def test_a_checkpoint_named_like_another_checkpoints_id_makes_that_id_ambiguous(
    old_log: None, form: int
) -> None:
    vm = new_vm()
    case = vm.create_checkpoint(origin(), "Case")
    ref = spellings(case.id)[form]
    impostor = vm.create_checkpoint(origin(), ref)
    with pytest.raises(AmbiguousName) as caught:
        vm.find_checkpoint(ref)
    message = str(caught.value)
    assert f"{ref!r} is ambiguous in VM 'v'" in message
    assert "the id of checkpoint 'Case'" in message and "the name of 1 checkpoint" in message
    assert str(impostor.id) in message
    # The spelling shown for Case's id names Case alone.
    shown = message.split("checkpoint 'Case' of ")[1].split("(id ")[1].split(")")[0]
    assert shown != ref and vm.find_checkpoint(shown) == case
    assert vm.find_checkpoint(str(impostor.id)) == impostor


def test_a_backup_point_named_like_a_checkpoint_is_ambiguous_for_a_restore() -> None:
    vm = new_vm()
    cp = vm.create_checkpoint(origin(), "nightly")
    point = vm.sync(origin(), "nightly", [capture(vm)])
    with pytest.raises(AmbiguousName) as caught:
        vm.find_point("nightly")
    message = str(caught.value)
    assert "it is the name of 2 things" in message
    assert f"checkpoint 'nightly' of 2026-12-01T09:30:00+00:00 (id {cp.id})" in message
    assert f"backup point 'nightly' of 2026-12-01T09:30:00+00:00 (id {point.id})" in message
    assert vm.find_point(str(point.id)) == point and vm.find_point(str(cp.id)) == cp
    # A checkpoint-only command is not confused by a backup point of the same name.
    assert vm.find_checkpoint("nightly") == cp


def test_backup_points_may_share_a_name_but_the_name_then_names_none_of_them() -> None:
    vm = new_vm()
    first = vm.sync(origin(), "nightly", [capture(vm)])
    second = vm.sync(origin(), "nightly", [capture(vm)])
    with pytest.raises(AmbiguousName, match="VM 'v' has 2 backup points named 'nightly'"):
        vm.find_point("nightly")
    assert vm.find_point("{" + str(first.id).upper() + "}") == first
    assert vm.find_point(second.id) == second


def test_a_backup_point_named_like_a_checkpoints_id_makes_the_id_ambiguous(old_log: None) -> None:
    vm = new_vm()
    cp = vm.create_checkpoint(origin(), "Case")
    vm.sync(origin(), str(cp.id), [capture(vm)])
    with pytest.raises(AmbiguousName, match="the id of checkpoint 'Case'"):
        vm.find_point(str(cp.id))
    assert vm.find_checkpoint(str(cp.id)) == cp  # backup points are not checkpoints


def test_an_ambiguity_lists_at_most_ten_and_counts_the_rest() -> None:
    vm = new_vm()
    for _ in range(13):
        vm.sync(origin(), "hourly", [capture(vm)])
    with pytest.raises(AmbiguousName) as caught:
        vm.find_point("hourly")
    message = str(caught.value)
    assert "13 backup points named 'hourly'" in message
    assert message.count("(id ") == 10 and ", and 3 more;" in message


def test_unknown_references_still_say_unknown() -> None:
    vm = new_vm()
    with pytest.raises(UnknownCheckpoint, match="no checkpoint named or with id 'x'"):
        vm.find_checkpoint("x")
    with pytest.raises(UnknownCheckpoint, match="no checkpoint or backup point"):
        vm.find_point(str(uuid4()))


ID_LIKE = [
    "6f1c2a0e-8f7b-4a39-9a59-0c1d2e3f4a5b",
    "{6f1c2a0e-8f7b-4a39-9a59-0c1d2e3f4a5b}",
    "6F1C2A0E-8F7B-4A39-9A59-0C1D2E3F4A5B",
    "6f1c2a0e8f7b4a399a590c1d2e3f4a5b",
    " {6f1c2a0e-8f7b-4a39-9a59-0c1d2e3f4a5b} ",
    "urn:uuid:6f1c2a0e-8f7b-4a39-9a59-0c1d2e3f4a5b",
]


@pytest.mark.parametrize("name", ID_LIKE)
def test_new_names_that_read_as_ids_are_refused_for_every_kind(name: str) -> None:
    with pytest.raises(InvalidValue, match=r"VM name .* reads as an id"):
        VirtualMachine.register(origin(), name, [("D", DiskFormat.VHDX)])
    vm = new_vm()
    with pytest.raises(InvalidValue, match=r"checkpoint name .* reads as an id"):
        vm.create_checkpoint(origin(), name)
    cp = vm.create_checkpoint(origin(), "fine")
    with pytest.raises(InvalidValue, match=r"checkpoint name .* reads as an id"):
        vm.rename_checkpoint(origin(), cp.id, name)
    with pytest.raises(InvalidValue, match=r"backup point name .* reads as an id"):
        vm.sync(origin(), name, [capture(vm)])


def test_a_vm_whose_name_cannot_name_its_default_disk_is_refused_naming_the_vm() -> None:
    with pytest.raises(InvalidValue) as caught:
        VirtualMachine.register(origin(), "a/b")
    message = str(caught.value)
    assert message.startswith("VM name 'a/b' cannot be a Windows file name")
    assert "--disk NAME" in message and "disk name 'a/b'" not in message
    with pytest.raises(InvalidValue, match="VM name 'nul' is a reserved Windows device name"):
        VirtualMachine.register(origin(), "nul")
    assert VirtualMachine.register(origin(), "a/b", [("Boot", DiskFormat.VHDX)]).name == "a/b"


def test_the_default_backup_point_name_fits_a_long_vm_name() -> None:
    """A 90-character VM name made a 133-character default name, refused (exit 14)."""
    vm = new_vm("x" * 90)
    point = vm.sync(origin(), None, [capture(vm)])
    assert point.name == "x" * 57 + " - backup point (2026-12-01T09:30:00+00:00)"
    assert len(point.name) == 100


# A name: a plain one, or the id of an earlier checkpoint in some spelling (k, form).
NAMES = st.sampled_from(["a", "b", "A"]) | st.tuples(st.integers(0, 5), st.integers(0, 3))


@settings(max_examples=80, deadline=None)
@given(
    names=st.lists(NAMES, min_size=1, max_size=6),
    pick=st.integers(0, 5),
    ref_form=st.none() | st.integers(0, 3),
)
def test_a_reference_names_one_checkpoint_or_is_refused_never_a_wrong_one(
    names: list[str | tuple[int, int]], pick: int, ref_form: int | None
) -> None:
    """Whatever names an old log holds, a lookup returns the one checkpoint the
    reference matches (by id or exact name), or refuses it: it never picks."""
    cps = []
    with pytest.MonkeyPatch.context() as m:
        m.setattr(vm_module, "check_findable_name", check_name, raising=False)
        vm = new_vm()
        for spec in names:
            if isinstance(spec, tuple):
                k, form = spec
                spec = spellings(cps[k % len(cps)].id)[form] if cps else "a"
            cps.append(vm.create_checkpoint(origin(), spec))
    target = cps[pick % len(cps)]
    ref = target.name if ref_form is None else spellings(target.id)[ref_form]
    as_id = _as_id(ref)
    matches = {cp.id for cp in cps if cp.name == ref or cp.id == as_id}
    if len(matches) == 1:
        assert vm.find_checkpoint(ref) == target
    else:
        with pytest.raises(AmbiguousName):
            vm.find_checkpoint(ref)


def _as_id(text: str) -> UUID | None:
    try:
        return UUID(text.strip().strip("{}"))
    except ValueError:
        return None
