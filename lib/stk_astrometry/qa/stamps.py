"""Postage stamps (spec §5.7.1): cutouts of the stack image before and after the correction,
with the Gaia crosshair fixed on the sky, as one PNG contact sheet and as FITS cutouts.

Which detections (at most ``max_stamps``, spec: "a maximum of 20 detections"): every
detection with a Gaia pair whose stamp lies on the image, one stamp per detection (its
nearest counterpart), ranked by

1. the pair's role: used by the fit first, then unused, then excluded;
2. an unambiguous match first (one Gaia candidate within the match radius, ``n_cand = 1``):
   in a crowded field a detection with several candidates says little by eye;
3. the smallest position error (``err_r0``): the sharpest sources show a sub-arcsecond
   shift best.

The offsets the sheet shows are *measured on the image*: the centroid of the source's counts
(background-subtracted, in a circle of radius ``max(2", 1.5 pixel)`` re-centred until it
settles, starting at the catalogued detection), converted to the sky once with the original
WCS and once with the corrected one, minus the Gaia position.  Their medians over the stamps
are the QA measure "the translation did reduce the distance ... for most of the detections".
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np

from stk_astrometry.errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["StackImage", "load_image", "corrected_header", "choose_stamps", "centroid",
           "Measurement", "measure", "write_stamps_fits", "contact_sheet"]

#: Centroid aperture radius, arcsec (and at least 1.5 pixels).
APERTURE_ARCSEC = 2.0


def _wcs(header):
    from astropy.wcs import WCS, FITSFixedWarning

    with warnings.catch_warnings():
        # CIAO headers carry a physical 'P' WCS and LTV/LTM, which astropy notes and ignores
        warnings.simplefilter("ignore", FITSFixedWarning)
        return WCS(header, key=" ").celestial


@dataclass(frozen=True, eq=False)
class StackImage:
    """The stack image, its original and corrected WCS.

    ``data`` is float32 (NaN allowed in cutouts), ``raw`` the pixels as stored.
    ``header_after`` is the image header as stk_update_wcs would rewrite it (only CRVAL
    moves, :func:`stk_astrometry.wcsupdate.update_header`).
    """

    data: np.ndarray
    header: object
    header_after: object
    wcs_before: object
    wcs_after: object
    pixel_arcsec: float
    path: str
    raw: np.ndarray = None

    def write_corrected(self, path) -> None:
        """A copy of the image with the corrected WCS (for DS9's second frame), atomically."""
        from astropy.io import fits

        from stk_astrometry.fitsutil import atomic_path

        with atomic_path(path) as tmp:
            fits.PrimaryHDU(self.raw, header=self.header_after).writeto(tmp, overwrite=True,
                                                                        checksum=True)


def corrected_header(header, review):
    """A copy of an image header with its WCS moved by the review's transform."""
    from stk_astrometry import wcsupdate

    xfm = wcsupdate.Transform.from_shift(review.d_xi, review.d_eta, review.ra_stack,
                                         review.dec_stack)
    out = header.copy()
    wcsupdate.update_header(out, xfm, hdu_label="image", keywords=False)
    wcsupdate.record_transform(out, xfm, hdu_label="image")
    return out


def load_image(path, review) -> StackImage:
    """Read the first image HDU of ``path`` with a celestial WCS.

    Raises
    ------
    InputError
        Not a readable FITS image with a celestial (RA/Dec) WCS.
    """
    from astropy.io import fits

    from stk_astrometry.tableio import parse_virtual_filename

    path_text, block = parse_virtual_filename(str(path))
    try:
        with fits.open(path_text, memmap=False) as hdul:
            if block is not None:
                hdus = [hdul[block - 1] if isinstance(block, int) else hdul[block]]
            else:
                hdus = [h for h in hdul if h.is_image and h.data is not None and h.data.ndim == 2]
            if not hdus or hdus[0].data is None or hdus[0].data.ndim != 2:
                raise InputError(f"infile={path}: no 2-D image HDU")
            hdu = hdus[0]
            raw = np.array(hdu.data)
            data = raw.astype(np.float32)
            header = hdu.header.copy()
    except (OSError, KeyError, IndexError, ValueError) as exc:
        raise InputError(f"infile={path}: cannot read the image: {exc}") from exc
    wcs = _wcs(header)
    if wcs.naxis != 2 or not wcs.has_celestial:
        raise InputError(f"infile={path}: the image has no celestial (RA/Dec) WCS")
    header_after = corrected_header(header, review)
    scale = float(np.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix)))) * 3600.0
    return StackImage(data, header, header_after, wcs, _wcs(header_after), scale, str(path),
                      raw)


