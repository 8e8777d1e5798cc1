"""The diagnostics file (``CONTENT = 'STKXFMDIAG'``), stk_xfm's ``diagfile``.

formats.md §2b.  The three pair HDUs of the matched-pairs file (``GAIA_PAIRS``,
``WISE_PAIRS``, ``WISE_GAIA``) with their columns and header keywords, plus two columns:
``used_spec`` (the pair entered the specification's fit) and ``p_true`` (the mixture's
membership probability; NaN where the mixture did not run on that HDU).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stk_astrometry.errors import FormatError
from stk_astrometry.formats._fits import open_product, HduSpec, to_hdulist, write_fits_fast
from stk_astrometry.formats._columns import column_info
from stk_astrometry.formats.pairs import _COLUMN_INFO, LAYOUTS, PAIR_HDUS, STACK_KEYWORDS

__all__ = ["CONTENT", "HDUS", "build_diag_hdul", "write_diag", "Diag", "read_diag"]

CONTENT = "STKXFMDIAG"
HDUS = PAIR_HDUS + ("WISE_GAIA",)


def diag_specs(pairs, used, p_true, keywords=()):
    """The diagnostics file's HDUs as :class:`~._fits.HduSpec`.  Pure.

    Parameters
    ----------
    pairs : stk_astrometry.formats.pairs.Pairs
    used, p_true : dict
        HDU name -> bool / float array over its rows (missing: all False / NaN).
    keywords : sequence of (name, value, comment)
        Primary-header keywords (the mixture's fitted error model: SYSERR, ERRSCALE).
    """
    # the primary: CONTENT, then e.g. SYSERR, ERRSCALE of the mixture
    specs = [HduSpec(None, keys=(("CONTENT", CONTENT, "stk_xfm diagnostics: pairs used"),)
                     + tuple(keywords))]
    stack = tuple(k for k in pairs.keywords if k[0] in STACK_KEYWORDS)
    for name in HDUS:
        n = pairs.n_rows(name)
        cols = dict(pairs.tables[name])
        cols["used_spec"] = np.asarray(used.get(name, np.zeros(n, dtype=bool)), dtype=bool)
        cols["p_true"] = np.asarray(p_true.get(name, np.full(n, np.nan)), dtype=float)
        fixed = {c: f for c, f, _ in LAYOUTS[name] if f}
        fixed.update(used_spec="L", p_true="D")
        # a copy of the pairs file's HDU keeps its header cards; in-memory pairs have none
        cards = tuple(pairs.cards.get(name, ()))
        specs.append(HduSpec(name, cols, units=pairs.units.get(name, {}), formats=fixed,
                             cards=cards, keys=() if cards else stack,
                             drop_long_comments=False,
                             column_info=column_info(cols, _COLUMN_INFO.get(name))))
    return specs


def build_diag_hdul(pairs, used, p_true, keywords=()):
    """The diagnostics file as an astropy HDUList.  No I/O."""
    return to_hdulist(diag_specs(pairs, used, p_true, keywords))


def write_diag(path, pairs, used, p_true, history, *, clobber=False, keywords=()):
    """Write the diagnostics file atomically, stamped with ``history``; ``keywords`` (name,
    value, comment) go to the primary header."""
    write_fits_fast(path, diag_specs(pairs, used, p_true, keywords), history, clobber=clobber)


@dataclass(frozen=True, eq=False)
class Diag:
    """A diagnostics file read back: HDU name -> {column: ndarray}."""

    tables: dict
    path: str


def read_diag(path) -> Diag:
    """Read a diagnostics file.

    Raises
    ------
    InputError, FormatError
    """
    p = Path(path)
    with open_product(p, CONTENT, "diagnostics file") as hdul:
        tables = {}
        for name in HDUS:
            try:
                hdu = hdul[name]
            except KeyError:
                raise FormatError(f"{path}: no {name} HDU") from None
            cols = {}
            for col in hdu.columns:
                arr = np.asarray(hdu.data[col.name])
                cols[col.name.lower()] = arr
            for need in ("used_spec", "p_true"):
                if need not in cols:
                    raise FormatError(f"{path}[{name}]: no {need} column")
            tables[name] = cols
    return Diag(tables, str(p))
