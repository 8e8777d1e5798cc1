"""stk_astrometry.formats.pairs: the matched-pairs file (share/doc/formats.md §1) -- what
stk_match writes from the matching core, its header layout, the reader's checks."""

import numpy as np
import pytest
from astropy.io import fits

from stk_astrometry.errors import FormatError, InputError
from stk_astrometry.formats import pairs

from formats_testlib import (
    HIST,
    equal_tables,
    make_pairs,
)


@pytest.mark.parametrize("sizes", [dict(), dict(n_det=0, n_gaia=0, n_wise=0, n_wg=0),
                                   dict(n_det=5, n_gaia=1, n_wise=7, n_wg=0)])
def test_pairs_round_trip(tmp_path, sizes):
    rng = np.random.default_rng(3)
    p = make_pairs(rng, **sizes)
    pairs.write_pairs(p, tmp_path / "p.fits", HIST)
    q = pairs.read_pairs(tmp_path / "p.fits")
    for name in pairs.TABLE_HDUS:
        equal_tables(p.tables[name], q.tables[name])
        assert q.units[name] == p.units[name]
    assert q.keywords == p.keywords
    for attr in ("stackid", "instrument", "ra_stack", "dec_stack", "method", "n_groups",
                 "match_radius", "dens_gaia", "dens_wise"):
        assert getattr(q, attr) == getattr(p, attr), attr
    # written again from what was read: the same file content
    pairs.write_pairs(q, tmp_path / "q.fits", HIST)
    diff = fits.FITSDiff(str(tmp_path / "p.fits"), str(tmp_path / "q.fits"),
                         ignore_keywords=["DATE", "CHECKSUM", "DATASUM", "HISTORY"])
    assert diff.identical, diff.report()
    with fits.open(tmp_path / "p.fits") as hdul:
        assert hdul[0].header["CONTENT"] == "STKPAIRS"
        assert hdul[0].header["DTYPE1"] == "DEC_STACK"       # the CXC long-keyword convention
        assert all(h.header["STACKID"] == p.stackid for h in hdul)
        assert hdul["GAIA_PAIRS"].columns["ref_id"].format == "K"


def test_pairs_reader_names_what_is_missing(tmp_path):
    p = make_pairs(np.random.default_rng(1))
    hdul = pairs.build_pairs_hdul(p)
    del hdul["GAIA_PAIRS"].columns
    hdul.pop(2)
    hdul.writeto(tmp_path / "bad.fits")
    with pytest.raises(FormatError, match="GAIA_PAIRS"):
        pairs.read_pairs(tmp_path / "bad.fits")


def test_long_keyword_is_a_plain_keyword_and_a_cxc_pair(tmp_path):
    """DEC_STACK: astropy and fitsio read it by name; CIAO's DTYPEn/DVALn pair is kept."""
    import fitsio

    from stk_astrometry.fitsutil import get_keyword

    p = make_pairs(np.random.default_rng(4))
    pairs.write_pairs(p, tmp_path / "p.fits", HIST)
    for ext in range(5):
        h = fits.getheader(tmp_path / "p.fits", ext)
        assert h["DEC_STACK"] == -89.5                    # astropy, no helper
        assert h["DTYPE1"] == "DEC_STACK" and h["DVAL1"] == -89.5
        assert get_keyword(h, "DEC_STACK") == -89.5
    assert fitsio.read_header(str(tmp_path / "p.fits"), ext=0)["DEC_STACK"] == -89.5
    # short keywords are plain, never DTYPEn pairs or CONTINUE cards when under 68 characters
    text = (tmp_path / "p.fits").read_bytes()[:2880 * 3].decode("ascii")
    assert "CONTINUE" not in text
    assert pairs.read_pairs(tmp_path / "p.fits").keywords == p.keywords


_T0 = (150.0, 2.0)      # the stack's tangent point


def _sky(xi, eta):
    from stk_astrometry.tangent import tangent_to_sky

    return tangent_to_sky(np.asarray(xi, float), np.asarray(eta, float), *_T0)


