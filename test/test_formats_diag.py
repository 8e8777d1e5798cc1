"""stk_astrometry.formats.diag: the diagnostics file (formats.md §2b) -- the pair HDUs copied
with their header cards, plus used_spec and p_true."""

import numpy as np
import pytest
from astropy.io import fits

from stk_astrometry.errors import FormatError
from stk_astrometry.formats import diag, pairs

from formats_testlib import (
    HIST,
    assert_damaged_copies_are_clean_errors,
    equal_tables,
    make_pairs,
)


def test_diag_round_trip(tmp_path):
    rng = np.random.default_rng(7)
    p = make_pairs(rng, n_gaia=5, n_wise=0, n_wg=3)
    used = {"GAIA_PAIRS": np.array([True, False, True, True, False])}
    p_true = {"GAIA_PAIRS": np.array([0.9, 0.1, np.nan, 1.0, 0.0])}
    diag.write_diag(tmp_path / "g.fits", p, used, p_true, HIST)
    g = diag.read_diag(tmp_path / "g.fits")
    for name in diag.HDUS:
        n = p.n_rows(name)
        want = dict(p.tables[name], used_spec=used.get(name, np.zeros(n, bool)),
                    p_true=p_true.get(name, np.full(n, np.nan)))
        equal_tables(want, g.tables[name])
    with fits.open(tmp_path / "g.fits") as hdul:
        assert hdul["GAIA_PAIRS"].header["STACKID"] == p.stackid
        assert hdul["WISE_PAIRS"].data is None or len(hdul["WISE_PAIRS"].data) == 0


def test_diag_copies_a_pairs_files_hdus_with_their_cards(tmp_path):
    """From a pairs file read back: every pair HDU keeps its header cards (long comments
    included), units, TCOMMn/TUCDn; used_spec is logical, p_true float64; the primary holds
    CONTENT and the mixture's keywords."""
    p = make_pairs(np.random.default_rng(8), n_gaia=3, n_wise=2, n_wg=2)
    long_note = ("x" * 30, "a comment kept with its card")
    pairs.write_pairs(p, tmp_path / "p.fits", HIST)
    q = pairs.read_pairs(tmp_path / "p.fits")
    q.cards["GAIA_PAIRS"] = q.cards["GAIA_PAIRS"] + (("NOTE",) + long_note,)
    used = {"GAIA_PAIRS": [1, 0, 1]}
    p_true = {"GAIA_PAIRS": [0.5, 0.25, 1]}
    diag.write_diag(tmp_path / "g.fits", q, used, p_true, HIST,
                    keywords=(("SYSERR", 0.125, "[arcsec] fitted floor"),
                              ("ERRSCALE", 1.5, "fitted scale")))
    with fits.open(tmp_path / "g.fits") as hdul:
        h0 = hdul[0].header
        assert h0["CONTENT"] == "STKXFMDIAG"
        assert h0.comments["CONTENT"] == "stk_xfm diagnostics: pairs used"
        assert (h0["SYSERR"], h0["ERRSCALE"]) == (0.125, 1.5)
        assert [h.name for h in hdul[1:]] == list(diag.HDUS)
        for name in diag.HDUS:
            t = hdul[name]
            names = [c for c, _, _ in pairs.LAYOUTS[name]]
            assert t.columns.names == names + ["used_spec", "p_true"], name
            assert t.columns["used_spec"].format == "L" and t.columns["p_true"].format == "D"
            for c, fmt, unit in pairs.LAYOUTS[name]:
                if fmt:
                    assert t.columns[c].format == fmt, (name, c)
                assert (t.columns[c].unit or "") == unit, (name, c)
            h = t.header
            assert h["STACKID"] == p.stackid and h["DEC_STACK"] == -89.5
            desc = {h[f"TTYPE{i}"]: h.get(f"TCOMM{i}") for i in range(1, h["TFIELDS"] + 1)}
            ucd = {h[f"TTYPE{i}"]: h.get(f"TUCD{i}") for i in range(1, h["TFIELDS"] + 1)}
            assert all(desc[c] for c in names), name
            if name == "WISE_GAIA":
                assert desc["d_xi"] == "Offset in xi, Gaia minus ALLWISE"
            else:
                assert ucd["sep"] == "pos.angDistance"
        g = hdul["GAIA_PAIRS"]
        assert g.header["NOTE"] == long_note[0]
        assert g.header.comments["NOTE"] == long_note[1]
        assert g.data["used_spec"].tolist() == [True, False, True]
        assert g.data["p_true"].tolist() == [0.5, 0.25, 1.0]
        assert not hdul["WISE_PAIRS"].data["used_spec"].any()
        assert np.isnan(hdul["WISE_GAIA"].data["p_true"]).all()


