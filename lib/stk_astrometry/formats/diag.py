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

from stk_astrometry.errors import FormatError, InputError
from stk_astrometry.formats._fits import table_hdu
from stk_astrometry.formats.pairs import LAYOUTS, PAIR_HDUS

__all__ = ["CONTENT", "HDUS", "build_diag_hdul", "write_diag", "Diag", "read_diag"]

CONTENT = "STKXFMDIAG"
HDUS = PAIR_HDUS + ("WISE_GAIA",)


def build_diag_hdul(pairs, used, p_true, keywords=()):
    """The diagnostics file: primary + the pair HDUs with ``used_spec`` and ``p_true``.  No I/O.

    Parameters
    ----------
    pairs : stk_astrometry.formats.pairs.Pairs
    used, p_true : dict
        HDU name -> bool / float array over its rows (missing: all False / NaN).
    keywords : sequence of (name, value, comment)
        Primary-header keywords (the mixture's fitted error model: SYSERR, ERRSCALE).
    """
    from astropy.io import fits

    out = [fits.PrimaryHDU()]
    out[0].header["CONTENT"] = (CONTENT, "stk_xfm diagnostics: pairs used")
    for name, value, comment in keywords:      # e.g. SYSERR, ERRSCALE of the mixture
        out[0].header[name] = (value, comment)
    for name in HDUS:
        n = pairs.n_rows(name)
        cols = dict(pairs.tables[name])
        cols["used_spec"] = np.asarray(used.get(name, np.zeros(n, dtype=bool)), dtype=bool)
        cols["p_true"] = np.asarray(p_true.get(name, np.full(n, np.nan)), dtype=float)
        fixed = {c: f for c, f, _ in LAYOUTS[name] if f}
        fixed.update(used_spec="L", p_true="D")
        hdu = table_hdu(name, cols, units=pairs.units.get(name, {}), formats=fixed, nrows=n)
        for card in pairs.cards.get(name, ()):
            if card[0] not in hdu.header:
                hdu.header.append(card)
        if not pairs.cards.get(name):
            from stk_astrometry.formats._fits import set_keywords
            from stk_astrometry.formats.pairs import STACK_KEYWORDS

            set_keywords(hdu.header, [k for k in pairs.keywords if k[0] in STACK_KEYWORDS],
                         drop_long_comments=False)
        out.append(hdu)
    return fits.HDUList(out)


def write_diag(path, pairs, used, p_true, history, *, clobber=False, keywords=()):
    """Write the diagnostics file atomically, stamped with ``history``; ``keywords`` (name,
    value, comment) go to the primary header."""
    from stk_astrometry.fitsutil import write_fits

    write_fits(build_diag_hdul(pairs, used, p_true, keywords), path, history, clobber=clobber)


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
    from astropy.io import fits

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{path}: no such file")
    with fits.open(p, memmap=False) as hdul:
        if str(hdul[0].header.get("CONTENT", "")).strip() != CONTENT:
            raise FormatError(f"{path}: not a diagnostics file (CONTENT != {CONTENT})")
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