def _match_inputs(*, with_wise=True, gaia_errors=True):
    from stk_astrometry import matching

    dxi, deta = np.array([0.0, 60.0, -100.0, 120.0]), np.array([0.0, -30.0, 50.0, 120.0])
    ra, dec = _sky(dxi, deta)
    det = matching.Detections(
        region_id=np.array([11, 22, 33, 44]), ra_deg=ra, dec_deg=dec,
        err_r0_arcsec=np.array([1.1, 1.2, 1.3, 1.4]), err_r1_arcsec=np.array([0.6, 0.7, 0.8, 0.9]),
        err_ang_deg=np.array([10.0, 20.0, 30.0, 40.0]),
        theta_arcmin=np.array([2.5, 3.5, 4.5, 5.5]), src_cnts=np.array([50.0, 60.0, 70.0, 80.0]),
        likelihood_class=np.array(["TRUE", "MARGINAL", "FALSE", "TRUE"]))
    gxi = np.array([0.5, 61.2, -2.0, 300.0])
    geta = np.array([0.0, -29.0, 1.5, -300.0])
    gra, gdec = _sky(gxi, geta)
    gaia = matching.GaiaSources(
        source_id=np.array([5001, 5002, 5003, 5004], dtype=np.int64), ra_deg=gra, dec_deg=gdec,
        pmra_masyr=np.array([1.0, 2.0, 3.0, 4.0]), pmdec_masyr=np.array([-1.0, -2.0, 0.0, 1.0]),
        sigra_arcsec=np.array([0.01, 0.02, 0.03, 0.04]) if gaia_errors else None,
        sigdec_arcsec=np.array([0.05, 0.06, 0.07, 0.08]) if gaia_errors else None)
    if not with_wise:
        return det, gaia, None, None
    wxi, weta = np.array([60.3, 300.2]), np.array([-30.2, -300.1])
    wra, wdec = _sky(wxi, weta)
    wise = matching.WiseSources(
        allwise_oid=np.array([7001, 7002], dtype=np.int64), ra_deg=wra, dec_deg=wdec,
        sigra_arcsec=np.array([0.15, 0.25]), sigdec_arcsec=np.array([0.35, 0.45]),
        cc_flags=np.array(["0000", "0000"]))
    best = matching.BestNeighbours(source_id=np.array([5002, 5004], dtype=np.int64),
                                   allwise_oid=np.array([7001, 7002], dtype=np.int64))
    return det, gaia, wise, best


def _pairs_from_inputs(det, gaia, wise, best, **config):
    from stk_astrometry import matching

    cfg = matching.MatchConfig(*_T0, **{"r_stack_arcmin": 10.0, "sep_bins_arcsec": (1.0, 2.0, 3.0),
                                        "max_pm_masyr": 40.0, "match_radius_arcsec": 3.0, **config})
    result = matching.match_stack(det, gaia, cfg, wise=wise, best_neighbours=best)
    return result, pairs.pairs_from_match(result, det, gaia, wise,
                                          stackid="acisfJ1000000p020000_001", instrument="ACIS")