def test_diag_histnum_counts_the_history_records_it_holds(tmp_path):
    """A copy of a pairs file's HDU does not carry that file's HISTORY, so nor its HISTNUM: in
    every HDU of the diagnostics file HISTNUM is the last ASCnnnnn counter of the HISTORY
    records there, numbered from 1 (ciao-conventions 2.4) -- whether the pairs came from the
    file or from memory (the API's fit of a MatchResult), the headers number alike."""
    p = make_pairs(np.random.default_rng(9), n_gaia=3, n_wise=2, n_wg=2)
    pairs.write_pairs(p, tmp_path / "p.fits", HIST)
    with fits.open(tmp_path / "p.fits") as hdul:
        assert hdul["GAIA_PAIRS"].header["HISTNUM"] > 0
    for source, name in ((pairs.read_pairs(tmp_path / "p.fits"), "file.fits"), (p, "mem.fits")):
        diag.write_diag(tmp_path / name, source, {}, {}, HIST)
    counters = {}
    for name in ("file.fits", "mem.fits"):
        with fits.open(tmp_path / name) as hdul:
            for hdu in hdul:
                asc = [int(str(v)[-5:]) for v in hdu.header["HISTORY"] if str(v)[-8:-5] == "ASC"]
                assert asc and asc == list(range(1, len(asc) + 1)), (name, hdu.name)
                assert hdu.header["HISTNUM"] == asc[-1], (name, hdu.name)
                assert list(hdu.header.keys()).count("HISTNUM") == 1
                counters.setdefault(hdu.name, set()).add(hdu.header["HISTNUM"])
    assert all(len(v) == 1 for v in counters.values()), counters


def test_diag_of_in_memory_pairs_repeats_the_stack_keywords(tmp_path):
    """Pairs built in memory have no cards: each HDU gets the stack keywords, comments kept
    as far as the card holds them (a long STACKID keeps the start of its comment)."""
    p = make_pairs(np.random.default_rng(8), n_gaia=2, n_wise=0, n_wg=1)
    stackid = "acisfJ0000000p000000_001_" + "x" * 26      # 51 characters
    keys = tuple(("STACKID", stackid, "detect_stack_id") if k[0] == "STACKID" else k
                 for k in p.keywords)
    p = pairs.Pairs(**{**p.__dict__, "keywords": keys, "stackid": stackid})
    diag.write_diag(tmp_path / "g.fits", p, {}, {}, HIST)
    with fits.open(tmp_path / "g.fits") as hdul:
        for name in diag.HDUS:
            h = hdul[name].header
            assert h["STACKID"] == stackid and h.comments["STACKID"].startswith("detect_stack")
            assert h["INSTRUME"] == "HRC" and h["RA_STACK"] == 359.9999
            assert "MATCHRAD" not in h and "METHOD" not in h    # primary-only keywords
        assert "SYSERR" not in hdul[0].header


def test_diag_as_hdulist_fills_what_was_not_given():
    p = make_pairs(np.random.default_rng(8), n_gaia=2, n_wise=0, n_wg=3)
    hdul = diag.build_diag_hdul(p, {"GAIA_PAIRS": [True, False]}, {"GAIA_PAIRS": [0.1, 0.9]},
                                (("SYSERR", 0.2, ""),))
    assert hdul[0].header["CONTENT"] == "STKXFMDIAG" and hdul[0].header["SYSERR"] == 0.2
    assert hdul["GAIA_PAIRS"].data["used_spec"].tolist() == [True, False]
    wg = hdul["WISE_GAIA"]
    assert wg.data["used_spec"].tolist() == [False] * 3
    assert np.isnan(wg.data["p_true"]).all() and len(wg.data["p_true"]) == 3
    assert wg.header["STACKID"] == p.stackid