def _pixels(wcs, ra, dec):
    x, y = wcs.all_world2pix(np.atleast_1d(ra), np.atleast_1d(dec), 0)
    return np.asarray(x, dtype=float), np.asarray(y, dtype=float)


def choose_stamps(review, image: StackImage, *, max_stamps=20, size_arcsec=12.0):
    """Rows of ``review.gaia`` to show (module docstring), best first.  Pure."""
    g = review.gaia
    n = len(g["region_id"])
    if n == 0:
        return np.zeros(0, dtype=int)
    ny, nx = image.data.shape
    half = 0.5 * size_arcsec / image.pixel_arcsec
    on_image = np.ones(n, dtype=bool)
    for wcs in (image.wcs_before, image.wcs_after):
        x, y = _pixels(wcs, g["ref_ra"], g["ref_dec"])
        on_image &= (x - half >= -0.5) & (x + half <= nx - 0.5) & (y - half >= -0.5) & \
            (y + half <= ny - 0.5)
    rid = np.asarray(g["region_id"])
    sep = np.asarray(g["sep"], dtype=float)
    # one stamp per detection: its nearest counterpart
    order = np.lexsort((sep, rid))
    first = order[np.r_[True, rid[order][1:] != rid[order][:-1]]]
    rows = first[on_image[first]]
    rank = {"used": 0, "unused": 1, "excluded": 2}
    status = np.array([rank[str(s)] for s in review.gaia_status[rows]])
    n_cand = np.asarray(g["n_cand"])[rows] if "n_cand" in g else np.ones(rows.size)
    err = np.nan_to_num(np.asarray(g["err_r0"], dtype=float)[rows], nan=np.inf)
    best = np.lexsort((err, n_cand > 1, status))
    return rows[best][:max_stamps]


def centroid(data, x0, y0, radius_pix, *, n_iter=10):
    """Background-subtracted centroid of counts in a circle (0-based pixels).  Pure.

    The background is the mean in the annulus between 2 and 3 radii; the circle is
    re-centred on the centroid until it moves less than 0.01 pixel.  NaN when the circle
    holds no counts above the background.
    """
    ny, nx = data.shape
    x, y = float(x0), float(y0)
    r_out = 3.0 * radius_pix
    for _ in range(n_iter):
        i0, i1 = max(int(np.floor(x - r_out)), 0), min(int(np.ceil(x + r_out)) + 1, nx)
        j0, j1 = max(int(np.floor(y - r_out)), 0), min(int(np.ceil(y + r_out)) + 1, ny)
        if i0 >= i1 or j0 >= j1:
            return np.nan, np.nan
        jj, ii = np.mgrid[j0:j1, i0:i1]
        box = data[j0:j1, i0:i1].astype(float)
        r = np.hypot(ii - x, jj - y)
        ring = (r >= 2 * radius_pix) & (r < r_out) & np.isfinite(box)
        bkg = float(box[ring].mean()) if ring.any() else 0.0
        inside = (r < radius_pix) & np.isfinite(box)
        w = np.clip(box[inside] - bkg, 0.0, None)
        if w.sum() <= 0:
            return np.nan, np.nan
        nx_, ny_ = (w * ii[inside]).sum() / w.sum(), (w * jj[inside]).sum() / w.sum()
        moved = np.hypot(nx_ - x, ny_ - y)
        x, y = float(nx_), float(ny_)
        if moved < 0.01:
            break
    return x, y


@dataclass(frozen=True, eq=False)
class Measurement:
    """Offsets from the Gaia crosshair of the chosen stamps, arcsec (per stamp).

    ``image_before``/``image_after``: the source's measured centroid, through the original /
    corrected WCS; ``catalog_before``/``catalog_after``: the catalogued detection position,
    as given / corrected.
    """

    rows: np.ndarray
    image_before: np.ndarray
    image_after: np.ndarray
    catalog_before: np.ndarray
    catalog_after: np.ndarray

    @staticmethod
    def _median(values):
        finite = values[np.isfinite(values)]
        return float(np.median(finite)) if finite.size else float("nan")

    @property
    def median_before(self) -> float:
        return self._median(self.image_before)

    @property
    def median_after(self) -> float:
        return self._median(self.image_after)

    @property
    def n_closer(self) -> int:
        ok = np.isfinite(self.image_before) & np.isfinite(self.image_after)
        return int(np.count_nonzero(self.image_after[ok] < self.image_before[ok]))