def _check_pair_rows(table, det, ref_id, ref_ra, ref_dec, sigra, sigdec, want):
    from stk_astrometry.tangent import sky_to_tangent

    got = sorted(zip(table["region_id"].tolist(), table["ref_id"].tolist(), strict=True))
    assert got == sorted(want)
    assert table["region_id"].dtype == np.int32 and table["ref_id"].dtype == np.int64
    assert table["group"].dtype == np.int32 and table["n_cand"].dtype == np.int32
    for k in range(len(table["region_id"])):
        d = list(det.region_id).index(table["region_id"][k])
        r = list(ref_id).index(table["ref_id"][k])
        assert table["det_ra"][k] == det.ra_deg[d] and table["det_dec"][k] == det.dec_deg[d]
        assert table["ref_ra"][k] == ref_ra[r] and table["ref_dec"][k] == ref_dec[r]
        dx, de = sky_to_tangent(det.ra_deg[d], det.dec_deg[d], *_T0)
        rx, re_ = sky_to_tangent(ref_ra[r], ref_dec[r], *_T0)
        assert table["det_xi"][k] == pytest.approx(dx, abs=1e-9)
        assert table["det_eta"][k] == pytest.approx(de, abs=1e-9)
        assert table["ref_xi"][k] == pytest.approx(rx, abs=1e-9)
        assert table["ref_eta"][k] == pytest.approx(re_, abs=1e-9)
        assert table["d_xi"][k] == pytest.approx(rx - dx, abs=1e-6)
        assert table["d_eta"][k] == pytest.approx(re_ - de, abs=1e-6)
        assert table["sep"][k] == pytest.approx(np.hypot(rx - dx, re_ - de), abs=1e-6)
        assert table["group"][k] == min(3, int(np.ceil(table["sep"][k])))
        assert (table["err_r0"][k], table["err_r1"][k], table["err_ang"][k]) == \
            (det.err_r0_arcsec[d], det.err_r1_arcsec[d], det.err_ang_deg[d])
        assert (table["theta"][k], table["src_cnts"][k]) == (det.theta_arcmin[d], det.src_cnts[d])
        assert (table["ref_sigra"][k], table["ref_sigdec"][k]) == (sigra[r], sigdec[r])
        assert table["n_cand"][k] == sum(1 for x in table["region_id"] if x == table["region_id"][k])


def test_pairs_from_match_columns_are_the_inputs_rows(tmp_path):
    """Each column of every HDU holds the value of the right input row (formats.md §1):
    the detection's, the reference's, their tangent-plane positions and offsets."""
    det, gaia, wise, best = _match_inputs()
    result, p = _pairs_from_inputs(det, gaia, wise, best)
    assert [list(p.tables[n]) for n in pairs.TABLE_HDUS] == \
        [[c for c, _, _ in pairs.LAYOUTS[n]] for n in pairs.TABLE_HDUS]
    d = p.detections
    assert d["region_id"].tolist() == [11, 22, 44] and d["region_id"].dtype == np.int32
    rows = [0, 1, 3]
    for col, src in (("ra", det.ra_deg), ("dec", det.dec_deg), ("err_r0", det.err_r0_arcsec),
                     ("err_r1", det.err_r1_arcsec), ("err_ang", det.err_ang_deg),
                     ("theta", det.theta_arcmin), ("src_cnts", det.src_cnts)):
        assert d[col].tolist() == src[rows].tolist(), col
    assert d["xi"] == pytest.approx([0.0, 60.0, 120.0], abs=1e-9)
    assert d["eta"] == pytest.approx([0.0, -30.0, 120.0], abs=1e-9)
    assert d["likelihood_class"].tolist() == ["TRUE", "MARGINAL", "TRUE"]
    assert d["n_gaia"].tolist() == [2, 1, 0] and d["n_gaia"].dtype == np.int32
    assert d["n_wise"].tolist() == [0, 1, 0] and d["n_wise"].dtype == np.int32
    _check_pair_rows(p.tables["GAIA_PAIRS"], det, gaia.source_id, gaia.ra_deg, gaia.dec_deg,
                     gaia.sigra_arcsec, gaia.sigdec_arcsec, [(11, 5001), (11, 5003), (22, 5002)])
    _check_pair_rows(p.tables["WISE_PAIRS"], det, wise.allwise_oid, wise.ra_deg, wise.dec_deg,
                     wise.sigra_arcsec, wise.sigdec_arcsec, [(22, 7001)])
    wg = p.tables["WISE_GAIA"]
    assert sorted(zip(wg["wise_id"].tolist(), wg["gaia_id"].tolist(), strict=True)) == [(7001, 5002), (7002, 5004)]
    assert wg["wise_id"].dtype == np.int64 and wg["gaia_id"].dtype == np.int64
    for k in range(2):
        w = list(wise.allwise_oid).index(wg["wise_id"][k])
        g = list(gaia.source_id).index(wg["gaia_id"][k])
        assert (wg["wise_ra"][k], wg["wise_dec"][k]) == (wise.ra_deg[w], wise.dec_deg[w])
        assert (wg["gaia_ra"][k], wg["gaia_dec"][k]) == (gaia.ra_deg[g], gaia.dec_deg[g])
        assert (wg["wise_sigra"][k], wg["wise_sigdec"][k]) == \
            (wise.sigra_arcsec[w], wise.sigdec_arcsec[w])
        wx, we = np.array([60.3, 300.2])[w], \
            np.array([-30.2, -300.1])[w]
        gx, ge = np.array([0.5, 61.2, -2.0, 300.0])[g], np.array([0.0, -29.0, 1.5, -300.0])[g]
        assert (wg["wise_xi"][k], wg["wise_eta"][k]) == pytest.approx((wx, we), abs=1e-8)
        assert (wg["gaia_xi"][k], wg["gaia_eta"][k]) == pytest.approx((gx, ge), abs=1e-8)
        assert (wg["d_xi"][k], wg["d_eta"][k]) == pytest.approx((gx - wx, ge - we), abs=1e-6)
        assert wg["sep"][k] == pytest.approx(np.hypot(gx - wx, ge - we), abs=1e-6)
    assert p.units == {n: {c: u for c, _, u in pairs.LAYOUTS[n] if u} for n in pairs.TABLE_HDUS}
    # each result's own dicts (the layout's units are made once: issue 11)
    assert all(p.units[n] is not pairs._UNITS[n] for n in pairs.TABLE_HDUS)
    assert pairs._formats("GAIA_PAIRS", ["sep", "x"]) == {"sep": "D", "x": None}
    assert pairs._formats("DETECTIONS", ["region_id", "ra", "likelihood_class"]) == {
        c: f for c, f, _ in pairs.LAYOUTS["DETECTIONS"] if c in ("region_id", "ra",
                                                                  "likelihood_class")}
    assert pairs._formats("NONE", ["a"]) == {"a": None}
    assert p.cards == {n: () for n in pairs.TABLE_HDUS} and p.path is None
    # written and read back: the same tables and stack attributes
    pairs.write_pairs(p, tmp_path / "p.fits", HIST)
    q = pairs.read_pairs(tmp_path / "p.fits")
    for name in pairs.TABLE_HDUS:
        equal_tables(p.tables[name], q.tables[name])
    for attr in ("stackid", "instrument", "ra_stack", "dec_stack", "method", "n_groups",
                 "match_radius", "dens_gaia", "dens_wise"):
        assert getattr(q, attr) == getattr(p, attr), attr
    assert q.dens_wise == pytest.approx(2 / (np.pi * 100)) and q.match_radius == 3.0


