"""``import hyperv`` of folders holding files Windows wrote: the names and ids their
configuration files hold. The expected values were read from the files independently
(a hex dump of test.vmcx, and dissect.hypervisor: see tests/unit/hyperv_config), not
from our reader's output; a 2012 R2 folder uses the Windows-written VM XML of
tests/unit/hyperv_config/test_xml_config.py over a VHD qemu-img made."""

from __future__ import annotations

import gzip
import io
import os
import shutil
import subprocess
from pathlib import Path
from uuid import UUID

import pytest
from hyperv_samples import WINDOWS_VM  # the Windows-written VM file (cut down)

from ckpt import Store
from ckpt.storage.vhdx import VhdxReader

FIXTURES = Path(
    os.environ.get(
        "CKPT_HYPERV_FIXTURES", Path(__file__).resolve().parents[3] / "shared/fixtures/hyperv"
    )
)
VM_ID = UUID("282874FC-59D6-4F30-BC04-5FDD909C82E0")  # global_id, and the .vmgs file's name


def _fixture(name: str) -> bytes:
    path = FIXTURES / name
    if not path.exists():
        pytest.skip(f"Windows fixture {path} is missing")
    data = path.read_bytes()
    return gzip.decompress(data) if name.endswith(".gz") else data


def test_windows_vmcx_folder_imports_with_its_name_id_version_and_disk(tmp_path: Path) -> None:
    folder = tmp_path / "EasyToFind"
    (folder / "Virtual Machines").mkdir(parents=True)
    (folder / "Virtual Hard Disks").mkdir()
    (folder / "Virtual Machines" / f"{VM_ID}.vmcx").write_bytes(_fixture("test.vmcx"))
    (folder / "Virtual Machines" / f"{VM_ID}.VMRS").write_bytes(_fixture("test.VMRS"))
    disk = _fixture("dynamic.vhdx.gz")  # the disk the configuration names: Other Location.vhdx
    (folder / "Virtual Hard Disks" / "Other Location.vhdx").write_bytes(disk)
    store = Store.init(tmp_path / "s", actor="t")
    report = store.import_hyperv(folder)
    assert report.vm == "Other Location"  # configuration/properties/name
    assert report.hyperv_id == str(VM_ID)
    assert report.version == "9.0"  # properties/version 0x900
    assert report.configuration == "vmcx"
    assert report.checkpoints == [] and report.current is None
    vm = store.vm("Other Location")
    assert vm.hyperv_id == str(VM_ID) and vm.config_version == "9.0"
    expected = VhdxReader(io.BytesIO(disk)).read(0, 10 << 20)
    with store.open_disk("Other Location", "Now", "Other Location") as reader:
        assert reader.read() == expected
    assert any(n.startswith("Now: runs on Other Location.vhdx") for n in report.notes)


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img (qemu-utils) is missing")
def test_windows_2012r2_xml_folder_imports_with_its_name_and_id(tmp_path: Path) -> None:
    folder = tmp_path / "vagrant"
    (folder / "Virtual Machines").mkdir(parents=True)
    (folder / "Virtual Hard Disks").mkdir()
    vm_id = "0AA394FA-7C4A-4070-BA32-773D43B28A68"
    (folder / "Virtual Machines" / f"{vm_id}.xml").write_text(WINDOWS_VM, encoding="utf-16")
    raw = tmp_path / "disk.raw"
    raw.write_bytes(b"\x5a" * (3 << 20))
    vhd = folder / "Virtual Hard Disks" / "disk.vhd"
    subprocess.run(
        ["qemu-img", "convert", "-f", "raw", "-O", "vpc", "-o", "force_size", str(raw), str(vhd)],
        check=True,
        capture_output=True,
    )
    store = Store.init(tmp_path / "s", actor="t")
    report = store.import_hyperv(folder)
    assert report.vm == "2012R2" and report.hyperv_id == vm_id.lower()
    assert report.version == "5.0" and report.configuration == "xml"
    assert {d.format.value for d in store.vm("2012R2").disks} == {"vhd"}
    with store.open_disk("2012R2", "Now", "disk") as reader:
        assert reader.read() == raw.read_bytes()