def _sep_arcsec(ra1, dec1, ra2, dec2):
    """Great-circle separation, arcsec (Vincenty's formula, exact at any distance)."""
    ra1, dec1, ra2, dec2 = (np.radians(np.asarray(v, dtype=float)) for v in (ra1, dec1, ra2, dec2))
    dra = ra2 - ra1
    num = np.hypot(np.cos(dec2) * np.sin(dra),
                   np.cos(dec1) * np.sin(dec2) - np.sin(dec1) * np.cos(dec2) * np.cos(dra))
    den = np.sin(dec1) * np.sin(dec2) + np.cos(dec1) * np.cos(dec2) * np.cos(dra)
    return np.degrees(np.arctan2(num, den)) * 3600.0


def measure(review, image: StackImage, rows) -> Measurement:
    """Measure the offsets of the chosen stamps (module docstring)."""
    g = review.gaia
    rows = np.asarray(rows, dtype=int)
    ref_ra = np.asarray(g["ref_ra"], dtype=float)[rows]
    ref_dec = np.asarray(g["ref_dec"], dtype=float)[rows]
    det_ra = np.asarray(g["det_ra"], dtype=float)[rows]
    det_dec = np.asarray(g["det_dec"], dtype=float)[rows]
    x0, y0 = _pixels(image.wcs_before, det_ra, det_dec)
    radius = max(APERTURE_ARCSEC / image.pixel_arcsec, 1.5)
    cx = np.full(rows.size, np.nan)
    cy = np.full(rows.size, np.nan)
    for k in range(rows.size):
        cx[k], cy[k] = centroid(image.data, x0[k], y0[k], radius)
    ok = np.isfinite(cx)
    img_b = np.full(rows.size, np.nan)
    img_a = np.full(rows.size, np.nan)
    if ok.any():
        for wcs, out in ((image.wcs_before, img_b), (image.wcs_after, img_a)):
            ra, dec = wcs.all_pix2world(cx[ok], cy[ok], 0)
            out[ok] = _sep_arcsec(ra, dec, ref_ra[ok], ref_dec[ok])
    ra_c, dec_c = review.corrected(det_ra, det_dec)
    return Measurement(rows, img_b, img_a, _sep_arcsec(det_ra, det_dec, ref_ra, ref_dec),
                       _sep_arcsec(ra_c, dec_c, ref_ra, ref_dec))


@dataclass(frozen=True, eq=False)
class _Cut:
    data: np.ndarray
    wcs: object
    origin: tuple      # 0-based (x, y) of the cutout's pixel (0, 0) in the image

    def to_cutout_position(self, xy):
        return xy[0] - self.origin[0], xy[1] - self.origin[1]


def _cutout(image: StackImage, wcs, ra, dec, size_pix) -> _Cut:
    """A ``size_pix`` square centred on the pixel holding (ra, dec); NaN off the image."""
    x, y = _pixels(wcs, ra, dec)
    i0 = int(np.floor(x[0] + 0.5)) - size_pix // 2
    j0 = int(np.floor(y[0] + 0.5)) - size_pix // 2
    ny, nx = image.data.shape
    out = np.full((size_pix, size_pix), np.nan, dtype=np.float32)
    a0, a1 = max(i0, 0), min(i0 + size_pix, nx)
    b0, b1 = max(j0, 0), min(j0 + size_pix, ny)
    if a0 < a1 and b0 < b1:
        out[b0 - j0:b1 - j0, a0 - i0:a1 - i0] = image.data[b0:b1, a0:a1]
    sub = wcs.deepcopy()
    sub.wcs.crpix = sub.wcs.crpix - np.array([i0, j0], dtype=float)
    return _Cut(out, sub, (i0, j0))


def _size_pix(image, size_arcsec):
    return max(int(round(size_arcsec / image.pixel_arcsec)) | 1, 5)


