"""DS9 region files of a stack's matched pairs, for the QA review (formats.md §2e).

One file per stack, in world coordinates (ICRS, degrees), so that it marks the same sky in a
frame with the image's original WCS and in one with the corrected WCS:

- a ``cross`` point (tag ``gaia``) at every Gaia counterpart: the crosshair the operator
  compares the source with;
- the detection's 95 % error ellipse before the correction (dashed, tag ``before``) and after
  it (solid, tag ``after``) — ``ellipse(ra, dec, r0, r1, angle)`` with the DS9 angle
  ``err_ang + 90`` (DS9 measures from the x axis, i.e. west on a north-up image; CSC's
  ``err_ang`` is the position angle of the major axis, north through east);
- a line from each detection (before) to its counterpart (tag ``line``);
- the detection's ``region_id`` as a text label 2.5" north of it (tag ``label``).

Colours tell the pair's role in the fit: green ``used``, yellow ``unused`` (another
separation group, or a chance match the mixture discounts), red ``excluded`` (by the
operator); the Gaia crosshairs are cyan.  Every region also carries the tag of its status, so
``regions group used select`` works in DS9.  Written with the ``regions`` package
(:func:`format_regions` is pure, :func:`write_regions` writes atomically).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["STATUS_COLOURS", "GAIA_COLOUR", "PairMarks", "pair_regions", "format_regions",
           "write_regions"]

STATUS_COLOURS = {"used": "green", "unused": "yellow", "excluded": "red"}
GAIA_COLOUR = "cyan"
#: Offset of the text label north of the detection, arcsec.
LABEL_OFFSET_ARCSEC = 2.5


@dataclass(frozen=True, eq=False)
class PairMarks:
    """What the region file draws, one entry per pair (arrays of equal length).

    Attributes
    ----------
    region_id, ref_id : ndarray of int
    det_ra, det_dec : ndarray
        Detection position as catalogued (before the correction), deg.
    det_ra_corr, det_dec_corr : ndarray
        The same, corrected by the transform, deg.
    ref_ra, ref_dec : ndarray
        Counterpart (Gaia) position, deg.
    err_r0, err_r1, err_ang : ndarray
        95 % error ellipse radii (arcsec) and position angle (deg, north through east).
    status : ndarray of str
        ``used``, ``unused`` or ``excluded``.
    """

    region_id: np.ndarray
    ref_id: np.ndarray
    det_ra: np.ndarray
    det_dec: np.ndarray
    det_ra_corr: np.ndarray
    det_dec_corr: np.ndarray
    ref_ra: np.ndarray
    ref_dec: np.ndarray
    err_r0: np.ndarray
    err_r1: np.ndarray
    err_ang: np.ndarray
    status: np.ndarray

    def __len__(self):
        return len(self.region_id)


def _ellipse_axes(r0, r1, ang):
    """DS9-ready (semi-major, semi-minor, angle) with NaN errors drawn as a 0.5" circle."""
    if not (np.isfinite(r0) and r0 > 0):
        return 0.5, 0.5, 0.0
    r1 = r1 if np.isfinite(r1) and r1 > 0 else r0
    ang = ang if np.isfinite(ang) else 0.0
    return float(r0), float(r1), float(ang) + 90.0


def pair_regions(marks: PairMarks):
    """The :class:`regions.Regions` of the pairs (module docstring).  Pure.

    A counterpart shared by several pairs gets one crosshair.
    """
    import astropy.units as u
    from astropy.coordinates import SkyCoord
    from regions import (EllipseSkyRegion, LineSkyRegion, PointSkyRegion, RegionMeta,
                         Regions, RegionVisual, TextSkyRegion)

    out = []
    seen_refs = set()
    for k in range(len(marks)):
        status = str(marks.status[k])
        colour = STATUS_COLOURS[status]
        rid = int(marks.region_id[k])
        ref = SkyCoord(marks.ref_ra[k], marks.ref_dec[k], unit="deg", frame="icrs")
        det = SkyCoord(marks.det_ra[k], marks.det_dec[k], unit="deg", frame="icrs")
        det_corr = SkyCoord(marks.det_ra_corr[k], marks.det_dec_corr[k], unit="deg",
                            frame="icrs")
        ref_key = (int(marks.ref_id[k]), float(marks.ref_ra[k]), float(marks.ref_dec[k]))
        if ref_key not in seen_refs:
            seen_refs.add(ref_key)
            out.append(PointSkyRegion(
                ref, meta=RegionMeta(tag=["gaia", status], text=f"{int(marks.ref_id[k])}"),
                visual=RegionVisual(marker="+", markersize=15, color=GAIA_COLOUR)))
        a, b, angle = _ellipse_axes(marks.err_r0[k], marks.err_r1[k], marks.err_ang[k])
        for centre, when, style in ((det, "before", "dashed"), (det_corr, "after", "solid")):
            visual = RegionVisual(color=colour)
            if style == "dashed":
                visual = RegionVisual(color=colour, linestyle="dashed")
            out.append(EllipseSkyRegion(centre, 2 * a * u.arcsec, 2 * b * u.arcsec,
                                        angle * u.deg, meta=RegionMeta(tag=[when, status]),
                                        visual=visual))
        out.append(LineSkyRegion(det, ref, meta=RegionMeta(tag=["line", status]),
                                 visual=RegionVisual(color=colour)))
        label = det.directional_offset_by(0 * u.deg, LABEL_OFFSET_ARCSEC * u.arcsec)
        out.append(TextSkyRegion(label, str(rid), meta=RegionMeta(tag=["label", status]),
                                 visual=RegionVisual(color=colour)))
    return Regions(out)


def format_regions(regions, *, title="") -> str:
    """The DS9 text of ``regions`` (ICRS, 9 decimals: ~4 micro-arcsec), with a title line."""
    body = regions.serialize(format="ds9", precision=9) if len(regions) else \
        "# Region file format: DS9 astropy/regions\nicrs\n"
    lines = body.splitlines()
    head = [lines[0]]
    if title:
        head.append(f"# {title}")
    head.append('global font="helvetica 10 normal roman" width=1 dashlist=4 3')
    return "\n".join(head + lines[1:]) + "\n"


def write_regions(path, text) -> None:
    """Write a region file atomically (temporary file + rename)."""
    from stk_astrometry.fitsutil import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