def test_diag_writer_refuses_an_existing_file_without_clobber(tmp_path):
    from stk_astrometry.errors import OutputError

    p = make_pairs(np.random.default_rng(8))
    diag.write_diag(tmp_path / "g.fits", p, {}, {}, HIST)
    with pytest.raises(OutputError):
        diag.write_diag(tmp_path / "g.fits", p, {}, {}, HIST)
    diag.write_diag(tmp_path / "g.fits", p, {}, {}, HIST, clobber=True)


def test_diag_reader_names_what_is_wrong(tmp_path):
    p = make_pairs(np.random.default_rng(8))
    diag.write_diag(tmp_path / "g.fits", p, {}, {}, HIST)
    with fits.open(tmp_path / "g.fits") as hdul:
        hdul["WISE_GAIA"].columns.del_col("p_true")
        hdul.writeto(tmp_path / "nocol.fits")
        hdul.pop(2)
        hdul.writeto(tmp_path / "nohdu.fits")
    with pytest.raises(FormatError, match=r"nocol\.fits\[WISE_GAIA\]: no p_true column$"):
        diag.read_diag(tmp_path / "nocol.fits")
    with pytest.raises(FormatError, match=r"nohdu\.fits: no WISE_PAIRS HDU$"):
        diag.read_diag(tmp_path / "nohdu.fits")
    fits.HDUList([fits.PrimaryHDU()]).writeto(tmp_path / "other.fits")
    with pytest.raises(FormatError, match=r"not a diagnostics file \(CONTENT != STKXFMDIAG\)"):
        diag.read_diag(tmp_path / "other.fits")
    assert diag.read_diag(tmp_path / "g.fits").path == str(tmp_path / "g.fits")


def test_diag_keeps_the_pairs_layout_whatever_the_in_memory_dtypes(tmp_path):
    """region_id stays int32 ('J') and ids int64 ('K') as formats.md §1 lays them out, even
    from in-memory pairs with other integer widths and without units."""
    p = make_pairs(np.random.default_rng(8), n_gaia=2, n_wise=0, n_wg=1)
    tables = {name: dict(cols) for name, cols in p.tables.items()}
    tables["GAIA_PAIRS"]["region_id"] = tables["GAIA_PAIRS"]["region_id"].astype(np.int64)
    tables["GAIA_PAIRS"]["group"] = tables["GAIA_PAIRS"]["group"].astype(np.int16)
    tables["WISE_GAIA"]["wise_id"] = tables["WISE_GAIA"]["wise_id"].astype(np.int32)
    p = pairs.Pairs(**{**p.__dict__, "tables": tables, "units": {}})
    diag.write_diag(tmp_path / "g.fits", p, {}, {}, HIST)
    with fits.open(tmp_path / "g.fits") as hdul:
        g = hdul["GAIA_PAIRS"].columns
        assert (g["region_id"].format, g["group"].format, g["ref_id"].format) == ("J", "J", "K")
        assert hdul["WISE_GAIA"].columns["wise_id"].format == "K"
        assert g["det_ra"].unit is None


def test_diag_copy_of_a_pairs_file_has_each_keyword_once(tmp_path):
    p = make_pairs(np.random.default_rng(8))
    pairs.write_pairs(p, tmp_path / "p.fits", HIST)
    diag.write_diag(tmp_path / "g.fits", pairs.read_pairs(tmp_path / "p.fits"), {}, {}, HIST)
    with fits.open(tmp_path / "g.fits") as hdul:
        for name in diag.HDUS:
            keys = [k for k in hdul[name].header.keys() if k not in ("HISTORY", "COMMENT")]
            assert len(keys) == len(set(keys)), name
            assert keys.count("STACKID") == 1 and keys.count("DTYPE1") == 1


def test_damaged_diag_file_is_one_clean_error(tmp_path, recwarn):
    """A truncated, non-FITS, foreign or missing file: InputError/FormatError, no raw warning."""
    good = tmp_path / "good.fits"
    p = make_pairs(np.random.default_rng(3), n_gaia=40, n_wise=0, n_wg=3)
    diag.write_diag(good, p, {}, {}, HIST)
    assert_damaged_copies_are_clean_errors(good, diag.read_diag, tmp_path, recwarn)
