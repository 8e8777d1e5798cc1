"""stk_astrometry.formats.detcorr: the corrected-detections file (formats.md §2a)."""

import numpy as np
import pytest
from astropy.io import fits

from stk_astrometry.errors import FormatError
from stk_astrometry.formats import detcorr

from formats_testlib import (
    HIST,
    assert_damaged_copies_are_clean_errors,
    components,
    equal_tables,
    keywords,
)


@pytest.mark.parametrize("n", [0, 4])
def test_detcorr_round_trip(tmp_path, n):
    rng = np.random.default_rng(5)
    cols = {c: rng.normal(size=n) for c in detcorr.COLUMNS}
    cols["region_id"] = np.arange(n)
    if n:
        cols["xi_corr"][1] = np.nan
    keys = keywords(components()[0])
    detcorr.write_detcorr(tmp_path / "d.fits", cols, keys, HIST)
    d = detcorr.read_detcorr(tmp_path / "d.fits")
    equal_tables({k: (v.astype(np.int32) if k == "region_id" else v) for k, v in cols.items()},
                  d.columns)
    assert [(k, v) for k, v, _ in d.keywords] == [(k, v) for k, v, _ in keys]


def _detcorr_columns(n, dtype=float):
    rng = np.random.default_rng(n)
    cols = {c: rng.normal(size=n).astype(dtype) for c in detcorr.COLUMNS}
    cols["region_id"] = np.arange(1, n + 1, dtype=np.int64)
    return cols


def test_detcorr_file_layout_as_documented(tmp_path):
    """CONTENT in the primary, HDU DETECTIONS with int32 region_id and float64 positions (even
    from float32 input), TUNITn deg/arcsec, TCOMMn on every column, the transform's keywords
    in both headers."""
    keys = keywords(components()[0])
    cols = _detcorr_columns(3, dtype=np.float32)
    detcorr.write_detcorr(tmp_path / "d.fits", cols, keys, HIST)
    with fits.open(tmp_path / "d.fits") as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "DETECTIONS"]
        h0, h1 = hdul[0].header, hdul["DETECTIONS"].header
        assert h0["CONTENT"] == "STKDETCORR"
        assert h0.comments["CONTENT"] == "stk_xfm corrected detections"
        assert "CONTENT" not in h1
        t = hdul["DETECTIONS"]
        assert t.columns.names == list(detcorr.COLUMNS)
        assert t.columns["region_id"].format == "J" and t.columns["region_id"].unit is None
        for c in detcorr.COLUMNS[1:]:
            assert t.columns[c].format == "D", c
            assert t.columns[c].unit == ("deg" if c.startswith(("ra", "dec")) else "arcsec"), c
        for i in range(1, h1["TFIELDS"] + 1):
            assert h1.get(f"TCOMM{i}"), h1[f"TTYPE{i}"]
        for h in (h0, h1):
            assert h["STACKID"] == "hrciJ1234567m123456_002" and h["QAFLAGS"] == 24
            assert h["DEC_STACK"] == -12.5
        assert len(t.data) == 3
    d = detcorr.read_detcorr(tmp_path / "d.fits")
    assert d.path == str(tmp_path / "d.fits")
    assert d.columns["region_id"].tolist() == [1, 2, 3]
    assert np.array_equal(d.columns["xi_corr"], cols["xi_corr"].astype(float))


def test_detcorr_as_hdulist_is_the_file_layout():
    keys = keywords(components()[0])
    hdul = detcorr.build_detcorr_hdul(_detcorr_columns(2), keys)
    assert hdul[0].header["CONTENT"] == "STKDETCORR"
    assert hdul["DETECTIONS"].columns.names == list(detcorr.COLUMNS)
    assert hdul["DETECTIONS"].columns["ra_corr"].unit == "deg"
    assert hdul["DETECTIONS"].header["STACKID"] == "hrciJ1234567m123456_002"


def test_detcorr_writer_refuses_an_existing_file_without_clobber(tmp_path):
    from stk_astrometry.errors import OutputError

    keys = keywords(components()[0])
    path = tmp_path / "d.fits"
    detcorr.write_detcorr(path, _detcorr_columns(2), keys, HIST)
    before = path.read_bytes()
    with pytest.raises(OutputError):
        detcorr.write_detcorr(path, _detcorr_columns(4), keys, HIST)
    assert path.read_bytes() == before
    detcorr.write_detcorr(path, _detcorr_columns(4), keys, HIST, clobber=True)
    assert len(detcorr.read_detcorr(path).columns["ra"]) == 4


def test_detcorr_reader_names_what_is_wrong(tmp_path):
    keys = keywords(components()[0])
    detcorr.write_detcorr(tmp_path / "d.fits", _detcorr_columns(2), keys, HIST)
    with fits.open(tmp_path / "d.fits") as hdul:
        hdul["DETECTIONS"].columns.del_col("xi_corr")
        hdul.writeto(tmp_path / "nocol.fits")
        hdul.pop(1)
        hdul.writeto(tmp_path / "nohdu.fits")
    with pytest.raises(FormatError, match=r"nocol\.fits\[DETECTIONS\]: missing column\(s\) xi_corr$"):
        detcorr.read_detcorr(tmp_path / "nocol.fits")
    with pytest.raises(FormatError, match=r"nohdu\.fits: no DETECTIONS HDU$"):
        detcorr.read_detcorr(tmp_path / "nohdu.fits")
    fits.HDUList([fits.PrimaryHDU()]).writeto(tmp_path / "other.fits")
    with pytest.raises(FormatError, match=r"not a corrected-detections file \(CONTENT != STKDETCORR\)"):
        detcorr.read_detcorr(tmp_path / "other.fits")


def test_damaged_detcorr_file_is_one_clean_error(tmp_path, recwarn):
    """A truncated, non-FITS, foreign or missing file: InputError/FormatError, no raw warning."""
    good = tmp_path / "good.fits"
    cols = {c: np.arange(5, dtype=float) for c in detcorr.COLUMNS}
    detcorr.write_detcorr(good, cols, keywords(components()[0]), HIST)
    assert_damaged_copies_are_clean_errors(good, detcorr.read_detcorr, tmp_path, recwarn)
