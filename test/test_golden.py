"""Golden-file regression: the three tools' outputs on the bundled sample.

Compared with astropy's FITSDiff (ignoring DATE, CHECKSUM/DATASUM, HISTNUM, and CREATOR and
HISTORY, which are compared without their version and time stamps), with the tolerances
documented in ``test/golden/chain.py``.  Regenerating after an intended change:
``.venv/bin/python test/golden/chain.py --regenerate`` (review the printed diff).
"""

import sys
from pathlib import Path

import pytest

GOLDEN = Path(__file__).resolve().parent / "golden"
sys.path.insert(0, str(GOLDEN))
import chain  # noqa: E402  (test/golden/chain.py)

# the chain runs once per worker that gets one of these tests: keep them on one worker
pytestmark = pytest.mark.xdist_group("golden")


@pytest.fixture(scope="module")
def chain_outputs(tmp_path_factory):
    work = tmp_path_factory.mktemp("golden_work")
    mp = pytest.MonkeyPatch()
    mp.setenv("PFILES", f"{tmp_path_factory.mktemp('pf')};{chain.REPO / 'param'}")
    try:
        return work, chain.run_chain(work)
    finally:
        mp.undo()


def test_every_golden_file_is_produced(chain_outputs):
    _, outputs = chain_outputs
    golden = sorted(str(p.relative_to(GOLDEN)) for p in GOLDEN.rglob("*.fits"))
    assert golden, "no golden files: run test/golden/chain.py --regenerate"
    assert sorted(outputs) == golden


def test_outputs_match_golden_files(chain_outputs):
    work, outputs = chain_outputs
    reports = {rel: chain.compare(work / rel, GOLDEN / rel) for rel in outputs if (GOLDEN / rel).exists()}
    bad = {rel: r for rel, r in reports.items() if r}
    assert not bad, "\n".join(f"=== {rel}\n{r}" for rel, r in bad.items())


def test_comparison_can_fail(chain_outputs, tmp_path):
    """The comparison notices a changed value (guards against a test that cannot fail)."""
    from astropy.io import fits

    work, _ = chain_outputs
    changed = tmp_path / "xfm.fits"
    with fits.open(work / "xfm.fits") as hdul:
        hdul["STKXFM"].data["d_xi"][0] += 1e-6
        hdul.writeto(changed)
    assert "d_xi" in chain.compare(changed, GOLDEN / "xfm.fits")