def write_stamps_fits(path, review, image: StackImage, rows, *, size_arcsec=12.0, history=None,
                      clobber=False):
    """The cutouts as one FITS file: HDUs ``BEFORE_<id>`` and ``AFTER_<id>`` per stamp.

    The stack image's pixels about the Gaia position with the original WCS and with the
    corrected one (each centred on the crosshair in its WCS, so the two may start one pixel
    apart: ORIGX/ORIGY), so that DS9 can blink them with the frames locked on WCS
    (``ds9 f.fits[BEFORE_12] f.fits[AFTER_12] -lock frame wcs -blink``).
    Each HDU carries the pair (REGIONID, GAIAID, GAIA_RA, GAIA_DEC) and the transform
    (STKXFMID, STKDXI, STKDETA).
    """
    from astropy.io import fits

    from stk_astrometry.fitsutil import atomic_path, check_clobber, stamp_header

    check_clobber(path, clobber)
    g = review.gaia
    size = _size_pix(image, size_arcsec)
    out = [fits.PrimaryHDU()]
    out[0].header["CONTENT"] = ("STKQASTAMPS", "stk_qa postage stamps")
    out[0].header["STACKID"] = review.stackid
    for k in np.asarray(rows, dtype=int):
        rid = int(g["region_id"][k])
        for name, wcs in (("BEFORE", image.wcs_before), ("AFTER", image.wcs_after)):
            cut = _cutout(image, wcs, g["ref_ra"][k], g["ref_dec"][k], size)
            hdu = fits.ImageHDU(cut.data.astype(np.float32), header=cut.wcs.to_header(),
                                name=f"{name}_{rid}")
            h = hdu.header
            h["REGIONID"] = (rid, "detection region_id")
            h["GAIAID"] = (int(g["ref_id"][k]), "Gaia source_id")
            h["GAIA_RA"] = (float(g["ref_ra"][k]), "[deg] crosshair RA")
            h["GAIA_DEC"] = (float(g["ref_dec"][k]), "[deg] crosshair Dec")
            h["WCSSTATE"] = (name.lower(), "original or corrected WCS")
            h["ORIGX"] = (cut.origin[0] + 1, "image column of this stamp's first pixel")
            h["ORIGY"] = (cut.origin[1] + 1, "image row of this stamp's first pixel")
            h["STKXFMID"] = (review.xfm_id, "transform")
            h["STKDXI"] = (review.d_xi, "[arcsec] shift in xi")
            h["STKDETA"] = (review.d_eta, "[arcsec] shift in eta")
            out.append(hdu)
    hdul = fits.HDUList(out)
    if history is not None:
        for hdu in hdul:
            stamp_header(hdu.header, history)
    with atomic_path(path) as tmp:
        hdul.writeto(tmp, overwrite=True, checksum=True)


#: Display smoothing of the stamps (Gaussian rms, arcsec); measurements use the raw counts.
SMOOTH_ARCSEC = 0.5


def _display(data, sigma_pix):
    """Square-root stretch of counts, lightly smoothed so that a few-count source reads as one
    blob (NaN off the image stays NaN)."""
    bad = ~np.isfinite(data)
    filled = np.where(bad, 0.0, np.clip(data, 0, None))
    if sigma_pix > 0.2:     # separable Gaussian, truncated at 3 sigma (no scipy.ndimage import)
        half = int(np.ceil(3 * sigma_pix))
        kernel = np.exp(-0.5 * (np.arange(-half, half + 1) / sigma_pix) ** 2)
        kernel /= kernel.sum()
        filled = np.apply_along_axis(np.convolve, 0, filled, kernel, mode="same")
        filled = np.apply_along_axis(np.convolve, 1, filled, kernel, mode="same")
    out = np.sqrt(filled)
    out[bad] = np.nan
    return out


