"""Counts images of simulated point sources, for the synthetic products and the QA pictures.

Owns one thing: turning a list of point sources (sky position, counts, Gaussian PSF width)
into a Poisson counts image on a CIAO-style TAN sky grid, so that the simulated stack images
show their sources (``stk_simulate``) and the QA postage stamps have something to look at.
No file I/O here; :mod:`stk_astrometry.synthprod` writes the image with its headers.

The grid is the one :func:`stk_astrometry.synthprod` writes: ``RA---TAN``/``DEC--TAN`` with
``CRVAL`` at the tangent point, no rotation, ``CDELT1 = -pixel*block``, ``CDELT2 =
+pixel*block``.  For such a grid the intermediate world coordinates are the standard
coordinates (xi, eta) of the tangent point (Calabretta & Greisen 2002, §2.1 and Eq. 54), so
``p1 = CRPIX1 + xi / CDELT1``, ``p2 = CRPIX2 + eta / CDELT2`` (1-based FITS pixels) — exact,
no series.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stk_astrometry.tangent import sky_to_tangent

__all__ = ["PointSources", "render_counts_image", "sky_to_pixel"]


@dataclass(frozen=True, eq=False)
class PointSources:
    """Point sources to render into a counts image, and the image's size.

    Attributes
    ----------
    ra_deg, dec_deg : ndarray
        Positions in the frame of the image's WCS (for a simulated stack: the X-ray frame,
        i.e. the true position minus the stack's shift).
    counts : ndarray
        Expected source counts (the photons drawn are Poisson around it).
    sigma_arcsec : ndarray
        Gaussian PSF rms per axis.
    background : float
        Expected background counts per sky pixel (unblocked).
    shape : tuple of int
        (ny, nx) of the image.
    block : float
        Sky pixels per image pixel.
    seed : int
        Seed of the photons and the background (independent of any other stream).
    """

    ra_deg: np.ndarray
    dec_deg: np.ndarray
    counts: np.ndarray
    sigma_arcsec: np.ndarray
    background: float = 0.02
    shape: tuple = (512, 512)
    block: float = 2.0
    seed: int = 0


def sky_to_pixel(ra_deg, dec_deg, *, crval1, crval2, crpix1, crpix2, cdelt1, cdelt2):
    """1-based FITS pixel coordinates of sky positions on an unrotated TAN grid.  Pure.

    The tangent point is (crval1, crval2), the pixel sizes cdelt1 < 0, cdelt2 > 0 in degrees.
    """
    xi, eta = sky_to_tangent(np.asarray(ra_deg, dtype=float), np.asarray(dec_deg, dtype=float),
                             crval1, crval2)
    return crpix1 + xi / 3600.0 / cdelt1, crpix2 + eta / 3600.0 / cdelt2


def render_counts_image(shape, x_pix, y_pix, counts, sigma_pix, *, background, rng):
    """A Poisson counts image of Gaussian point sources on a flat background.  Pure.

    Each source gets Poisson(``counts``) photons drawn from a circular Gaussian of rms
    ``sigma_pix`` about (``x_pix``, ``y_pix``) — 1-based FITS pixel coordinates, the
    centre of pixel (i, j) being (i, j) — and binned; each pixel adds Poisson(``background``)
    background counts.  Photons falling off the image are lost, as on a detector edge.

    Returns
    -------
    ndarray of int32, shape ``shape`` (row = y).
    """
    ny, nx = (int(s) for s in shape)
    image = rng.poisson(float(background), (ny, nx)).astype(np.int32)
    counts = np.asarray(counts, dtype=float)
    x_pix = np.asarray(x_pix, dtype=float)
    y_pix = np.asarray(y_pix, dtype=float)
    sigma_pix = np.asarray(sigma_pix, dtype=float)
    n_photons = rng.poisson(np.clip(np.nan_to_num(counts), 0.0, None))
    if n_photons.sum() == 0:
        return image
    which = np.repeat(np.arange(counts.size), n_photons)
    px = x_pix[which] + rng.normal(0.0, 1.0, which.size) * sigma_pix[which]
    py = y_pix[which] + rng.normal(0.0, 1.0, which.size) * sigma_pix[which]
    # 1-based pixel i covers [i - 0.5, i + 0.5): 0-based column floor(p - 0.5)
    col = np.floor(px - 0.5).astype(np.int64)
    row = np.floor(py - 0.5).astype(np.int64)
    inside = (col >= 0) & (col < nx) & (row >= 0) & (row < ny)
    np.add.at(image, (row[inside], col[inside]), 1)
    return image


def simulated_sources(sim, *, background=0.02, shape=(512, 512), block=2.0) -> PointSources:
    """The point sources of a :class:`stk_astrometry.simulate.SimulatedStack`.  Pure.

    Every detection not classed FALSE (a FALSE detection is a spurious one: no source) at its
    true position in the X-ray frame — the true (reference-frame) position minus the stack's
    shift, where the image's uncorrected WCS puts it, so that the transform stk_xfm fits
    moves it onto its Gaia counterpart — with ``src_cnts`` counts and the simulation's
    Gaussian PSF, ``r90(theta) / 2.146`` rms per axis.  The default grid, 512 x 512 image
    pixels of 2 sky pixels (8.4 arcmin on ACIS), covers the inner field, where a QA postage
    stamp can show a sub-arcsecond shift.  The photon seed derives from the simulation's.
    """
    from stk_astrometry.simulate import SIGMA_TO_R90, psf_r90_arcsec
    from stk_astrometry.tangent import tangent_to_sky

    det, truth, cfg = sim.detections, sim.truth, sim.config
    real = np.asarray(det.likelihood_class).astype(str) != "FALSE"
    xi = np.asarray(truth.true_xi_arcsec)[real] - truth.d_xi_arcsec
    eta = np.asarray(truth.true_eta_arcsec)[real] - truth.d_eta_arcsec
    ra, dec = tangent_to_sky(xi, eta, cfg.ra_stack_deg, cfg.dec_stack_deg)
    sigma = psf_r90_arcsec(np.asarray(det.theta_arcmin)[real], cfg.instrument) / SIGMA_TO_R90
    seed = int(np.random.SeedSequence([int(sim.seed or 0), 0x51A6E]).generate_state(1)[0])
    return PointSources(ra_deg=np.atleast_1d(ra), dec_deg=np.atleast_1d(dec),
                        counts=np.asarray(det.src_cnts, dtype=float)[real], sigma_arcsec=sigma,
                        background=background, shape=tuple(shape), block=float(block), seed=seed)
