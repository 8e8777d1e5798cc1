"""Radii of a circular 2-D Gaussian that hold a given probability, per unit per-axis sigma.

A circular Gaussian of per-axis sigma ``s`` holds probability ``p`` within the radius
``s sqrt(-2 ln(1 - p))`` (the radius is Rayleigh-distributed).  CSC error ellipses are 95 %
radii (spec §5.3), Chandra PSF sizes are 90 % radii: every module converts with these two
constants, defined here once.
"""

import math

__all__ = ["R90_PER_SIGMA", "R95_PER_SIGMA", "radius_per_sigma"]


def radius_per_sigma(p):
    """Radius holding probability ``p`` (0 < p < 1), in units of the per-axis sigma."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), not {p!r}")
    return math.sqrt(-2.0 * math.log1p(-p))


#: 95 % radius / per-axis sigma: 2.4477 (CSC err_ellipse_r0, r1 are 95 % radii).
R95_PER_SIGMA = radius_per_sigma(0.95)
#: 90 % radius / per-axis sigma: 2.1460 (PSF r90).
R90_PER_SIGMA = radius_per_sigma(0.90)
