"""stk_update_wcs applies a flagged transform only after a QA review (spec §5.7)."""

import hashlib
from pathlib import Path

import pytest
from astropy.io import fits
from stk_astrometry import synthprod
from stk_astrometry.tools.stk_update_wcs import main

RA0, DEC0 = 201.2, 26.6


def _xfm(tmp_path, *, flags, decision=None):
    path = synthprod.write_stkxfm(tmp_path / "xfm.fits", d_xi_arcsec=0.4, d_eta_arcsec=-0.2,
                                  ra_ref_deg=RA0, dec_ref_deg=DEC0)
    with fits.open(path, mode="update") as hdul:
        hdul["STKXFM"].header["QAFLAGS"] = flags
        if decision is not None:
            hdul["STKXFM"].header["QADECIS"] = decision
    return path


def _image(tmp_path):
    # its CSC name: CONTENT alone no longer makes a product (issue 15)
    return synthprod.write_product("STKECORRIMG",
                                   tmp_path / synthprod.product_filename("STKECORRIMG"),
                                   ra_nom=RA0, dec_nom=DEC0)


def _run(image, xfm, *extra):
    return main([str(image), str(xfm), 'outdir=', "mode=h", "verbose=0", *extra])


def _sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.mark.parametrize("flags,decision", [(4, None), (8, ""), (2, "later"), (0, "reject"),
                                            (4, "reject")])
def test_unreviewed_or_rejected_is_refused(tmp_path, capsys, flags, decision):
    image = _image(tmp_path)
    before = _sha(image)
    assert _run(image, _xfm(tmp_path, flags=flags, decision=decision)) == 1
    err = capsys.readouterr().err
    assert "ERROR" in err and "qa_override=yes" in err and err.count("\n") == 1
    assert _sha(image) == before


@pytest.mark.parametrize("flags,decision", [(0, None), (4, "accept"), (16, "refit"), (4, "ACCEPT")])
def test_clean_or_reviewed_is_applied(tmp_path, flags, decision):
    image = _image(tmp_path)
    before = _sha(image)
    assert _run(image, _xfm(tmp_path, flags=flags, decision=decision)) == 0
    assert _sha(image) != before


def test_override_applies_with_a_warning_and_undo_needs_none(tmp_path, capsys):
    image = _image(tmp_path)
    before = _sha(image)
    xfm = _xfm(tmp_path, flags=4)
    assert _run(image, xfm, "qa_override=yes") == 0
    assert "qa_override=yes" in capsys.readouterr().err
    assert fits.getheader(image)["STKXFMID"]
    assert _run(image, xfm, "inverse=yes") == 0
    with fits.open(image) as hdul:
        assert "STKXFMID" not in hdul[0].header
    assert _sha(image) != before   # HISTORY of both runs stays; the WCS is back (other tests)
