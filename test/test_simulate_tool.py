"""Tests of the stk_simulate front end: files written, reproducibility, clobber, errors."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.io.fits import FITSDiff
from stk_astrometry.fitsutil import get_keyword
from stk_astrometry.simulate import SimConfig, simulate_stack
from stk_astrometry.tableio import read_table, require_columns
from stk_astrometry import simfiles
from stk_astrometry.tools.stk_simulate import main, output_names

REPO = Path(__file__).resolve().parents[1]
STACK = "acisfJ1236480p621200_001"  # the default position's stack id
IGNORE = ["DATE", "CHECKSUM", "DATASUM", "CREATOR", "HISTNUM", "HISTORY"]


def _run(outdir, *extra):
    return main([str(outdir), "products=no", "verbose=0", *extra])


def _files(outdir):
    return sorted(p.name for p in Path(outdir).iterdir())


def test_writes_the_five_tables_readable_by_stk_match(tmp_path):
    out = tmp_path / "sim"
    assert _run(out, "seed=7", "ndet=40") == 0
    names = output_names(STACK)
    assert _files(out) == sorted(names.values())
    det = read_table(str(out / names["det"]), param="infile")
    cols = require_columns(det, ["detect_stack_id", "region_id", "ra", "dec", "err_ellipse_r0",
                                 "err_ellipse_r1", "err_ellipse_ang", "likelihood_class",
                                 "sat_src_flag", "conv_hull", "man_inc", "theta", "src_cnts",
                                 "ra_stack", "dec_stack", "instrument"])
    assert len(cols) == 16 and len(det.table) == 40
    # RA_STACK is a plain keyword; DEC_STACK (9 characters) the CXC DTYPEn/DVALn way.
    assert det.header["RA_STACK"] == pytest.approx(189.2)
    assert "DEC_STACK" not in [c.keyword for c in det.header.cards]
    assert get_keyword(det.header, "DEC_STACK") == pytest.approx(62.2)
    with fits.open(out / names["det"]) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "SRCLIST"]
        assert hdul[1].columns["sat_src_flag"].format == "L"
        assert hdul[1].columns["err_ellipse_r0"].unit == "arcsec"
        assert any("TOOL  :stk_simulate" in str(v) for v in hdul[1].header["HISTORY"])
        assert hdul[1].verify_checksum() == 1
    gaia = read_table(str(out / names["gaia"]), param="gaiafile").table
    assert gaia["source_id"].dtype.kind == "i" and gaia["source_id"].dtype.itemsize == 8
    # Nulls are written as NaN (astropy reads them back masked).
    assert np.any(np.isnan(fits.getdata(out / names["gaia"], 1)["pmra"]))
    assert np.any(np.ma.getmaskarray(gaia["pmra"]))
    wise = read_table(str(out / names["allwise"]), param="wisefile").table
    assert "0000" in set(wise["cc_flags"]) and wise["allwise_oid"].dtype.itemsize == 8
    bn = read_table(str(out / names["bestnb"]), param="bestnbfile").table
    assert set(bn.colnames) == {"source_id", "allwise_oid", "original_ext_source_id",
                                "angular_distance", "number_of_neighbours", "number_of_mates"}


def test_detections_carry_the_stack_epoch_that_stk_match_uses(tmp_path):
    # issue 14: Gaia is simulated at J2016.0 and the detections epoch_gap years earlier; the
    # detections' header says when (DATE-OBS/MJD-OBS), so stk_match moves Gaia back to it
    # and warns about no missing epoch
    from stk_astrometry import api

    out = tmp_path / "sim"
    assert _run(out, "seed=7", "ndet=40", "epoch_gap=8.5") == 0
    names = output_names(STACK)
    hdr = fits.getheader(out / names["det"], "SRCLIST")
    assert hdr["DATE-OBS"] == "2007-07-02T21:00:00" and hdr["MJD-OBS"] == pytest.approx(54283.875)
    m = api.match_stack(out / names["det"], out / names["gaia"])
    assert not any("no stack epoch" in w for w in m.warnings), m.warnings
    keywords = {name: value for name, value, _ in m.pairs.keywords}
    assert keywords["EPOCHMOD"] == "propagate"
    assert keywords["EPOCHOBS"] == pytest.approx(2007.5, abs=1e-9)


def test_truth_file_matches_the_core_simulation(tmp_path):
    out = tmp_path / "sim"
    assert _run(out, "seed=11", "ndet=60", "shift_xi=0.3", "shift_eta=-0.2") == 0
    with fits.open(out / output_names(STACK)["truth"]) as hdul:
        hdr, tab = hdul["TRUTH"].header, hdul["TRUTH"].data
        assert hdr["D_XI"] == 0.3 and hdr["D_ETA"] == -0.2 and hdr["SEED"] == 11
        crb = (hdr["CRB_XI"], hdr["CRB_ETA"], hdr["CRB_ISO"])
        assert hdr["NCRB"] == np.count_nonzero(tab["in_crb"])
        # The CRB in the header is the documented formula over the in_crb rows.
        from stk_astrometry.simulate import crb_from_ellipses

        k = tab["in_crb"]
        assert crb == pytest.approx(crb_from_ellipses(tab["sigma_major"][k],
                                                      tab["sigma_minor"][k], tab["err_ang"][k]))
        assert get_keyword(hdr, "DEC_STACK") == pytest.approx(62.2)
    # The tool's catalogs come from the core with the seed's catalog stream.
    seq = np.random.SeedSequence(11).spawn(2)[0]
    sim = simulate_stack(SimConfig(ndet=60, shift_xi_arcsec=0.3, shift_eta_arcsec=-0.2),
                         rng=np.random.default_rng(seq))
    with fits.open(out / output_names(STACK)["det"]) as hdul:
        np.testing.assert_array_equal(hdul[1].data["ra"], sim.detections.ra_deg)


def test_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path):
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        assert _run(tmp_path / name, f"seed={seed}", "false_frac=0.1") == 0
    for fname in output_names(STACK).values():
        diff = FITSDiff(str(tmp_path / "a" / fname), str(tmp_path / "b" / fname),
                        ignore_keywords=IGNORE, ignore_comments=["*"])
        assert diff.identical, diff.report()
    diff = FITSDiff(str(tmp_path / "a" / output_names(STACK)["det"]),
                    str(tmp_path / "c" / output_names(STACK)["det"]), ignore_keywords=IGNORE)
    assert not diff.identical


def test_refuses_a_non_empty_outdir_without_clobber(tmp_path, capsys):
    out = tmp_path / "sim"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert _run(out) == 1
    err = capsys.readouterr().err
    assert "# stk_simulate (stk_astrometry" in err and "ERROR Clobber set to no" in err
    assert str(out) in err and "Traceback" not in err
    assert _files(out) == ["keep.txt"]


def test_clobber_replaces_the_whole_tree_and_empty_outdir_is_used(tmp_path):
    out = tmp_path / "sim"
    out.mkdir()
    assert _run(out, "seed=3") == 0  # an existing empty directory is fine
    (out / "stale.txt").write_text("old")
    assert _run(out, "seed=3", "clobber=yes", "stackid=acisfJ0000000p000000_009") == 0
    assert _files(out) == sorted(output_names("acisfJ0000000p000000_009").values())
    # No temporary or old trees are left next to it.
    assert _files(tmp_path) == ["sim"]


def test_a_failure_leaves_no_partial_tree(tmp_path, monkeypatch, capsys):
    out = tmp_path / "sim"

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(simfiles, "write_stack", boom)   # the writer lives in the library
    assert _run(out) == 1
    err = capsys.readouterr().err
    assert "ERROR cannot write outdir=" in err and "No space left on device" in err
    assert not out.exists() and _files(tmp_path) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["outdir=", "mode=h"], "outdir is blank"),
        (["{tmp}/sim", "ra_stack=INDEF"], "ra_stack=INDEF: a value is needed"),
        (["{tmp}/nope/sim"], "folder {tmp}/nope does not exist"),
        (["{tmp}/afile"], "outdir={tmp}/afile exists and is not a directory"),
        (["{tmp}/sim", "null_pm_frac=0.9", "high_pm_frac=0.5"], "null_pm_frac + high_pm_frac = 1.4"),
        (["{tmp}/sim", "false_frac=2"], "false_frac"),
        (["{tmp}/sim", "instrument=XMM"], "instrument"),
    ],
)
def test_error_messages(tmp_path, capsys, args, message):
    (tmp_path / "afile").write_text("x")
    argv = [a.format(tmp=tmp_path) for a in args] + ["products=no", "verbose=0"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("# stk_simulate (stk_astrometry ")
    assert message.format(tmp=tmp_path) in err and "Traceback" not in err
    assert not (tmp_path / "sim").exists()


def test_seed_indef_draws_a_seed_and_records_it(tmp_path):
    out = tmp_path / "sim"
    assert _run(out, "seed=INDEF", "ndet=10") == 0
    with fits.open(out / output_names(STACK)["truth"]) as hdul:
        seed = hdul["TRUTH"].header["SEED"]
    assert seed >= 0
    assert _run(tmp_path / "again", f"seed={seed}", "ndet=10") == 0
    a = fits.getdata(out / output_names(STACK)["det"])
    b = fits.getdata(tmp_path / "again" / output_names(STACK)["det"])
    np.testing.assert_array_equal(a["ra"], b["ra"])


def test_shell_chain_through_the_bin_script(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO / "lib"))
    out = tmp_path / "sim"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bin" / "stk_simulate"), str(out), "seed=2", "ndet=20",
         "instrument=HRC", "products=no", "verbose=1"],
        capture_output=True, text=True, env=env, check=False, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "True shift d_xi=" in proc.stdout
    assert _files(out) == sorted(output_names("hrcfJ1236480p621200_001").values())


def test_product_tree_has_one_file_per_spec_type_pointed_at_the_stack(tmp_path):
    synthprod = pytest.importorskip("stk_astrometry.synthprod")
    out = tmp_path / "sim"
    assert main([str(out), "seed=4", "ndet=10", "ra_stack=10.5", "dec_stack=-30.25",
                 "verbose=0"]) == 0
    stack = "acisfJ0042000m301500_001"
    files = sorted(p for p in (out / "products").rglob("*") if p.is_file())
    assert len(files) == len(synthprod.PRODUCT_KINDS)
    # Stack-level names carry this stack's id; master names its position.
    assert any(p.name == f"{stack}N029_evt3.fits" for p in files)
    assert any(p.name.startswith("2CXOJ0042000m301500") for p in files)
    n_pointed = 0
    for path in files:
        if path.suffix == ".jpg":
            assert path.read_bytes()[:2] == b"\xff\xd8"
            continue
        with fits.open(path) as hdul:
            for hdu in hdul:
                if "RA_NOM" in hdu.header:
                    assert hdu.header["RA_NOM"] == pytest.approx(10.5)
                    assert hdu.header["DEC_NOM"] == pytest.approx(-30.25)
                    n_pointed += 1
    assert n_pointed > 30


def test_products_are_reproducible_and_products_no_skips_them(tmp_path):
    pytest.importorskip("stk_astrometry.synthprod")
    for name in ("a", "b"):
        assert main([str(tmp_path / name), "seed=9", "ndet=5", "verbose=0"]) == 0
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.fits"))
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.fits"))
    assert files_a == files_b and len(files_a) > 40
    for rel in files_a:
        diff = FITSDiff(str(tmp_path / "a" / rel), str(tmp_path / "b" / rel),
                        ignore_keywords=IGNORE, ignore_comments=["*"])
        assert diff.identical, diff.report()
    # The catalogs do not depend on whether products are written.
    assert _run(tmp_path / "c", "seed=9", "ndet=5") == 0
    det = output_names(STACK)["det"]
    diff = FITSDiff(str(tmp_path / "a" / det), str(tmp_path / "c" / det), ignore_keywords=IGNORE)
    assert diff.identical, diff.report()
    assert not (tmp_path / "c" / "products").exists()


def test_shell_chain_simulate_match_fit_recovers_the_truth(tmp_path):
    """simulate -> stk_match -> stk_xfm as a shell script; the fit finds the true shift."""
    for tool in ("stk_match", "stk_xfm"):
        pytest.importorskip(f"stk_astrometry.tools.{tool}")
    stk = "acisfJ1236480p621200_001"
    script = f"""
