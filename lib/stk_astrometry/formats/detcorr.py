"""The corrected-detections file (``CONTENT = 'STKDETCORR'``), stk_xfm's ``outdetfile``.

formats.md §2a.  HDU ``DETECTIONS``: every filtered detection of the stack, matched or
not, with its original and its corrected position (spec §5.5.6), and the transform's
summary keywords (:func:`stk_astrometry.formats.transform.transform_keywords`) in both
headers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stk_astrometry.errors import FormatError
from stk_astrometry.formats._columns import column_info
from stk_astrometry.formats._fits import open_product, HduSpec, header_keywords, to_hdulist, write_fits_fast

__all__ = ["CONTENT", "EXTNAME", "COLUMNS", "UNITS", "DetCorr", "build_detcorr_hdul",
           "write_detcorr", "read_detcorr"]

CONTENT = "STKDETCORR"
EXTNAME = "DETECTIONS"
COLUMNS = ("region_id", "ra", "dec", "xi", "eta", "ra_corr", "dec_corr", "xi_corr", "eta_corr")
UNITS = {"ra": "deg", "dec": "deg", "ra_corr": "deg", "dec_corr": "deg", "xi": "arcsec",
         "eta": "arcsec", "xi_corr": "arcsec", "eta_corr": "arcsec"}
_FORMATS = {c: ("J" if c == "region_id" else "D") for c in COLUMNS}
_NOT_CARRIED = ("CONTENT", "CREATOR", "DATE", "HISTNUM", "CHECKSUM", "DATASUM")


@dataclass(frozen=True, eq=False)
class DetCorr:
    """A corrected-detections file read back.

    Attributes
    ----------
    columns : dict
        :data:`COLUMNS` -> ndarray.
    keywords : tuple of (name, value, comment)
        The summary keywords of the ``DETECTIONS`` header.
    path : str
    """

    columns: dict
    keywords: tuple
    path: str


def detcorr_specs(columns, keywords):
    """Primary + DETECTIONS (formats.md §2a) as :class:`~._fits.HduSpec`.  Pure.

    Parameters
    ----------
    columns : dict
        :data:`COLUMNS` -> arrays (``region_id`` integer, the others float).
    keywords : list of (name, value, comment)
    """
    cols = {c: np.asarray(columns[c]) for c in COLUMNS}
    cols["region_id"] = cols["region_id"].astype(np.int32)
    return [HduSpec(None, keys=tuple([("CONTENT", CONTENT, "stk_xfm corrected detections")]
                                     + list(keywords))),
            HduSpec(EXTNAME, cols, units=UNITS, formats=_FORMATS, keys=tuple(keywords),
                    column_info=column_info(cols))]


def build_detcorr_hdul(columns, keywords):
    """The corrected-detections file as an astropy HDUList.  No I/O."""
    return to_hdulist(detcorr_specs(columns, keywords))


def write_detcorr(path, columns, keywords, history, *, clobber=False):
    """Write the corrected detections atomically, stamped with ``history``."""
    write_fits_fast(path, detcorr_specs(columns, keywords), history, clobber=clobber)


def read_detcorr(path) -> DetCorr:
    """Read a corrected-detections file.

    Raises
    ------
    InputError, FormatError
    """
    p = Path(path)
    with open_product(p, CONTENT, "corrected-detections file") as hdul:
        try:
            hdu = hdul[EXTNAME]
        except KeyError:
            raise FormatError(f"{path}: no {EXTNAME} HDU") from None
        names = {n.lower(): n for n in hdu.columns.names}
        missing = [c for c in COLUMNS if c not in names]
        if missing:
            raise FormatError(f"{path}[{EXTNAME}]: missing column(s) {', '.join(missing)}")
        cols = {c: np.asarray(hdu.data[names[c]]) for c in COLUMNS}
        keywords = header_keywords(hdu.header, skip=_NOT_CARRIED)
    return DetCorr(cols, keywords, str(p))
