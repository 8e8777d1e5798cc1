"""The §5.6 product table and product recognition (stk_astrometry.products)."""

import pytest
from astropy.io import fits
from stk_astrometry import fitsedit, products, synthprod
from stk_astrometry.products import HduInfo, recognise

RA0, DEC0 = 201.2, 26.6

# every product type named in spec §5.6 (the list the table must cover)
SPEC_56 = [
    "EVT3", "ECORRIMG", "ECORRIMG_JPG", "BKGIMG", "EXPMAP", "ASPSOL3", "BADPIX3", "FOV3",
    "PIXMASK", "POLY3", "SEXPMAP", "REGEVT3", "REGIMG", "REGIMG_JPG", "PSF", "PSF_JPG",
    "REGEXPMAP", "SPECTRUM", "ARF", "RMF", "LIGHTCURVE", "ECF90REG", "DRAWS", "APERPHOT",
    "STKEVT3", "STKECORRIMG", "STKECORRIMG_JPG", "STKBKGIMG", "STKEXPMAP", "STKFOV3", "SENSITY",
    "MRGSRC", "THETAMEAN", "STKREGEVT", "STKREGIMG", "STKREGIMG_JPG", "STKREGIMG3_JPG",
    "STKREGEVP", "SRCREG/BKGREG", "STKDRWS", "STKAPERPHOT", "BAYESBLKS", "SRCAPERPHOT", "SRCPOLY3",
]


def test_table_covers_spec_list_once():
    names = [p.name for p in products.PRODUCT_TABLE]
    assert sorted(names) == sorted(SPEC_56)
    assert len(set(names)) == len(names)
    assert synthprod.PRODUCT_KINDS == tuple(names)


def test_table_actions_match_spec():
    by = products.PRODUCTS
    assert {n for n, p in by.items() if p.action == "nothing"} == {"RMF", "APERPHOT",
                                                                   "STKAPERPHOT"}
    assert {n for n, p in by.items() if p.action == "inherit"} == {
        n for n in SPEC_56 if n.endswith("_JPG")}
    assert {n for n, p in by.items() if p.scrub} == {"BAYESBLKS", "SRCAPERPHOT", "SRCPOLY3"}
    assert {n for n, p in by.items() if p.populate_eqsrc} == {"ECF90REG", "SRCREG/BKGREG"}
    assert [n for n, p in by.items() if p.append_stkxfm] == ["ASPSOL3"]


def _infos(path):
    return [products.hdu_info(lay.header, index=lay.index) for lay in fitsedit.scan_fits(path)]


@pytest.mark.parametrize("kind", synthprod.PRODUCT_KINDS)
def test_every_kind_recognised_from_synthetic_file(tmp_path, kind):
    path = tmp_path / synthprod.product_filename(kind)
    synthprod.write_product(kind, path, ra_nom=RA0, dec_nom=DEC0, nrows=20)
    if kind.endswith("_JPG"):
        assert fitsedit.is_jpeg_file(path) and not fitsedit.is_fits_file(path)
        rec = recognise(path.name, [], is_jpeg=True)
    else:
        rec = recognise(path.name, _infos(path))
    assert rec.product is not None, rec.reason
    assert rec.product.name == kind


@pytest.mark.parametrize("kind", ["SPECTRUM", "ARF", "MRGSRC", "ASPSOL3", "EVT3"])
def test_recognised_by_content_and_hdu_name_whatever_the_file_name(tmp_path, kind):
    path = tmp_path / "renamed.pi"
    synthprod.write_product(kind, path, ra_nom=RA0, dec_nom=DEC0, nrows=10)
    rec = recognise(path.name, _infos(path))
    assert rec.product is not None and rec.product.name == kind
    assert "file name" not in rec.reason and "CONTENT" in rec.reason and "HDU" in rec.reason


@pytest.mark.parametrize("kind, signal", [("ECORRIMG", "CONTENT"), ("MRGSRC", "HDU SRCLIST")])
def test_one_signal_alone_is_weak_and_left_unless_the_type_is_named(tmp_path, kind, signal):
    # issue 15: a stack's detection catalog (an HDU named SRCLIST) was taken for MRGSRC;
    # a type now needs a CSC file name or two independent signals
    path = tmp_path / "renamed.fits"
    synthprod.write_product(kind, path, ra_nom=RA0, dec_nom=DEC0, nrows=10)
    if kind == "MRGSRC":        # only the HDU name left: no CONTENT anywhere
        with fits.open(path, mode="update") as h:
            for hdu in h:
                hdu.header.remove("CONTENT", ignore_missing=True)
    rec = recognise(path.name, _infos(path))
    assert rec.product is None and rec.weak, rec
    assert f"looks like {kind} by {signal} alone" == rec.reason
    rec = recognise(path.name, _infos(path), forced=kind)
    assert rec.product.name == kind and "named by the user" in rec.reason


