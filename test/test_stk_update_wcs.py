"""stk_update_wcs end to end: what happens when runs meet, and what is never a product.

Module tests live beside their modules (test_fitsedit.py, test_wcsupdate.py,
test_products.py); the per-product-type end-to-end checks are in test_update.py.
"""

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from stk_astrometry import synthprod, wcsupdate
from stk_astrometry.tools.stk_update_wcs import main

HERE = Path(__file__).resolve().parent
RA0, DEC0 = 201.2, 26.6


def _load_race():
    spec = importlib.util.spec_from_file_location("update_race_under_test",
                                                  HERE / "benchmarks" / "_update_race.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module         # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def race():
    module = _load_race()
    yield module
    sys.modules.pop("update_race_under_test", None)


@pytest.fixture(scope="module")
def world(race, tmp_path_factory):
    # a small tree (one product of each shape) and one event list big enough to be met
    kinds = ("EVT3", "ASPSOL3", "ECORRIMG", "MRGSRC", "ECF90REG")
    return race.make_world(tmp_path_factory.mktemp("race"), big_rows=20_000, kinds=kinds)


DEFAULTS = {"unknown": "error", "dryrun": "no", "inverse": "no", "force": "no",
            "replace": "no", "scrub": "no", "clobber": "no", "verbose": "1", "mode": "h",
            "product": "", "lock_timeout": "60", "qa_override": "no"}


def run(*args):
    """main() with every hidden parameter given: CIAO learns command-line values."""
    args = [str(a) for a in args]
    given = {a.split("=", 1)[0] for a in args if "=" in a}
    return main(args + [f"{k}={v}" for k, v in DEFAULTS.items() if k not in given])


# --------------------------------------------------------------------------- runs that meet

@pytest.mark.parametrize("scenario", [
    "different", "apply_vs_inverse",
    pytest.param("same", marks=pytest.mark.slow),
    pytest.param("inverse_vs_apply", marks=pytest.mark.slow)])
def test_two_runs_on_one_tree_neither_corrupt_nor_double_apply(race, world, scenario):
    # issue 15: 10 of 10 such races corrupted products before products were locked; the
    # full-size version (100 races) is in the benchmark suite (bench_safety.py)
    out = race.race(world, scenario, 0)
    assert not out.corrupt, out.corrupt
    assert not out.wrong, out.wrong
    assert not out.debris, out.debris
    assert not out.untrue_status, out.untrue_status
    if scenario == "different":
        assert sorted(out.statuses) == [0, 1] or out.statuses == (1, 1), out.statuses
    else:
        assert out.statuses == (0, 0), out.statuses


def test_kill_then_rerun_leaves_no_debris(race, world):
    out = race.kill_and_rerun(world, 0, 1.0)
    assert not out.corrupt and not out.debris and out.rerun_status == 0, out


def test_locked_product_waits_then_fails_that_file_only(tmp_path, capsys):
    from stk_astrometry.fitsutil import locked

    a = tmp_path / synthprod.product_filename("EVT3")
    b = tmp_path / synthprod.product_filename("ECORRIMG")
    synthprod.write_product("EVT3", a, ra_nom=RA0, dec_nom=DEC0)
    synthprod.write_product("ECORRIMG", b, ra_nom=RA0, dec_nom=DEC0)
    xfm = synthprod.write_stkxfm(tmp_path / "xfm.fits", d_xi_arcsec=0.3, d_eta_arcsec=0.1,
                                 ra_ref_deg=RA0, dec_ref_deg=DEC0)
    before = a.read_bytes()
    # another process's lock, taken the way stk_update_wcs takes it
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY); "
         "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(30)", str(a)],
        stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"held"
        assert run(f"{a},{b}", xfm, "outdir=", "lock_timeout=0.3") == 1
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    err = capsys.readouterr().err
    assert "held the lock on this product for more than lock_timeout=0.3 s" in err
    assert "1 of 2 file(s) failed" in err
    assert a.read_bytes() == before
    assert fits.getheader(b)["STKXFMID"]
    with locked(a, timeout=0):         # released by the kill: nothing to clean up
        pass
    assert run(a, xfm, "outdir=") == 0


# --------------------------------------------------------------------------- not products

