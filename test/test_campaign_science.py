"""A 200-stack simulated campaign end to end: stk_simpop -> stk_batch -> the science report.

The population (seeded) has overlapping stacks, an absolute systematic of 0.12" per axis
missing from the stated errors, and the error regimes of issue 14; the batch runs the mixture
estimator on local Dask workers; the report must see the injected systematic, the
between-stack agreement improve, and put its section into the campaign page.
"""

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from stk_astrometry.tools.stk_batch import main as stk_batch
from stk_astrometry.tools.stk_simpop import main as stk_simpop

# ~35 s of wall time on an idle machine (200 stacks through Dask): .ci/run runs it with -m slow
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    root = tmp_path_factory.mktemp("campaign_science")
    pop, camp = root / "pop", root / "camp"
    assert stk_simpop([str(pop), "nstacks=200", "seed=11", "verbose=0"]) == 0
    yaml = root / "campaign.yaml"
    yaml.write_text("stk_xfm:\n  estimator: mixture\n", encoding="utf-8")
    assert stk_batch([f"@{pop / 'stacks.lis'}", str(camp), f"@@{yaml}", "detcorr=no",
                      "science=yes", f"truthfile={pop / 'truth.fits'}", "verbose=0"]) == 0
    return pop, camp


def _table(camp, hdu):
    return {str(r[0]).strip(): r for r in Table.read(camp / "science.fits", hdu=hdu)}


def test_every_stack_is_in_the_results_and_the_qa_counts_agree(campaign):
    _, camp = campaign
    results = Table.read(camp / "campaign.fits")
    assert len(results) == 200
    qa = _table(camp, "QA")
    done = results["status"] == "done"
    assert qa["ANY"]["n_stacks"] == int(np.sum(done & (results["qa_flags"] > 0)))
    assert qa["BIGSHIFT"]["n_stacks"] == int(np.sum(done & (results["qa_flags"] & 4 > 0)))
    assert qa["SPEC_RULES"]["n_stacks"] == int(np.sum(done & (results["qa_flags"] & 14 > 0)))


def test_absolute_error_sees_the_injected_systematic(campaign):
    _, camp = campaign
    ab = _table(camp, "ABSERR")
    csc = ab["regime=csc"]  # stacks whose stated errors lack only the absolute term
    assert abs(csc["sigma_sys"] / 0.12 - 1.0) < 0.10, csc
    assert {"instrument=ACIS", "all"} <= set(ab)
    # the estimator's own target on the true errors, beside the Gaussian model's (issue 17)
    for row in ab.values():
        assert np.isfinite(row["expected_fit"]) and row["expected_fit"] >= 0.0, row
    assert abs(csc["expected_fit"] / csc["expected"] - 1.0) < 0.10, csc


def test_between_stack_agreement_improves(campaign):
    _, camp = campaign
    out = _table(camp, "OVERLAP")["outlying"]
    assert out["n_pairs"] > 100
    assert out["frac_improved"] >= 0.90 and out["frac_worsened"] < 0.02, out


def test_offsets_to_gaia_shrink_and_the_page_shows_the_section(campaign):
    _, camp = campaign
    g = Table.read(camp / "science.fits", hdu="GAIAOFF")[0]
    assert g["median_after"] < g["median_before"]
    page = (camp / "index.html").read_text(encoding="utf-8")
    assert page.count('<section id="science">') == 1
    for png in ("science_abserr.png", "science_overlap.png"):
        assert png in page and (camp / png).stat().st_size > 5000
    with fits.open(camp / "science.fits") as h:
        assert h[0].header["CONTENT"] == "STKSCIENCE"


def test_truthfile_needs_science_and_must_exist(tmp_path, capsys):
    assert stk_batch(["@nothing.lis", str(tmp_path / "c"), "truthfile=t.fits", "verbose=0"]) == 1
    assert "science=yes" in capsys.readouterr().err
    assert stk_batch(["@nothing.lis", str(tmp_path / "c"), "science=yes",
                      f"truthfile={tmp_path / 'missing.fits'}", "verbose=0"]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