def test_pairs_from_match_stack_keywords_as_documented():
    """The primary's keywords, in the documented order, with the match's counts."""
    det, gaia, wise, best = _match_inputs()
    result, p = _pairs_from_inputs(det, gaia, wise, best, method="twostep")
    keys = {k: v for k, v, _ in p.keywords}
    comments = {k: c for k, _, c in p.keywords}
    names = [k for k, _, _ in p.keywords]
    assert names[:14] == ["STACKID", "INSTRUME", "RA_STACK", "DEC_STACK", "RSTACK", "MATCHRAD",
                          "SEPBINS", "NGROUPS", "MAXPM", "DENSGAIA", "DENSWISE", "HAVEWISE",
                          "NMGAIA", "NMWISE"]
    assert names[14:22] == ["NMGAIA1", "NMGAIA2", "NMGAIA3", "NMWISE1", "NMWISE2", "NMWISE3",
                            "METHOD", "METHREQ"]
    assert names[22:] == [f.keyword for f in result.filters]
    assert keys["STACKID"] == "acisfJ1000000p020000_001" and keys["INSTRUME"] == "ACIS"
    assert (keys["RA_STACK"], keys["DEC_STACK"]) == _T0
    assert (keys["RSTACK"], keys["MATCHRAD"], keys["MAXPM"]) == (10.0, 3.0, 40.0)
    assert keys["SEPBINS"] == "1,2,3" and keys["NGROUPS"] == 3
    assert keys["DENSGAIA"] == pytest.approx(4 / (np.pi * 100))
    assert keys["DENSWISE"] == pytest.approx(2 / (np.pi * 100))
    assert keys["HAVEWISE"] is True
    assert (keys["NMGAIA"], keys["NMWISE"]) == (2, 1)
    assert [keys[f"NMGAIA{i}"] for i in (1, 2, 3)] == [1, 1, 1]
    assert [keys[f"NMWISE{i}"] for i in (1, 2, 3)] == [1, 0, 0]
    assert (keys["METHOD"], keys["METHREQ"]) == ("twostep", "twostep")
    assert keys["NDCLASS"] == 1 and keys["NDETIN"] == 4 and keys["NDET"] == 3
    assert all(type(v) in (str, int, float, bool) for v in keys.values())
    assert comments["STACKID"] == "detect_stack_id"
    assert comments["RA_STACK"] == "[deg] stack tangent point RA"
    assert comments["DEC_STACK"] == "[deg] stack tangent point Dec"
    assert comments["INSTRUME"] == "ACIS or HRC"
    assert comments["NMGAIA2"] == "detections with a Gaia match in group 2"
    assert comments["NMWISE3"] == "detections with an ALLWISE match in group 3"
    for f in result.filters:
        assert comments[f.keyword] == f.description[:47]
    assert (p.stackid, p.instrument, p.method, p.n_groups) == \
        ("acisfJ1000000p020000_001", "ACIS", "twostep", 3)
    assert (p.ra_stack, p.dec_stack, p.match_radius) == (*_T0, 3.0)
    assert p.dens_gaia == keys["DENSGAIA"] and p.dens_wise == keys["DENSWISE"]
    assert all(type(v) is float for v in (p.ra_stack, p.dec_stack, p.match_radius, p.dens_gaia,
                                          p.dens_wise))


