"""stk_astrometry.fitsread: binary tables straight from the file's bytes, as fitsio reads them."""

import gzip
import warnings

import fitsio
import numpy as np
import pytest
from astropy.io import fits

from stk_astrometry import fitsread, tableio
from stk_astrometry.fitsread import read_hdus, table_columns
from stk_astrometry.formats import _fits

from formats_testlib import HIST


def _every_kind():
    from test_formats_fits import _plain_specs_of_every_kind

    return _plain_specs_of_every_kind()


def _fitsio_columns(path, ext):
    """What fitsio's hdu.read() gives (rows) or its record dtype (no rows)."""
    with fitsio.FITS(str(path)) as fh:
        hdu = fh[ext]
        if hdu.get_nrows():
            data = hdu.read()
            return {n: data[n] for n in hdu.get_colnames()}
        dt = hdu.get_rec_dtype()[0]
        return {n: np.zeros((0,) + dt[n].shape, dtype=dt[n].base) for n in hdu.get_colnames()}


def _same(got, want):
    assert list(got) == list(want)
    for name, arr in want.items():
        a = got[name]
        assert a.dtype == arr.dtype.newbyteorder("=") and a.dtype.byteorder in "=|", name
        assert a.shape == arr.shape and a.flags.writeable and a.flags.owndata, name
        assert np.array_equal(a, arr, equal_nan=a.dtype.kind == "f"), name


def test_tables_read_as_fitsio_reads_them(tmp_path):
    # logical, strings (padded, empty), int16/32/64, float32/64 with NaN, a vector column,
    # a table without rows; headers as raw_header gives them
    path = tmp_path / "k.fits"
    _fits.write_fits_fast(path, _every_kind(), HIST, clobber=False)
    hdus = read_hdus(path)
    assert [(h.exttype, h.extname) for h in hdus] == [("IMAGE_HDU", ""), ("BINARY_TBL", "TAB"),
                                                     ("BINARY_TBL", "EMPTY")]
    assert table_columns(hdus[0]) is None
    with fitsio.FITS(str(path)) as fh:
        for i, hdu in enumerate(hdus):
            want = tableio.raw_header(path, fh[i])
            assert [(c.keyword, c.value, c.comment) for c in hdu.header.cards] == \
                [(c.keyword, c.value, c.comment) for c in want.cards]
    for i in (1, 2):
        _same(table_columns(hdus[i]), _fitsio_columns(path, i))
    tab = table_columns(hdus[1])
    assert tab["flag"].tolist() == [True, False, True] and tab["name"].tolist() == ["a", "bcd", ""]
    assert tab["vec"].shape == (3, 2) and np.isnan(tab["ra"][1])


def test_an_astropy_table_with_blank_padded_strings_and_a_byte_column(tmp_path):
    cols = [fits.Column("s", "6A", array=np.array(["ab ", " c", ""])),
            fits.Column("b", "B", array=np.array([0, 200, 255], dtype=np.uint8)),
            fits.Column("f", "3E", array=np.arange(9, dtype=np.float32).reshape(3, 3)),
            fits.Column("l", "L", array=np.array([False, True, False]))]
    fits.HDUList([fits.PrimaryHDU(np.zeros((2, 3))),
                  fits.BinTableHDU.from_columns(cols, name="T")]).writeto(tmp_path / "a.fits")
    hdus = read_hdus(tmp_path / "a.fits")
    assert [h.exttype for h in hdus] == ["IMAGE_HDU", "BINARY_TBL"]
    _same(table_columns(hdus[1]), _fitsio_columns(tmp_path / "a.fits", 1))


@pytest.mark.parametrize("column, header", [
    (fits.Column("x", "J", array=[1, 2], bzero=32768), {}),          # scaled (TZERO)
    (fits.Column("x", "8X", array=np.zeros((2, 1), dtype=np.uint8)), {}),   # bits
    (fits.Column("x", "PJ()", array=np.array([[1], [2, 3]], dtype=object)), {}),  # heap
    (fits.Column("x", "4J", array=np.zeros((2, 4), dtype=np.int32), dim="(2,2)"), {}),
    (fits.Column("x", "C", array=[1j, 2]), {}),
    (fits.Column("x", "J", array=[1, 2]), {"TSCAL1": 2.0}),
])
def test_tables_it_does_not_read_are_left_to_the_caller(tmp_path, column, header):
    hdu = fits.BinTableHDU.from_columns([column])
    for key, value in header.items():
        hdu.header[key] = value
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(tmp_path / "t.fits")
    hdus = read_hdus(tmp_path / "t.fits")
    assert hdus is not None and table_columns(hdus[1]) is None


def test_files_it_does_not_parse_are_left_to_the_caller(tmp_path):
    good = tmp_path / "g.fits"
    _fits.write_fits_fast(good, _every_kind(), HIST, clobber=False)
    raw = good.read_bytes()
    cases = {"gz": gzip.compress(raw), "text": b"not FITS at all" * 400,
             "cut": raw[:-100], "cut in a table": raw[:2880 * 4 + 10],
             "no end": raw[:2880].replace(b"END     ", b"ENX     "),
             "odd xtension": raw.replace(b"XTENSION= 'BINTABLE'", b"XTENSION= 'FOOTABLE'"),
             "bad naxis": raw.replace(b"NAXIS   =                    2",
                                      b"NAXIS   =                  2.0", 1)}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        assert read_hdus(tmp_path / name) is None, name
    # bytes after the last HDU: the caller's reader decides what they are
    (tmp_path / "tail").write_bytes(raw + b"\0" * 100)
    assert read_hdus(tmp_path / "tail") is None
    assert len(read_hdus(good)) == 3


def test_catalog_reader_takes_the_same_table_either_way(tmp_path, monkeypatch):
    # tableio: block by number, by name (any case), the first table; TNULL; the same table,
    # header and label with and without the raw path
    cols = [fits.Column("ID", "K", array=[1, 2, 3], null=-1),
            fits.Column("ra", "D", array=[1.0, np.nan, 3.0], unit="deg"),
            fits.Column("cls", "8A", array=["TRUE", "MARGINAL", ""])]
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.zeros(3), name="IMG"),
                  fits.BinTableHDU.from_columns(cols, name="SRCLIST")]).writeto(tmp_path / "c.fits")
    got = {}
    for how in ("raw", "fitsio"):
        if how == "fitsio":
            monkeypatch.setattr(fitsread, "read_hdus", lambda path: None)
        got[how] = [tableio._read_with_fitsio(tmp_path / "c.fits", block)
                    for block in (None, 3, "srclist", 2, 4, "NOPE")]
    for a, b in zip(got["raw"], got["fitsio"], strict=True):
        assert (a is None) == (b is None)
        if a is None:
            continue
        (ta, ha, la), (tb, hb, lb) = a, b
        assert la == lb and ta._nulls == tb._nulls == {"ID": -1}
        assert [c.image for c in ha.cards] == [c.image for c in hb.cards]
        _same(ta._columns, tb._columns)
    assert got["raw"][3:] == [None, None, None]      # an image, no such HDU: astropy's path
    assert got["raw"][0][2].endswith("c.fits[SRCLIST]")