def test_stack_catalogs_in_the_tree_are_never_products(tmp_path, capsys):
    # issue 15: the batch example passed the stack folder; det.fits (HDU SRCLIST) was taken
    # for MRGSRC and its RA/Dec moved, so the next stk_match fitted a zero shift
    stack = tmp_path / "stack"
    stack.mkdir()
    det = stack / "acisfJ1324480p263600_001_det.fits"
    cols = [fits.Column("ra", "D", unit="deg", array=[RA0, RA0 + 0.01]),
            fits.Column("dec", "D", unit="deg", array=[DEC0, DEC0 - 0.01])]
    fits.HDUList([fits.PrimaryHDU(),
                  fits.BinTableHDU.from_columns(cols, name="SRCLIST")]).writeto(det)
    renamed = stack / "mysources.fits"
    shutil.copy(det, renamed)
    gaia = stack / "gaia.fits"
    fits.HDUList([fits.PrimaryHDU(),
                  fits.BinTableHDU.from_columns(cols, name="GAIA")]).writeto(gaia)
    prod = stack / synthprod.product_filename("MRGSRC", level="stack") \
        if "level" in synthprod.product_filename.__code__.co_varnames \
        else stack / synthprod.product_filename("MRGSRC")
    synthprod.write_product("MRGSRC", prod, ra_nom=RA0, dec_nom=DEC0)
    xfm = synthprod.write_stkxfm(tmp_path / "xfm.fits", d_xi_arcsec=0.3, d_eta_arcsec=0.1,
                                 ra_ref_deg=RA0, dec_ref_deg=DEC0)
    before = {p: p.read_bytes() for p in (det, renamed, gaia)}
    assert run(stack, xfm, "outdir=") == 0
    out = capsys.readouterr().out
    for p, b in before.items():
        assert p.read_bytes() == b, p
    assert f"{det.name}: NOT A PRODUCT" in out
    assert f"{gaia.name}: NOT A PRODUCT" in out
    assert "mysources.fits: NOT RECOGNISED (looks like MRGSRC by HDU SRCLIST alone)" in out
    assert fits.getheader(prod)["STKXFMID"]


# --------------------------------------------------------------------------- replace, force

def test_replace_undoes_the_applied_transform_force_composes(tmp_path, capsys):
    # a re-fit of the same stack with the other estimator: replace moves by the new shift
    # from the original (0.30"), force by the sum (0.59" in the issue)
    path = tmp_path / synthprod.product_filename("ASPSOL3")
    synthprod.write_product("ASPSOL3", path, ra_nom=RA0, dec_nom=DEC0)
    orig = tmp_path / "orig.fits"
    shutil.copy(path, orig)
    first = synthprod.write_stkxfm(tmp_path / "spec.fits", d_xi_arcsec=0.29, d_eta_arcsec=0.0,
                                   ra_ref_deg=RA0, dec_ref_deg=DEC0)
    refit = synthprod.write_stkxfm(tmp_path / "mix.fits", d_xi_arcsec=0.30, d_eta_arcsec=0.0,
                                   ra_ref_deg=RA0, dec_ref_deg=DEC0)
    refit_id = wcsupdate.Transform.from_shift(0.30, 0.0, RA0, DEC0).xfm_id
    assert run(path, first, "outdir=") == 0
    capsys.readouterr()
    assert run(path, refit, "outdir=") == 1
    err = capsys.readouterr().err
    assert err.index("replace=yes") < err.index("force=yes"), err      # replace offered first
    assert run(path, refit, "outdir=", "replace=yes", "force=yes") == 1
    forced = tmp_path / "forced.fits"
    shutil.copy(path, forced)
    assert run(path, refit, "outdir=", "replace=yes") == 0
    assert run(forced, refit, "outdir=", "force=yes") == 0
    direct = tmp_path / "direct.fits"
    shutil.copy(orig, direct)
    assert run(direct, refit, "outdir=", "product=ASPSOL3") == 0

    def cols(p):
        with fits.open(p) as h:
            return (np.array(h["ASPSOL"].data["ra"]), np.array(h["ASPSOL"].data["dec"]),
                    np.array(h["ASPSOL"].data["q_att"]), h[0].header["RA_NOM"],
                    [(x.header["STKXFMID"], x.header["EXTVER"]) for x in h if x.name == "STKXFM"],
                    h[1].header.get("STKPV1ID"))
    rep, dirc, frc, org = cols(path), cols(direct), cols(forced), cols(orig)
    # replace == applying the new transform to the original, to float precision
    assert np.allclose(rep[0], dirc[0], atol=1e-11, rtol=0)
    assert np.allclose(rep[1], dirc[1], atol=1e-11, rtol=0)
    assert np.allclose(rep[2], dirc[2], atol=1e-13, rtol=0)
    assert abs(rep[3] - dirc[3]) < 1e-11
    assert rep[4] == [(refit_id, 1)] and rep[5] is None      # the old record is gone
    # force composes: moved by ~0.59" in xi from the original
    shift = (frc[0] - org[0]) * np.cos(np.radians(DEC0)) * 3600
    assert np.allclose(shift, 0.59, atol=0.01)
    assert [e for _, e in frc[4]] == [1, 2] and frc[5] is not None
    # and replace undone by inverse gets the original back
    assert run(path, refit, "outdir=", "inverse=yes") == 0
    back = cols(path)
    assert np.allclose(back[0], org[0], atol=1e-11, rtol=0) and back[4] == []


