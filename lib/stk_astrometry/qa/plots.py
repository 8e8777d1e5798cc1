"""The residual plot of a QA review: offset vectors before and after the correction on the
field, and the normalised residuals against the distribution they should follow.

Left: every pair of the fit's detection leg at its detection's tangent-plane position
(arcmin), an arrow from the detection to its counterpart (1" of offset draws as 2' on the
field) before the correction (grey) and after it (coloured by the pair's role).
Right: the used pairs' residual components after the correction divided by their combined
1-sigma (detection ellipse projected on the axis — CSC 95 % radii / 2.4477 — and the
reference error in quadrature), histogram against N(0, 1); the same before the correction as
a step line.  A good fit puts the solid histogram on the curve; a fit whose errors are
understated spreads it wider.
"""

from __future__ import annotations

import numpy as np

__all__ = ["normalised_residuals", "residual_plot"]

#: Arrow length on the field: arcmin of plot per arcsec of offset.
ARROW_ARCMIN_PER_ARCSEC = 2.0


def normalised_residuals(leg, d_xi, d_eta):
    """(xi, eta) residual components / their 1-sigma, after a shift (d_xi, d_eta).  Pure.

    The detection ellipse (``err_r0``, ``err_r1``: 95 % radii; ``err_ang``: position angle of
    the major axis, north through east) gives the variance along each axis; NaN angles count
    as circular with the major radius (as the mixture does); ``ref_sigra``/``ref_sigdec`` add
    in quadrature.
    """
    r0 = np.asarray(leg["err_r0"], dtype=float) / 2.4477
    r1 = np.asarray(leg["err_r1"], dtype=float) / 2.4477
    ang = np.radians(np.nan_to_num(np.asarray(leg["err_ang"], dtype=float), nan=0.0))
    r1 = np.where(np.isfinite(np.asarray(leg["err_ang"], dtype=float)), r1, r0)
    # major axis along (sin pa, cos pa) in (xi, eta)
    var_xi = (r0 * np.sin(ang)) ** 2 + (r1 * np.cos(ang)) ** 2
    var_eta = (r0 * np.cos(ang)) ** 2 + (r1 * np.sin(ang)) ** 2
    var_xi = var_xi + np.nan_to_num(np.asarray(leg["ref_sigra"], dtype=float)) ** 2
    var_eta = var_eta + np.nan_to_num(np.asarray(leg["ref_sigdec"], dtype=float)) ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        zx = (np.asarray(leg["d_xi"], dtype=float) - d_xi) / np.sqrt(var_xi)
        zy = (np.asarray(leg["d_eta"], dtype=float) - d_eta) / np.sqrt(var_eta)
    return zx, zy


def residual_plot(path, review, *, dpi=100):
    """Write the residual plot PNG of a review (module docstring)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    from stk_astrometry.fitsutil import atomic_path
    from stk_astrometry.formats.regions import STATUS_COLOURS

    leg = review.leg
    status = review.leg_status
    xi = np.asarray(leg["det_xi"], dtype=float) / 60.0
    eta = np.asarray(leg["det_eta"], dtype=float) / 60.0
    dx = np.asarray(leg["d_xi"], dtype=float)
    dy = np.asarray(leg["d_eta"], dtype=float)
    fig = Figure(figsize=(10, 4.6), dpi=dpi)
    ax, bx = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.15, 1]})
    scale = 1 / ARROW_ARCMIN_PER_ARCSEC
    ax.quiver(xi, eta, dx, dy, angles="xy", scale_units="xy", scale=scale, color="0.6",
              width=0.004, label="before")
    for name, colour in STATUS_COLOURS.items():
        sel = status == name
        if sel.any():
            ax.quiver(xi[sel], eta[sel], dx[sel] - review.d_xi, dy[sel] - review.d_eta,
                      angles="xy", scale_units="xy", scale=scale,
                      color={"yellow": "goldenrod"}.get(colour, colour), width=0.004,
                      label=f"after, {name} ({int(sel.sum())})")
    ax.quiver([0.0], [0.0], [review.d_xi], [review.d_eta], angles="xy", scale_units="xy",
              scale=scale, color="blue", width=0.008,
              label=f'shift ({review.d_xi:+.2f}, {review.d_eta:+.2f})"')
    ax.set_aspect("equal")
    lim = max(np.nanmax(np.abs(np.r_[xi, eta, 1.0])) * 1.1, 1.0)
    ax.set_xlim(lim, -lim)      # east to the left
    ax.set_ylim(-lim, lim)
    ax.set_xlabel("xi (arcmin, east left)")
    ax.set_ylabel("eta (arcmin)")
    ax.set_title(f'{review.stackid} {review.leg_name}: offsets '
                 f'(1" -> {ARROW_ARCMIN_PER_ARCSEC:g}\')', fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    used = status == "used"
    zx1, zy1 = normalised_residuals(leg, review.d_xi, review.d_eta)
    zx0, zy0 = normalised_residuals(leg, 0.0, 0.0)
    after = np.r_[zx1[used], zy1[used]]
    before = np.r_[zx0[used], zy0[used]]
    after, before = after[np.isfinite(after)], before[np.isfinite(before)]
    bins = np.linspace(-5, 5, 21)
    if after.size:
        bx.hist(np.clip(after, -4.99, 4.99), bins=bins, density=True, color="tab:green",
                alpha=0.6, label=f"after (rms {np.sqrt(np.mean(after ** 2)):.2f})")
        bx.hist(np.clip(before, -4.99, 4.99), bins=bins, density=True, histtype="step",
                color="0.3", label=f"before (rms {np.sqrt(np.mean(before ** 2)):.2f})")
    z = np.linspace(-5, 5, 201)
    bx.plot(z, np.exp(-0.5 * z ** 2) / np.sqrt(2 * np.pi), color="k", lw=1, label="N(0, 1)")
    bx.set_xlabel("residual / 1-sigma (xi and eta, used pairs)")
    bx.set_ylabel("density")
    bx.set_title(f"normalised residuals, {int(used.sum())} used pairs", fontsize=9)
    bx.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