def test_pairs_from_match_without_allwise():
    """No ALLWISE: empty WISE_PAIRS/WISE_GAIA with their layouts, HAVEWISE F, DENSWISE 0 in
    the header but dens_wise None; Gaia without stated errors: ref_sigra/ref_sigdec 0."""
    det, gaia, _, _ = _match_inputs(with_wise=False, gaia_errors=False)
    result, p = _pairs_from_inputs(det, gaia, None, None, sep_bins_arcsec=(1.5, 3.0))
    keys = {k: v for k, v, _ in p.keywords}
    assert keys["HAVEWISE"] is False and keys["DENSWISE"] == 0.0 and p.dens_wise is None
    assert keys["SEPBINS"] == "1.5,3" and keys["NGROUPS"] == 2 and p.n_groups == 2
    assert [keys[f"NMWISE{i}"] for i in (1, 2)] == [0, 0] and "NMWISE3" not in keys
    assert keys["METHOD"] == "direct" and keys["METHREQ"] == "auto"
    for name in ("WISE_PAIRS", "WISE_GAIA"):
        assert p.n_rows(name) == 0
        assert list(p.tables[name]) == [c for c, _, _ in pairs.LAYOUTS[name]]
    g = p.tables["GAIA_PAIRS"]
    assert g["ref_sigra"].tolist() == [0.0] * 3 and g["ref_sigdec"].tolist() == [0.0] * 3
    assert p.detections["n_wise"].tolist() == [0, 0, 0]


