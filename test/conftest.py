"""Shared test fixtures.

Every test runs with a private PFILES (a temporary user directory; the repo's
``param/`` as the system directory), so no test reads or learns into the real
``~/cxcds_param4`` and tests cannot see each other's learned values.
"""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PARAM_DIR = REPO / "param"


@pytest.fixture(autouse=True)
def private_pfiles(tmp_path_factory, monkeypatch):
    """Point PFILES at a fresh user dir + the repo's system param dir."""
    user = tmp_path_factory.mktemp("pfiles")
    monkeypatch.setenv("PFILES", f"{user};{PARAM_DIR}")
    monkeypatch.delenv("UPARM", raising=False)
    monkeypatch.delenv("PDIRS", raising=False)
    return user


@pytest.fixture
def repo_root():
    return REPO


def pytest_report_header(config):
    return f"stk_astrometry tests; PFILES isolated per test; repo {REPO}"


os.environ.setdefault("STK_ASTROMETRY_TESTING", "1")