def test_image_with_event_content_is_not_an_event_file():
    img = [HduInfo("PRIMARY", "REGEVT3", "image")]
    rec = recognise("acisf14031_000N001_r0012b_regimg3.fits", img)
    assert rec.product.name == "REGIMG"
    # without a telling name the binned-from signal alone is weak: reported, never REGEVT3
    rec = recognise("cutout.fits", img)
    assert rec.product is None and rec.weak and "REGIMG" in rec.reason
    rec = recognise("acisf14031_000N001_r0012_regevt3.fits", img)
    assert rec.product.name == "REGIMG"
    # the real CSC 1 layout (sherpa-test-data): an image named after its event list
    rec = recognise("acisf07999_000N001_r0035_regevt3_srcimg.fits", img)
    assert rec.product.name == "REGIMG"


def test_event_content_on_table_is_event_file():
    rec = recognise("x.fits", [HduInfo("PRIMARY", "EVT3", "empty"),
                               HduInfo("EVENTS", "EVT3", "table")])
    assert rec.product.name == "EVT3"


def test_unknown_and_ambiguous():
    rec = recognise("notes.fits", [HduInfo("PRIMARY", "FOO", "empty")])
    assert rec.product is None and "FOO" in rec.reason
    # stack-level CONTENT on a per-observation name: two signals disagree equally?
    rec = recognise("acisf14031_000N001_evt3.fits", [HduInfo("PRIMARY", "STKEVT3", "empty"),
                                                     HduInfo("EVENTS", "STKEVT3", "table")])
    assert rec.product is not None and rec.product.name == "STKEVT3"   # CONTENT outweighs


def test_ecf90reg_vs_srcreg_by_hdu_names():
    hdus = [HduInfo("PRIMARY", "SRCREG", "empty"), HduInfo("ECF90REGB", "SRCREG", "table")]
    assert recognise("acisf14031_000N001_r0012_reg3.fits", hdus).product.name == "ECF90REG"
    hdus = [HduInfo("PRIMARY", "SRCREG", "empty"), HduInfo("SRCREG", "SRCREG", "table"),
            HduInfo("BKGREG", "SRCREG", "table")]
    assert recognise("acisfJ1348473p263535_002N029_r0012_reg3.fits",
                     hdus).product.name == "SRCREG/BKGREG"


def test_instrument_grid():
    assert products.instrument_grid("ACIS-I") == pytest.approx((0.492 / 3600, 4096.5))
    assert products.instrument_grid("hrc") == pytest.approx((0.13175 / 3600, 16384.5))
    with pytest.raises(KeyError):
        products.instrument_grid("EPIC")


# ---------------------------------------------------------------------------------------------
# The table's row builders: what each kind of row means


def test_update_row_builder_makes_an_update_row():
    row = products._upd("X", "stack", r"_x3\.fits$", ["XA", "XB"], "image", wcs=("EQPOS",))
    assert row == products.ProductType("X", "stack", "update", r"_x3\.fits$", ("XA", "XB"),
                                       "image", wcs=("EQPOS",))
    assert type(row.content) is tuple


def test_jpeg_row_builder_makes_an_inherit_row_naming_its_parent():
    row = products._jpg("X_JPG", "stack", r"_x3\.jpe?g$", "X")
    assert (row.name, row.level, row.action, row.filename, row.shape, row.parent) == \
        ("X_JPG", "stack", "inherit", r"_x3\.jpe?g$", "jpeg", "X")
    assert row.content == () and row.wcs == () and row.columns == ()
    assert row.note == ("JPG made from X: a translation moves no pixel; nothing to rewrite "
                        "(spec-notes 19)")


def test_nothing_row_builder_makes_a_table_row_with_its_note():
    row = products._nothing("R", "observation source", r"_r3\.fits$", ["R"], "why not")
    assert row == products.ProductType("R", "observation source", "nothing", r"_r3\.fits$",
                                       ("R",), "table", note="why not")


def test_every_row_is_well_formed():
    for p in products.PRODUCT_TABLE:
        assert p.action in ("update", "inherit", "nothing"), p.name
        assert p.shape in ("image", "table", "jpeg"), p.name
        assert (p.shape == "jpeg") == (p.action == "inherit") == p.name.endswith("_JPG"), p.name
        assert isinstance(p.content, tuple) and p.level in (
            "observation", "observation source", "stack", "stack source", "master"), p.name
        if p.action == "inherit":
            assert p.parent in products.PRODUCTS and p.parent in p.note


# ---------------------------------------------------------------------------------------------
# hdu_info: the shape and name of an HDU


def _h(**cards):
    h = fits.Header()
    for k, v in cards.items():
        h[k] = v
    return h