def contact_sheet(path, review, image: StackImage, meas: Measurement, *, size_arcsec=12.0,
                  title_extra="", columns=4, dpi=100):
    """Write the PNG contact sheet: per stamp, before | after, crosshair at the centre.

    North up, east left (the sky x axis of a CXC image).  The counts are shown smoothed by a
    Gaussian of :data:`SMOOTH_ARCSEC` rms with a square-root stretch, the same for both halves
    of a stamp.  The red circle is the catalogued
    detection position (before: as given; after: corrected — the same pixel).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.collections import LineCollection, PatchCollection
    from matplotlib.figure import Figure
    from matplotlib.patches import Circle, Rectangle

    from stk_astrometry.formats.regions import STATUS_COLOURS

    g = review.gaia
    rows = meas.rows
    n = max(rows.size, 1)
    ncol = min(columns, n)
    nrow = int(np.ceil(n / ncol))
    size = _size_pix(image, size_arcsec)
    s = image.pixel_arcsec
    half = 0.5 * size * s
    # one axes in arcsec; stamp k's halves are centred at (cell_x, cell_y) of a grid whose
    # cells are 2*half wide plus gaps (one Axes per stamp would cost ~10x the drawing time)
    gap_x, gap_y = 0.15 * half, 0.55 * half
    pitch_x, pitch_y = 2 * half + gap_x, 2 * half + gap_y
    width = 2 * ncol * pitch_x
    height = nrow * pitch_y
    fig_w = 2 * ncol * 1.25
    fig = Figure(figsize=(fig_w, fig_w * height / width + 0.9), dpi=dpi)
    ax = fig.add_axes((0.005, 0.3 / (fig_w * height / width + 0.9), 0.99,
                       (fig_w * height / width) / (fig_w * height / width + 0.9)))
    ax.set_axis_off()
    ax.set_xlim(0, width)
    ax.set_ylim(-height, 0)
    ax.set_aspect("equal")
    lines, line_colours, circles, frames = [], [], [], []
    arm, inner = 0.6 * half, 0.12 * half
    for k, row in enumerate(rows):
        rid = int(g["region_id"][row])
        colour = STATUS_COLOURS[str(review.gaia_status[row])]
        # two pixels more than the cell, clipped to it: the crosshair is up to half a pixel
        # off the cutout's centre
        cuts = [_cutout(image, w, g["ref_ra"][row], g["ref_dec"][row], size + 2)
                for w in (image.wcs_before, image.wcs_after)]
        shown = [_display(c.data, SMOOTH_ARCSEC / image.pixel_arcsec) for c in cuts]
        vmax = max(float(np.nanmax(d[1:-1, 1:-1])) if np.isfinite(d).any() else 1.0
                   for d in shown)
        for j, (cut, disp, wcs, off) in enumerate(zip(
                cuts, shown, (image.wcs_before, image.wcs_after),
                (meas.image_before[k], meas.image_after[k]), strict=True)):
            cx0 = (2 * (k % ncol) + j) * pitch_x + half + (gap_x / 2 if j == 0 else 0)
            cy0 = -(k // ncol) * pitch_y - half - 0.75 * gap_y
            gx, gy = cut.wcs.all_world2pix([g["ref_ra"][row]], [g["ref_dec"][row]], 0)
            ny, nx = cut.data.shape
            # crop to the cell: the crosshair (Gaia) at the cell centre
            extent = (cx0 + (-0.5 - gx[0]) * s, cx0 + (nx - 0.5 - gx[0]) * s,
                      cy0 + (-0.5 - gy[0]) * s, cy0 + (ny - 0.5 - gy[0]) * s)
            im = ax.imshow(disp, origin="lower", cmap="magma", vmin=0, vmax=vmax or 1.0,
                           extent=extent, interpolation="bilinear")
            im.set_clip_path(Rectangle((cx0 - half, cy0 - half), 2 * half, 2 * half,
                                       transform=ax.transData))
            frames.append((Rectangle((cx0 - half, cy0 - half), 2 * half, 2 * half),
                           colour, 2.0 if j == 0 else 1.0))
            for a, b in ((inner, arm), (-arm, -inner)):
                lines += [[(cx0 + a, cy0), (cx0 + b, cy0)], [(cx0, cy0 + a), (cx0, cy0 + b)]]
                line_colours += ["cyan", "cyan"]
            if j == 0:
                ra_d, dec_d = g["det_ra"][row], g["det_dec"][row]
            else:
                ra_d, dec_d = review.corrected(g["det_ra"][row], g["det_dec"][row])
            dx, dy = wcs.all_world2pix(np.atleast_1d(ra_d), np.atleast_1d(dec_d), 0)
            px, py = cut.to_cutout_position((float(dx[0]), float(dy[0])))
            circles.append(Circle((cx0 + (px - gx[0]) * s, cy0 + (py - gy[0]) * s), 0.4))
            label = f"{rid} before" if j == 0 else "after"
            text = "n/a" if not np.isfinite(off) else f'{off:.2f}"'
            ax.text(cx0, cy0 + half + 0.08 * gap_y, f"{label}  {text}", fontsize=7,
                    ha="center", va="bottom")
    ax.add_collection(LineCollection(lines, colors=line_colours, linewidths=0.8))
    ax.add_collection(PatchCollection(circles, facecolors="none", edgecolors="red",
                                      linewidths=0.8))
    for rect, colour, lw in frames:
        rect.set(fill=False, edgecolor=colour, linewidth=lw)
        ax.add_patch(rect)
    fig.suptitle(
        f"{review.stackid}  shift ({review.d_xi:+.3f}, {review.d_eta:+.3f})\"  "
        f"median offset of the source from the Gaia crosshair: "
        f"{meas.median_before:.2f}\" before -> {meas.median_after:.2f}\" after "
        f"({meas.n_closer}/{rows.size} closer)"
        + (f"\n{title_extra}" if title_extra else ""), fontsize=8, y=0.995)
    fig.text(0.01, 0.005, f'stamps {size_arcsec:g}" square, north up, east left; cyan: Gaia; '
             'red circle: detection; frame colour: green used, yellow unused, red excluded',
             fontsize=6)
    from stk_astrometry.fitsutil import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