def test_pairset_of_a_pair_hdu_and_of_wise_gaia():
    det, gaia, wise, best = _match_inputs()
    _, p = _pairs_from_inputs(det, gaia, wise, best)
    g, ps = p.tables["GAIA_PAIRS"], p.pairs("GAIA_PAIRS")
    for field, col in (("region_id", "region_id"), ("src_xi", "det_xi"), ("src_eta", "det_eta"),
                       ("d_xi", "d_xi"), ("d_eta", "d_eta"), ("sep", "sep"), ("group", "group"),
                       ("err_r0", "err_r0"), ("err_r1", "err_r1"), ("err_ang", "err_ang"),
                       ("ref_sigra", "ref_sigra"), ("ref_sigdec", "ref_sigdec")):
        assert np.array_equal(getattr(ps, field), g[col]), field
    assert ps.region_id.dtype == np.int64 and ps.d_xi.dtype == np.float64
    wg, ws = p.tables["WISE_GAIA"], p.pairs("WISE_GAIA")
    for field, col in (("region_id", "wise_id"), ("src_xi", "wise_xi"), ("src_eta", "wise_eta"),
                       ("d_xi", "d_xi"), ("d_eta", "d_eta"), ("sep", "sep"),
                       ("ref_sigra", "wise_sigra"), ("ref_sigdec", "wise_sigdec")):
        assert np.array_equal(getattr(ws, field), wg[col]), field
    assert ws.group.tolist() == [0, 0] and ws.group.dtype == np.int64
    assert ws.region_id.dtype == np.int64 and ps.group.dtype == np.int64
    # from a file's narrower columns (J, E): the same integer and float64 arrays
    narrow = {k: (v.astype(np.int32) if v.dtype.kind == "i" else v.astype(np.float32))
              for k, v in g.items()}
    pn = pairs.pairset_from_columns(narrow, kind="GAIA_PAIRS")
    assert pn.region_id.dtype == np.int64 and pn.group.dtype == np.int64
    assert all(getattr(pn, f).dtype == np.float64 for f in ("src_xi", "d_xi", "sep", "err_r0",
                                                             "ref_sigdec"))
    wn = pairs.pairset_from_columns({k: (v.astype(np.int32) if v.dtype.kind == "i"
                                         else v.astype(np.float32)) for k, v in wg.items()},
                                    kind="WISE_GAIA")
    assert wn.region_id.dtype == np.int64 and wn.d_eta.dtype == np.float64
    assert all(np.isnan(getattr(ws, f)).all() and len(getattr(ws, f)) == 2
               for f in ("err_r0", "err_r1", "err_ang"))


def test_pairs_from_match_keyword_comments():
    """The primary's comments say each keyword's unit and meaning (what fv and TOPCAT show)."""
    det, gaia, wise, best = _match_inputs()
    _, p = _pairs_from_inputs(det, gaia, wise, best)
    comments = {k: c for k, _, c in p.keywords}
    assert {k: comments[k] for k in ("RSTACK", "MATCHRAD", "SEPBINS", "NGROUPS", "MAXPM",
                                     "DENSGAIA", "DENSWISE", "HAVEWISE", "NMGAIA", "NMWISE",
                                     "METHOD", "METHREQ")} == {
        "RSTACK": "[arcmin] cone radius r_stack",
        "MATCHRAD": "[arcsec] cross-match radius",
        "SEPBINS": "[arcsec] upper edges of separation groups",
        "NGROUPS": "number of separation groups",
        "MAXPM": "[mas/yr] total proper-motion limit",
        "DENSGAIA": "[arcmin-2] Gaia within RSTACK, unfiltered",
        "DENSWISE": "[arcmin-2] ALLWISE within RSTACK, unfiltered",
        "HAVEWISE": "ALLWISE inputs given?",
        "NMGAIA": "detections with >= 1 Gaia match",
        "NMWISE": "detections with >= 1 ALLWISE match",
        "METHOD": "direct, twostep or none",
        "METHREQ": "method parameter (auto: spec 5.5.2)"}


def test_pairs_file_header_layout(tmp_path):
    """The primary: CONTENT (with its comment), HDUNAME = 'PRIMARY', the stack keywords then the
    primary's own; a long string keeps the part of its comment that fits, in every HDU; the
    WISE_GAIA offsets are described as Gaia minus ALLWISE."""
    p = make_pairs(np.random.default_rng(6))
    stackid = "acisfJ0000000p000000_001_" + "x" * 26      # 51 characters
    keys = tuple(("STACKID", stackid, "detect_stack_id") if k[0] == "STACKID" else k
                 for k in p.keywords)
    p = pairs.Pairs(**{**p.__dict__, "keywords": keys, "stackid": stackid})
    pairs.write_pairs(p, tmp_path / "p.fits", HIST)
    with fits.open(tmp_path / "p.fits") as hdul:
        h0 = hdul[0].header
        assert h0["CONTENT"] == "STKPAIRS"
        assert h0.comments["CONTENT"] == "stk_match matched-pairs file"
        assert h0["HDUNAME"] == "PRIMARY" and h0.comments["HDUNAME"] == ""
        user = [k for k in h0.keys() if k in {kk for kk, _, _ in keys}]
        assert user[:4] == ["STACKID", "INSTRUME", "RA_STACK", "DEC_STACK"]
        for h in (hdu.header for hdu in hdul):
            assert h["STACKID"] == stackid and h.comments["STACKID"].startswith("detect_stack")
        h = hdul["WISE_GAIA"].header
        desc = {h[f"TTYPE{i}"]: h.get(f"TCOMM{i}") for i in range(1, h["TFIELDS"] + 1)}
        assert desc["d_xi"] == "Offset in xi, Gaia minus ALLWISE"
        assert desc["sep"] == "Separation of the ALLWISE source and its Gaia best neighbour"