def test_replace_needs_the_same_tangent_point(tmp_path, capsys):
    path = tmp_path / synthprod.product_filename("EVT3")
    synthprod.write_product("EVT3", path, ra_nom=RA0, dec_nom=DEC0)
    a = synthprod.write_stkxfm(tmp_path / "a.fits", d_xi_arcsec=0.29, d_eta_arcsec=0.0,
                               ra_ref_deg=RA0, dec_ref_deg=DEC0)
    b = synthprod.write_stkxfm(tmp_path / "b.fits", d_xi_arcsec=0.30, d_eta_arcsec=0.0,
                               ra_ref_deg=RA0 + 0.1, dec_ref_deg=DEC0)
    assert run(path, a, "outdir=") == 0
    before = path.read_bytes()
    capsys.readouterr()
    assert run(path, b, "outdir=", "replace=yes") == 1
    assert "replace=yes cannot rebuild the applied transform" in capsys.readouterr().err
    assert path.read_bytes() == before


# --------------------------------------------------------------------------- every position

def test_region_file_wavdetect_keywords_move_and_sentinels_stay(tmp_path):
    path = tmp_path / synthprod.product_filename("ECF90REG")
    synthprod.write_product("ECF90REG", path, ra_nom=RA0, dec_nom=DEC0)
    xfm = synthprod.write_stkxfm(tmp_path / "xfm.fits", d_xi_arcsec=0.3, d_eta_arcsec=-0.2,
                                 ra_ref_deg=RA0, dec_ref_deg=DEC0)
    from stk_astrometry.fitsutil import get_keyword
    from stk_astrometry.tangent import shift_sky

    h0 = fits.getheader(path, 1)
    old = (get_keyword(h0, "WAV1B_RA"), get_keyword(h0, "WAV1B_DEC"))
    assert run(path, xfm, "outdir=") == 0
    h1 = fits.getheader(path, 1)
    new = (get_keyword(h1, "WAV1B_RA"), get_keyword(h1, "WAV1B_DEC"))
    want = shift_sky(old[0], old[1], 0.3, -0.2, RA0, DEC0)
    assert abs(new[0] - float(want[0])) < 1e-11 and abs(new[1] - float(want[1])) < 1e-11
    assert get_keyword(h1, "WAV2B_RA") == -999.0 and get_keyword(h1, "WAV2B_DEC") == -999.0


def test_stk_match_warns_about_a_detection_catalog_already_moved(tmp_path, capsys):
    # the catalog of a stack folder moved by an earlier stk_update_wcs (issue 15): the next
    # stk_match must not read it without a word
    from stk_astrometry.tools.stk_match import main as match_main

    sample = HERE.parent / "share" / "sample"
    stack = "acisfJ1236480p621200_001"
    det = tmp_path / "det.fits"
    shutil.copy(sample / f"{stack}_det.fits", det)
    with fits.open(det, mode="update") as h:
        h[1].header["STKXFMID"] = "0123456789abcdef"
    assert match_main([str(det), str(sample / f"{stack}_gaia.fits"), str(tmp_path / "p.fits"),
                       "mode=h", "verbose=0"]) == 0
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if "STKXFMID" in ln]
    assert len(lines) == 1 and "WARNING" in lines[0] and "STKXFMID=0123456789abcdef" in lines[0]
    assert stack in lines[0] and "det.fits" in lines[0]
