"""One 95 % radius (and one 90 % radius) for the whole package (stk_astrometry.core.radii)."""

import re
from pathlib import Path

import pytest
from scipy.stats import chi2

from stk_astrometry import mixture, simulate, xfmfit
from stk_astrometry.core import abserr, population, radii

LIB = Path(__file__).resolve().parents[1] / "lib" / "stk_astrometry"


def test_radii_hold_their_probability():
    # |x|^2 / sigma^2 of a circular 2-D Gaussian is chi2 with 2 degrees of freedom
    assert radii.R95_PER_SIGMA**2 == pytest.approx(chi2.ppf(0.95, 2), rel=1e-12)
    assert radii.R90_PER_SIGMA**2 == pytest.approx(chi2.ppf(0.90, 2), rel=1e-12)
    assert radii.R95_PER_SIGMA == pytest.approx(2.4477, abs=1e-4)
    assert radii.R90_PER_SIGMA == pytest.approx(2.1460, abs=1e-4)
    assert radii.radius_per_sigma(0.5) == pytest.approx(chi2.ppf(0.5, 2) ** 0.5, rel=1e-12)
    for p in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError):
            radii.radius_per_sigma(p)


def test_every_module_uses_the_one_constant():
    for value in (xfmfit.R95_PER_SIGMA, mixture.R95_PER_SIGMA, simulate.SIGMA_TO_R95,
                  abserr.SIGMA_TO_R95, population.SIGMA_TO_R95):
        assert value is radii.R95_PER_SIGMA
    assert simulate.SIGMA_TO_R90 is radii.R90_PER_SIGMA
    assert population.SIGMA_TO_R90 is radii.R90_PER_SIGMA


def test_no_module_computes_its_own_copy():
    own = re.compile(r"sqrt\(\s*-\s*2(\.0)?\s*\*\s*(np|math)\.log\(\s*0\.(05|1)\s*\)")
    copies = [str(p.relative_to(LIB)) for p in LIB.rglob("*.py")
              if p.name != "radii.py" and own.search(p.read_text())]
    assert copies == []
