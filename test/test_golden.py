"""Golden-file regression: the three tools' outputs on the bundled sample.

Compared with astropy's FITSDiff (ignoring DATE, CHECKSUM/DATASUM, HISTNUM, and CREATOR and
HISTORY, which are compared without their version and time stamps), with the tolerances
documented in ``test/golden/chain.py``.  Regenerating after an intended change:
``.venv/bin/python test/golden/chain.py --regenerate`` (review the printed diff).
"""

import shutil
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


def test_golden_transforms_are_within_three_sigma_of_the_truth():
    """What --regenerate checks before it writes: the committed transforms agree with the truth."""
    xfms = sorted(GOLDEN.glob("xfm*.fits"))
    assert [p.name for p in xfms] == ["xfm.fits", "xfm_mixture.fits"]
    assert chain.truth_problems(xfms) == []


def test_regeneration_refuses_a_transform_far_from_the_truth(tmp_path, monkeypatch, capsys):
    from astropy.io import fits

    far = tmp_path / "xfm.fits"
    with fits.open(GOLDEN / "xfm.fits") as hdul:
        row = hdul["STKXFM"].data
        truth = fits.getheader(chain.REPO / "share" / "sample" / chain.TRUTH_FILE)
        row["d_xi"][0] = truth["D_XI"] + 3.05 * row["d_xi_err"][0]
        hdul.writeto(far)
    (problem,) = chain.truth_problems([far])
    assert "d_xi" in problem and "sigma from the truth" in problem
    assert chain.truth_problems([GOLDEN / "xfm.fits"]) == []

    # the whole --regenerate: refuses and writes nothing, unless told to accept
    golden_copy = tmp_path / "golden"
    shutil.copytree(GOLDEN, golden_copy)
    before = {p: p.read_bytes() for p in golden_copy.rglob("*.fits")}

    def chain_with_a_far_fit(work):
        """The golden outputs again, but for a transform 3 sigma off (no need to run the tools)."""
        outputs = sorted(str(p.relative_to(GOLDEN)) for p in GOLDEN.rglob("*.fits"))
        for rel in outputs:
            (Path(work) / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(GOLDEN / rel, Path(work) / rel)
        shutil.copy2(far, Path(work) / "xfm.fits")
        return outputs

    monkeypatch.setattr(chain, "GOLDEN", golden_copy)
    monkeypatch.setattr(chain, "run_chain", chain_with_a_far_fit)
    monkeypatch.setenv("PFILES", "")
    assert chain.regenerate() == 1
    assert "REFUSED" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in golden_copy.rglob("*.fits")} == before
    assert chain.regenerate(accept_far_from_truth=True) == 0
    assert "WARNING" in capsys.readouterr().err
    assert (golden_copy / "xfm.fits").read_bytes() != before[golden_copy / "xfm.fits"]
