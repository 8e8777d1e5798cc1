"""skyimage: the sky grid against astropy's TAN WCS, and rendered sources where they belong."""

import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from stk_astrometry import skyimage, synthprod
from stk_astrometry.simulate import SimConfig, simulate_stack
from stk_astrometry.tangent import sky_to_tangent

RA0, DEC0 = 189.2, 62.2


def _celestial_wcs(header):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")        # CIAO's physical/alternate axes: FITSFixedWarning
        return WCS(header, key=" ").celestial


def _centroid(image, x, y, half=4):
    """Background-free centroid (1-based pixels) in a box about (x, y)."""
    i0, j0 = int(round(x)) - 1, int(round(y)) - 1
    box = image[j0 - half:j0 + half + 1, i0 - half:i0 + half + 1].astype(float)
    jj, ii = np.mgrid[j0 - half:j0 + half + 1, i0 - half:i0 + half + 1]
    return (box * ii).sum() / box.sum() + 1, (box * jj).sum() / box.sum() + 1


def test_sky_to_pixel_is_astropy_tan(tmp_path):
    sources = skyimage.PointSources(np.array([RA0]), np.array([DEC0]), np.array([10.0]),
                                    np.array([0.5]))
    path = synthprod.write_product("STKECORRIMG", tmp_path / "img.fits", ra_nom=RA0,
                                   dec_nom=DEC0, sources=sources)
    header = fits.getheader(path)
    rng = np.random.default_rng(3)
    ra = RA0 + rng.uniform(-0.07, 0.07, 50)
    dec = DEC0 + rng.uniform(-0.03, 0.03, 50)
    x, y = skyimage.sky_to_pixel(ra, dec, crval1=header["CRVAL1"], crval2=header["CRVAL2"],
                                 crpix1=header["CRPIX1"], crpix2=header["CRPIX2"],
                                 cdelt1=header["CDELT1"], cdelt2=header["CDELT2"])
    ax, ay = _celestial_wcs(header).all_world2pix(ra, dec, 1)
    np.testing.assert_allclose(x, ax, atol=1e-7)
    np.testing.assert_allclose(y, ay, atol=1e-7)


def test_render_counts_and_centroid():
    rng = np.random.default_rng(11)
    image = skyimage.render_counts_image((101, 121), [40.3, 80.0], [50.0, 20.6],
                                         [4000.0, 0.0], [1.5, 1.0], background=0.0, rng=rng)
    assert image.shape == (101, 121)
    assert abs(image.sum() - 4000) < 5 * np.sqrt(4000)
    cx, cy = _centroid(image, 40.3, 50.0, half=8)
    assert abs(cx - 40.3) < 0.1 and abs(cy - 50.0) < 0.1
    # background only: mean and Poisson variance
    flat = skyimage.render_counts_image((200, 200), [], [], [], [], background=0.5, rng=rng)
    assert abs(flat.mean() - 0.5) < 0.02 and abs(flat.var() - 0.5) < 0.03


def test_simulated_stack_image_shows_sources_in_the_xray_frame(tmp_path):
    """The sources sit where the uncorrected WCS puts true - shift; the image is int16."""
    sim = simulate_stack(SimConfig(ra_stack_deg=RA0, dec_stack_deg=DEC0, ndet=300,
                                   shift_xi_arcsec=1.5, shift_eta_arcsec=-1.0), seed=5)
    sources = skyimage.simulated_sources(sim)
    path = synthprod.write_product("STKECORRIMG", tmp_path / "img.fits", ra_nom=RA0,
                                   dec_nom=DEC0, sources=sources)
    with fits.open(path) as hdul:
        image, header = hdul[0].data, hdul[0].header
        assert header["BITPIX"] == 16 and image.shape == (512, 512)
    wcs = _celestial_wcs(header)
    xi_true = sim.truth.true_xi_arcsec - sim.truth.d_xi_arcsec
    eta_true = sim.truth.true_eta_arcsec - sim.truth.d_eta_arcsec
    real = np.flatnonzero(sim.detections.likelihood_class != "FALSE")   # rows of sources
    bright = [(row, k) for row, k in enumerate(real)
              if sim.detections.src_cnts[k] > 30 and sim.detections.theta_arcmin[k] < 4.0]
    assert len(bright) >= 2
    for row, k in bright:
        x, y = wcs.all_world2pix(sources.ra_deg[row:row + 1], sources.dec_deg[row:row + 1], 1)
        cx, cy = _centroid(image, x[0], y[0])
        ra, dec = wcs.all_pix2world([cx], [cy], 1)
        xi, eta = sky_to_tangent(ra, dec, RA0, DEC0)
        err = np.hypot(xi[0] - xi_true[k], eta[0] - eta_true[k])
        assert err < 0.6, (k, err)      # the 1.8" shift is what it must not be
        sep_reference = np.hypot(xi[0] - sim.truth.true_xi_arcsec[k],
                                 eta[0] - sim.truth.true_eta_arcsec[k])
        assert sep_reference > 1.2, (k, sep_reference)


def test_without_sources_the_products_are_unchanged(tmp_path):
    """Rendering draws its own photons: the products rng stream is the same either way."""
    rng_a, rng_b = np.random.default_rng(1), np.random.default_rng(1)
    sources = skyimage.PointSources(np.array([RA0]), np.array([DEC0]), np.array([50.0]),
                                    np.array([0.4]), shape=(32, 32))
    synthprod.write_product("STKECORRIMG", tmp_path / "a.fits", ra_nom=RA0, dec_nom=DEC0,
                            rng=rng_a)
    synthprod.write_product("STKECORRIMG", tmp_path / "b.fits", ra_nom=RA0, dec_nom=DEC0,
                            rng=rng_b, sources=sources)
    assert rng_a.random() == rng_b.random()
    assert fits.getdata(tmp_path / "b.fits").sum() > 25


@pytest.mark.parametrize("kind", ["BKGIMG", "EXPMAP"])
def test_other_images_ignore_sources(tmp_path, kind):
    sources = skyimage.PointSources(np.array([RA0]), np.array([DEC0]), np.array([50.0]),
                                    np.array([0.4]))
    path = synthprod.write_product(kind, tmp_path / "x.fits", ra_nom=RA0, dec_nom=DEC0,
                                   sources=sources)
    assert fits.getdata(path).shape == (64, 64)