set -e
stk_simulate sim seed=21 stackid={stk} ndet=120 gaia_frac=0.8 shift_xi=0.4 shift_eta=-0.3 \\
    epoch_gap=0 products=no verbose=0
stk_match sim/{stk}_det.fits sim/{stk}_gaia.fits pairs.fits \\
    wisefile=sim/{stk}_allwise.fits bestnbfile=sim/{stk}_bestnb.fits verbose=0
stk_xfm pairs.fits xfm.fits verbose=0
"""
    env = dict(os.environ, PYTHONPATH=str(REPO / "lib"),
               PATH=f"{REPO / 'bin'}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}"
                    f"{os.environ.get('PATH', '')}")
    proc = subprocess.run(["sh", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stderr
    truth = fits.getheader(tmp_path / "sim" / f"{stk}_truth.fits", "TRUTH")
    row = fits.getdata(tmp_path / "xfm.fits", "STKXFM")[0]
    for axis, key in (("xi", "D_XI"), ("eta", "D_ETA")):
        err = abs(float(row[f"d_{axis}"]) - truth[key])
        # Within 5 reported sigmas, and the reported sigma is not absurdly above the bound.
        assert err < 5 * float(row[f"d_{axis}_err"]), (axis, err, row[f"d_{axis}_err"])
        assert err < 0.2
        assert float(row[f"d_{axis}_err"]) < 10 * truth[f"CRB_{axis.upper()}"]