def test_pairs_file_keeps_its_layout_for_other_in_memory_dtypes(tmp_path):
    p = make_pairs(np.random.default_rng(6))
    tables = {name: dict(cols) for name, cols in p.tables.items()}
    tables["GAIA_PAIRS"]["region_id"] = tables["GAIA_PAIRS"]["region_id"].astype(np.int64)
    tables["DETECTIONS"]["n_gaia"] = tables["DETECTIONS"]["n_gaia"].astype(np.int64)
    tables["WISE_GAIA"]["wise_id"] = tables["WISE_GAIA"]["wise_id"].astype(np.int32)
    p = pairs.Pairs(**{**p.__dict__, "tables": tables, "units": {}})
    pairs.write_pairs(p, tmp_path / "p.fits", HIST)
    with fits.open(tmp_path / "p.fits") as hdul:
        assert hdul["GAIA_PAIRS"].columns["region_id"].format == "J"
        assert hdul["DETECTIONS"].columns["n_gaia"].format == "J"
        assert hdul["WISE_GAIA"].columns["wise_id"].format == "K"
        assert hdul["GAIA_PAIRS"].columns["det_ra"].unit is None


def test_pairs_writer_refuses_an_existing_file_without_clobber(tmp_path):
    from stk_astrometry.errors import OutputError

    p = make_pairs(np.random.default_rng(6))
    pairs.write_pairs(p, tmp_path / "p.fits", HIST)
    with pytest.raises(OutputError):
        pairs.write_pairs(p, tmp_path / "p.fits", HIST)
    pairs.write_pairs(p, tmp_path / "p.fits", HIST, clobber=True)


def test_pairs_n_rows_of_a_table_without_columns():
    p = make_pairs(np.random.default_rng(6))
    p = pairs.Pairs(**{**p.__dict__, "tables": {**p.tables, "WISE_PAIRS": {}}})
    assert p.n_rows("WISE_PAIRS") == 0 and p.n_rows("GAIA_PAIRS") == 4


def _pairs_file_with(tmp_path, edit, name="e.fits"):
    """A pairs file with its primary header (or HDUs) edited by ``edit(hdul)``."""
    src = tmp_path / "src.fits"
    if not src.exists():
        pairs.write_pairs(make_pairs(np.random.default_rng(12)), src, HIST)
    with fits.open(src) as hdul:
        edit(hdul)
        hdul.writeto(tmp_path / name, output_verify="silentfix", overwrite=True)
    return tmp_path / name


@pytest.mark.parametrize("method", ["direct", "TwoStep", "NONE"])
def test_pairs_reader_accepts_each_method_in_any_case(tmp_path, method):
    path = _pairs_file_with(tmp_path, lambda h: h[0].header.update(METHOD=method))
    assert pairs.read_pairs(path).method == method.lower()


def test_pairs_reader_defaults_for_optional_keywords(tmp_path):
    """MATCHRAD, DENSGAIA, DENSWISE and STACKID may be absent; INSTRUME in any case; one group."""
    def edit(hdul):
        for key in ("MATCHRAD", "DENSGAIA", "DENSWISE", "STACKID"):
            for hdu in hdul:
                hdu.header.remove(key, ignore_missing=True)
        hdul[0].header["INSTRUME"] = "acis"
        hdul[0].header["NGROUPS"] = 1
    q = pairs.read_pairs(_pairs_file_with(tmp_path, edit))
    assert (q.match_radius, q.dens_gaia, q.dens_wise) == (None, None, None)
    assert q.stackid == "" and q.instrument == "ACIS" and q.n_groups == 1
    assert q.path == str(tmp_path / "e.fits")