@pytest.mark.parametrize("cards, index, want", [
    (dict(SIMPLE=True, NAXIS=0), 0, ("PRIMARY", "", "empty")),
    (dict(SIMPLE=True, NAXIS=2, NAXIS1=10, NAXIS2=5, CONTENT=" regimg "), 0,
     ("PRIMARY", "REGIMG", "image")),
    (dict(SIMPLE=True, NAXIS=2, NAXIS1=0, NAXIS2=0), 0, ("PRIMARY", "", "empty")),
    (dict(SIMPLE=True, NAXIS=1, NAXIS1=1), 0, ("PRIMARY", "", "image")),
    (dict(SIMPLE=True, NAXIS=2, NAXIS1=0, NAXIS2=3), 0, ("PRIMARY", "", "image")),
    (dict(SIMPLE=True), 0, ("PRIMARY", "", "empty")),
    (dict(XTENSION="BINTABLE", NAXIS=2, NAXIS1=0, NAXIS2=0, EXTNAME="events"), 1,
     ("EVENTS", "", "table")),
    (dict(XTENSION="TABLE ", NAXIS=2, NAXIS1=8, NAXIS2=1, EXTNAME="ascii"), 1,
     ("ASCII", "", "table")),
    (dict(XTENSION="a3dtable", NAXIS=2, NAXIS1=8, NAXIS2=1), 2, ("", "", "table")),
    (dict(XTENSION="IMAGE", NAXIS=2, NAXIS1=4, NAXIS2=4, HDUNAME="psf"), 3, ("PSF", "", "image")),
    (dict(XTENSION="IMAGE", NAXIS=2, NAXIS1=4, NAXIS2=4, EXTNAME="a", HDUNAME="b"), 3,
     ("A", "", "image")),
    (dict(SIMPLE=True, NAXIS=0, HDUNAME="prim"), 0, ("PRIM", "", "empty")),
])
def test_hdu_info_shape_name_and_content(cards, index, want):
    info = products.hdu_info(_h(**cards), index=index)
    assert (info.name, info.content, info.kind) == want


# ---------------------------------------------------------------------------------------------
# recognise: the band, the points of each signal, the reasons the report prints


@pytest.mark.parametrize("name, hdus, kind, band", [
    ("acisf14031_000N001_r0012B_regimg3.fits", [HduInfo("PRIMARY", "REGIMG", "image")],
     "REGIMG", "b"),
    ("acisf14031_000N001_w_img3.fits", [HduInfo("PRIMARY", "ECORRIMG", "image")],
     "ECORRIMG", "w"),
    ("acisf14031_000N001_evt3.fits", [HduInfo("EVENTS", "EVT3", "table")], "EVT3", ""),
    ("renamed.fits", [HduInfo("EVENTS", "EVT3", "table")], "EVT3", ""),
])
def test_band_letter_from_the_file_name_lower_case(name, hdus, kind, band):
    rec = recognise(name, hdus)
    assert rec.product.name == kind and rec.band == band and not rec.weak


def test_named_type_takes_the_band_from_a_matching_name_only():
    rec = recognise("ACISF14031_000N001_H_IMG3.FITS", [], forced="ECORRIMG")
    assert (rec.product.name, rec.band) == ("ECORRIMG", "h")
    assert rec.reason == "type named by the user (product=)" and not rec.weak
    rec = recognise("whatever.fits", [], forced="ECORRIMG")
    assert (rec.product.name, rec.band) == ("ECORRIMG", "")


def test_reason_lists_the_signals_in_order():
    rec = recognise("acisf14031_000N001_evt3.fits", [HduInfo("PRIMARY", "EVT3", "empty"),
                                                     HduInfo("EVENTS", "EVT3", "table")])
    assert rec.reason == "file name + CONTENT + HDU EVENTS"
    rec = recognise("acisf14031_000N001_r0012_regimg3.fits",
                    [HduInfo("PRIMARY", "REGEVT3", "image")])
    assert rec.reason == "file name + CONTENT of the events it was binned from"
    assert rec.band == ""
    rec = recognise("acisf14031_000N001_b_img3.fits", [HduInfo("PRIMARY", "", "image")])
    assert rec.product.name == "ECORRIMG" and rec.reason == "file name"


def test_hdu_name_signal_three_points_and_ties_are_ambiguous():
    rec = recognise("x.fits", [HduInfo("PRIMARY", "", "empty"), HduInfo("events", "", "table")])
    assert rec.product is None and not rec.weak and rec.band == ""
    assert rec.reason == "ambiguous: EVT3, REGEVT3, STKEVT3, STKREGEVT match equally (3 points)"


def test_content_signal_four_points():
    rec = recognise("x.fits", [HduInfo("PRIMARY", "RMF", "empty"), HduInfo("A", "ARF", "table")])
    assert rec.product is None and rec.band == ""
    assert rec.reason == "ambiguous: ARF, RMF match equally (4 points)"


