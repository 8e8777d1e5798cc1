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