@pytest.mark.parametrize("edit, message", [
    (lambda h: h[0].header.remove("CONTENT"),
     r"^infile=.*e\.fits: not a stk_match matched-pairs file: primary CONTENT = '\(missing\)', "
     r"expected 'STKPAIRS'"),
    (lambda h: h[0].header.remove("METHOD"),
     r"e\.fits\[PRIMARY\]: keyword METHOD = None, expected 'direct', 'twostep' or 'none'$"),
    (lambda h: h[0].header.remove("INSTRUME"),
     r"e\.fits\[PRIMARY\]: keyword INSTRUME = None, expected 'ACIS' or 'HRC'$"),
    (lambda h: h[0].header.update(NGROUPS=0),
     r"e\.fits\[PRIMARY\]: keyword NGROUPS = 0\.0 is not a positive integer$"),
    (lambda h: h[0].header.update(NGROUPS=2.5),
     r"e\.fits\[PRIMARY\]: keyword NGROUPS = 2\.5 is not a positive integer$"),
    (lambda h: h[0].header.update(RA_STACK="  "), r"e\.fits\[PRIMARY\]: keyword RA_STACK missing$"),
    (lambda h: h[0].header.update(RA_STACK="ten"),
     r"e\.fits\[PRIMARY\]: keyword RA_STACK = 'ten' is not a number$"),
    (lambda h: h[0].header.update(MATCHRAD="three"),
     r"e\.fits\[PRIMARY\]: keyword MATCHRAD = 'three' is not a number$"),
    (lambda h: h[0].header.update(DENSWISE="x"),
     r"e\.fits\[PRIMARY\]: keyword DENSWISE = 'x' is not a number$"),
    (lambda h: h[0].header.update(DENSGAIA="y"),
     r"e\.fits\[PRIMARY\]: keyword DENSGAIA = 'y' is not a number$"),
    (lambda h: h.__setitem__(2, fits.ImageHDU(np.zeros((2, 2)), name="GAIA_PAIRS")),
     r"HDU\(s\) GAIA_PAIRS missing"),
    (lambda h: h["WISE_PAIRS"].columns.del_col("sep"),
     r"e\.fits\[WISE_PAIRS\]: required column\(s\) sep missing"),
])
def test_pairs_reader_names_what_is_wrong(tmp_path, edit, message):
    with pytest.raises(FormatError, match=message):
        pairs.read_pairs(_pairs_file_with(tmp_path, edit))


def test_pairs_reader_names_the_parameter(tmp_path):
    with pytest.raises(InputError, match=r"^infile=.*nope\.fits: file .* does not exist$"):
        pairs.read_pairs(tmp_path / "nope.fits")
    with pytest.raises(InputError, match=r"^pairsfile=.*nope\.fits: file"):
        pairs.read_pairs(tmp_path / "nope.fits", param="pairsfile")


def _without_dec_stack(hdul):
    h = hdul[0].header
    n = next(k[5:] for k in h if k.startswith("DTYPE") and h[k] == "DEC_STACK")
    for key in (f"DTYPE{n}", f"DVAL{n}", "DEC_STACK"):       # the CXC pair and the HIERARCH card
        h.remove(key, ignore_missing=True)


@pytest.mark.parametrize("edit, message", [
    (_without_dec_stack, r"/e\.fits\[PRIMARY\]: keyword DEC_STACK missing$"),
    (lambda h: h[0].header.remove("NGROUPS"), r"/e\.fits\[PRIMARY\]: keyword NGROUPS missing$"),
])
def test_pairs_reader_requires_the_tangent_dec_and_the_group_count(tmp_path, edit, message):
    with pytest.raises(FormatError, match=message):
        pairs.read_pairs(_pairs_file_with(tmp_path, edit))
