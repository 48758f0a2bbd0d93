"""The wheel holds one import namespace, ``ckpt``; the public API is exactly ``__all__``."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import ckpt

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_contains_only_the_ckpt_package(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("ckpt-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"ckpt"}
    for sub in ("domain", "storage", "projections"):
        assert f"ckpt/{sub}/__init__.py" in names
    assert "ckpt/py.typed" in names


def test_public_api_is_exactly_all() -> None:
    public = {
        name
        for name, value in vars(ckpt).items()
        if not name.startswith("_") and not inspect.ismodule(value)  # submodules are not API
    }
    assert public == set(ckpt.__all__) - {"__version__"}
    for name in ckpt.__all__:
        assert getattr(ckpt, name) is not None


def test_the_readme_lists_exactly_all() -> None:
    """The README's list of the public API is ``ckpt.__all__``, name for name."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- ckpt.__all__ -->")[1].split("<!-- end of ckpt.__all__ -->")[0]
    assert set(re.findall(r"`([A-Z]\w*|__version__)`", block)) == set(ckpt.__all__)
