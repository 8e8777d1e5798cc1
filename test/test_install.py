"""`pip install .` installs the executables, the par files and the help pages.

Builds the wheel (no dependencies, no network needed beyond the build backend
already in the environment) and inspects what it would install.
"""

import shutil
import subprocess
import sys
import zipfile

import pytest

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# the wheel is built once per worker that gets one of these tests: keep them on one worker
pytestmark = pytest.mark.xdist_group("install")

TOOLS = ["stk_match", "stk_xfm", "stk_update_wcs", "stk_simulate", "stk_simpop"]


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    # build from a copy, so the build leaves nothing (build/, *.egg-info) in the work tree
    src = tmp_path_factory.mktemp("src")
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for name in ("bin", "lib", "param", "share"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0 and "No module named" in proc.stderr and "setuptools" in proc.stderr:
        pytest.skip("setuptools is not installed in this environment")
    assert proc.returncode == 0, proc.stderr
    (wheel,) = out.glob("stk_astrometry-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        return zf.namelist()


def test_wheel_installs_tools_par_files_and_help(wheel_names):
    data = [n for n in wheel_names if ".data/" in n]
    for tool in TOOLS + ["stk_param"]:
        assert any(n.endswith(f".data/scripts/{tool}") for n in data), tool
        assert any(n.endswith(f".data/data/share/doc/stk_astrometry/{tool}.txt") for n in data), tool
    for tool in TOOLS:
        assert any(n.endswith(f".data/data/param/{tool}.par") for n in data), tool
    assert any(n.endswith("stk_astrometry/tangent.py") for n in wheel_names)


def test_every_tool_is_a_trio():
    for tool in TOOLS:
        assert (REPO / "bin" / tool).is_file()
        assert (REPO / "param" / f"{tool}.par").is_file()
        assert (REPO / "share" / "doc" / f"{tool}.txt").is_file()
