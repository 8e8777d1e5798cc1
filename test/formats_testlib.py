"""Helpers shared by the file-format modules' tests (test/test_formats_<module>.py): in-memory
pairs tables, transform components and keywords, table comparison, damaged copies of a file."""

import numpy as np
import pytest
from astropy.io import fits

from stk_astrometry.api import _Run
from stk_astrometry.errors import FormatError, InputError
from stk_astrometry.formats import pairs, transform

HIST = _Run("stk_test", {"infile": "x.fits", "clobber": True})


def equal_tables(a, b):
    assert list(a) == list(b)
    for name in a:
        x, y = np.asarray(a[name]), np.asarray(b[name])
        assert x.shape == y.shape, name
        if x.dtype.kind in "fc":
            assert np.array_equal(x, y, equal_nan=True), name
        else:
            assert np.array_equal(x.astype(str) if x.dtype.kind in "US" else x,
                                  y.astype(str) if y.dtype.kind in "US" else y), name


def pair_columns(rng, n, *, layout):
    cols = {}
    for name, fmt, _ in layout:
        if fmt == "J":
            cols[name] = rng.integers(-5, 1000, n).astype(np.int32)
        elif fmt == "K":
            cols[name] = rng.integers(0, 2**62, n, dtype=np.int64)
        elif fmt is None:
            cols[name] = np.array(["TRUE", "MARGINAL", "X"][:n] + ["TRUE"] * max(0, n - 3))
        else:
            cols[name] = rng.normal(size=n)
            if n:
                cols[name][0] = np.nan
    return cols


def make_pairs(rng, *, n_det=3, n_gaia=4, n_wise=0, n_wg=2):
    tables = {"DETECTIONS": pair_columns(rng, n_det, layout=pairs.DETECTIONS_LAYOUT),
              "GAIA_PAIRS": pair_columns(rng, n_gaia, layout=pairs.PAIRS_LAYOUT),
              "WISE_PAIRS": pair_columns(rng, n_wise, layout=pairs.PAIRS_LAYOUT),
              "WISE_GAIA": pair_columns(rng, n_wg, layout=pairs.WISE_GAIA_LAYOUT)}
    units = {name: {c: u for c, _, u in pairs.LAYOUTS[name] if u} for name in pairs.TABLE_HDUS}
    keys = (("STACKID", "acisfJ0000000p000000_001", "detect_stack_id"),
            ("INSTRUME", "HRC", "ACIS or HRC"),
            ("RA_STACK", 359.9999, "[deg] stack tangent point RA"),
            ("DEC_STACK", -89.5, "[deg] stack tangent point Dec"),
            ("MATCHRAD", 3.0, "[arcsec] cross-match radius"),
            ("SEPBINS", "1,2,3", "[arcsec] upper edges of separation groups"),
            ("NGROUPS", 3, "number of separation groups"),
            ("DENSGAIA", 1.5, "[arcmin-2] Gaia within RSTACK, unfiltered"),
            ("DENSWISE", None, "undefined stays undefined"),
            ("HAVEWISE", False, "ALLWISE inputs given?"),
            ("METHOD", "direct", "direct, twostep or none"))
    return pairs.Pairs(stackid=keys[0][1], instrument="HRC", ra_stack=359.9999,
                       dec_stack=-89.5, method="direct", n_groups=3, match_radius=3.0,
                       dens_gaia=1.5, dens_wise=None, keywords=keys, tables=tables,
                       units=units, cards={})


def components():
    return (transform.Component("TOTAL", 0.25, -0.5, np.array([[0.01, 0.002], [0.002, 0.04]]),
                                12, 2, 0.7, 0.4),
            transform.Component("DET_TO_WISE", 0.2, -0.4, np.full((2, 2), np.nan), 0, 0,
                                np.nan, np.nan),
            transform.Component("WISE_TO_GAIA", 0.05, -0.1, np.eye(2) * 1e-4, 40, 0, 0.3, 0.1))


def keywords(total):
    return transform.transform_keywords(
        stackid="hrciJ1234567m123456_002", instrument="HRC", ra_stack=10.0, dec_stack=-12.5,
        method="twostep", estimator="spec", loss="cauchy", f_scale=1.0, total=total,
        n_match=9, qa_flags=24, qa_reason="FEWMATCH: x; DISAGREE: " + "y" * 80,
        n_eff=None, alternative=("mixture", total))


def damaged_copies(good, tmp_path):
    """A file cut short inside its data, a file of text, and a FITS file of another kind."""
    raw = good.read_bytes()
    cut = tmp_path / "cut.fits"
    cut.write_bytes(raw[:len(raw) - 2880 - 100])
    text = tmp_path / "text.fits"
    text.write_text("not a FITS file\n")
    other = tmp_path / "other.fits"
    fits.HDUList([fits.PrimaryHDU()]).writeto(other)
    return cut, text, other


def assert_damaged_copies_are_clean_errors(good, reader, tmp_path, recwarn):
    """``reader`` reads ``good``; on a truncated, non-FITS, foreign or missing file it raises
    InputError/FormatError naming the file, with no raw astropy warning."""
    reader(good)
    cut, text, other = damaged_copies(good, tmp_path)
    for bad, err in ((cut, InputError), (text, InputError), (other, FormatError),
                     (tmp_path / "absent.fits", InputError)):
        with pytest.raises(err, match=str(bad.name)):
            reader(bad)
    assert not [w for w in recwarn if "astropy" in type(w.message).__module__], \
        [str(w.message) for w in recwarn]