def test_file_name_signal_two_points_binned_from_one():
    # STKREGIMG by file name + binned-from CONTENT (2 + 1) against the 3 points of the
    # HDU name EVENTS for the four event types (a table beside the image)
    hdus = [HduInfo("PRIMARY", "STKREGEVT3", "image"), HduInfo("EVENTS", "", "table")]
    rec = recognise("acisfJ1348473p263535_002N029_r0012_regimg3.fits", hdus)
    assert rec.product is None
    assert rec.reason == ("ambiguous: EVT3, REGEVT3, STKEVT3, STKREGEVT, STKREGIMG match "
                          "equally (3 points)")


def test_file_name_adds_to_content():
    # STKEVT3 by name (2) + CONTENT (4) + HDU (3) = 9 beats EVT3's CONTENT + HDU (7)
    hdus = [HduInfo("PRIMARY", "STKEVT3", "empty"), HduInfo("EVENTS", "EVT3", "table")]
    rec = recognise("acisfJ1348473p263535_002N029_evt3.fits", hdus)
    assert rec.product.name == "STKEVT3" and rec.reason == "file name + CONTENT + HDU EVENTS"


def test_hdu_names_are_matched_whole_and_case_blind():
    hdus = [HduInfo("PRIMARY", "ECF90REG", "empty"), HduInfo("ecf90regb", "", "table")]
    rec = recognise("notes.fits", hdus)
    assert rec.product.name == "ECF90REG" and rec.reason == "CONTENT + HDU ecf90regb"
    hdus = [HduInfo("PRIMARY", "", "empty"), HduInfo("EVENTS2", "", "table")]
    assert recognise("notes.fits", hdus).reason.startswith("no product type matches")


def test_unknown_file_reason_names_its_contents():
    rec = recognise("notes.fits", [HduInfo("PRIMARY", "FOO", "empty"),
                                   HduInfo("A", "BAR", "table"), HduInfo("B", "", "table")])
    assert rec == products.Recognition(None, "", "no product type matches (file name, "
                                                 "CONTENT BAR,FOO)")
    rec = recognise("notes.fits", [HduInfo("PRIMARY", "", "empty")])
    assert rec == products.Recognition(None, "", "no product type matches (file name, "
                                                 "no CONTENT)")


def test_weak_recognition_has_no_band():
    rec = recognise("cutout_b.fits", [HduInfo("PRIMARY", "ECORRIMG", "image")])
    assert rec == products.Recognition(None, "", "looks like ECORRIMG by CONTENT alone",
                                       weak=True)


def test_any_csc_stem_with_one_signal_decides():
    # a CSC observation stem whose suffix no pattern knows, with CONTENT: decided
    rec = recognise("acisf14031_000N001_other3.fits", [HduInfo("PRIMARY", "ECORRIMG", "image")])
    assert rec.product.name == "ECORRIMG" and rec.reason == "CONTENT" and not rec.weak


def test_jpeg_is_recognised_by_its_name_only():
    rec = recognise("acisf14031_000N001_r0012b_regimg3.jpg", [], is_jpeg=True)
    assert (rec.product.name, rec.band, rec.reason) == ("REGIMG_JPG", "b", "file name")
    rec = recognise("acisf14031_000N001_r0012b_regimg3.fits", [], is_jpeg=True)
    assert rec.product is None
    # a FITS file is never a JPEG type, whatever its name
    rec = recognise("acisf14031_000N001_r0012b_regimg3.jpg", [HduInfo("PRIMARY", "", "image")])
    assert rec.product is None or rec.product.shape != "jpeg"


@pytest.mark.parametrize("cards, kind", [
    (dict(SIMPLE=True, NAXIS=2, NAXIS1=5), "image"),            # NAXIS2 missing: NAXIS1 decides
    (dict(SIMPLE=True, NAXIS=2, NAXIS1=0), "empty"),
    (dict(SIMPLE=True, NAXIS1=5), "empty"),                     # no NAXIS: no axes
    (dict(SIMPLE=True, NAXIS=2, NAXIS1=0, NAXIS2=0, NAXIS3=4), "empty"),   # beyond NAXIS
    (dict(SIMPLE=True, NAXIS=1, NAXIS0=4, NAXIS1=0), "empty"),  # FITS axes start at 1
])
def test_hdu_info_reads_only_the_axes_naxis_declares(cards, kind):
    assert products.hdu_info(_h(**cards), index=0).kind == kind


def test_named_type_without_a_band_in_its_name_has_no_band():
    rec = recognise("acisf14031_000N001_evt3.fits", [], forced="EVT3")
    assert (rec.product.name, rec.band) == ("EVT3", "")
    rec = recognise("acisf14031_000N001_r0012_regimg3.fits", [], forced="REGIMG")
    assert (rec.product.name, rec.band) == ("REGIMG", "")
