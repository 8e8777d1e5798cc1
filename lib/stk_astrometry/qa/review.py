"""What a QA review looks at: a stack's pairs, its transform and each pair's role in the fit.

Pure once the files are read (:func:`load_review` reads them through the ``formats``
modules).  The other ``qa`` modules draw from a :class:`Review`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from stk_astrometry.errors import InputError
from stk_astrometry.formats.regions import PairMarks
from stk_astrometry.formats.selection import Selection, SelectionRow
from stk_astrometry.tangent import shift_sky

logger = logging.getLogger(__name__)

__all__ = ["Review", "load_review", "pair_status", "pair_marks", "selection_of"]

#: CSC 95 % error radius -> 1 sigma.
R95_TO_SIGMA = 1.0 / 2.4477


@dataclass(frozen=True, eq=False)
class Review:
    """One stack under review.

    Attributes
    ----------
    stackid, instrument, method : str
    ra_stack, dec_stack : float
        Tangent point, deg.
    d_xi, d_eta : float
        The transform's applied shift, arcsec.
    xfm_id : str
        ``STKXFMID`` of the transform.
    keywords : dict
        The STKXFM header's keywords (QAFLAGS, QAREASON, GROUP, ESTIMATR, QAITER, ...).
    gaia : dict
        ``GAIA_PAIRS`` columns (every detection-Gaia pair: what the stamps and regions show).
    leg_name : str
        The HDU of the fit's detection leg (``GAIA_PAIRS`` direct, ``WISE_PAIRS`` two-step).
    leg : dict
        Its columns.
    leg_status : ndarray of str
        ``used`` / ``unused`` / ``excluded`` per leg pair.
    leg_p_true : ndarray
        Mixture membership per leg pair (NaN: unknown).
    gaia_status : ndarray of str
        The status shown for each Gaia pair (direct: its own; two-step: ``used`` when its
        detection has a used ALLWISE pair).
    pairs_path, transform_path : str
    """

    stackid: str
    instrument: str
    method: str
    ra_stack: float
    dec_stack: float
    d_xi: float
    d_eta: float
    xfm_id: str
    keywords: dict
    gaia: dict
    leg_name: str
    leg: dict
    leg_status: np.ndarray
    leg_p_true: np.ndarray
    gaia_status: np.ndarray
    pairs_path: str = ""
    transform_path: str = ""

    @property
    def qa_flags(self) -> int:
        value = self.keywords.get("QAFLAGS", 0)
        return int(value) if isinstance(value, (int, np.integer)) else 0

    @property
    def qa_iteration(self) -> int:
        value = self.keywords.get("QAITER", 0)
        return int(value) if isinstance(value, (int, np.integer)) else 0

    def corrected(self, ra, dec):
        """Positions moved by the transform (formats.md §3)."""
        return shift_sky(np.asarray(ra, dtype=float), np.asarray(dec, dtype=float), self.d_xi,
                         self.d_eta, self.ra_stack, self.dec_stack)


def pair_status(region_id, group, *, fit_group, used=None, include=None, exclude=None):
    """Each pair's role in a fit: ``used``, ``unused`` or ``excluded``.  Pure.

    ``used`` (the diagnostics file's ``used_spec``) wins when given.  Otherwise the
    specification's fit uses every pair of the separation group it chose (``fit_group``; 0:
    all groups) among the detections the operator kept.
    """
    region_id = np.asarray(region_id, dtype=np.int64)
    n = region_id.size
    status = np.full(n, "unused", dtype="U8")
    kept = np.ones(n, dtype=bool)
    if include is not None:
        kept &= np.isin(region_id, include)
    if exclude is not None:
        kept &= ~np.isin(region_id, exclude)
    if used is not None:
        status[np.asarray(used, dtype=bool)] = "used"
    else:
        in_group = np.ones(n, dtype=bool) if not fit_group else np.asarray(group) == fit_group
        status[in_group & kept] = "used"
    status[~kept] = "excluded"
    return status


def _status_of_gaia_pairs(review_method, gaia, leg, leg_status):
    if review_method == "direct":
        return leg_status.copy()
    used_dets = np.asarray(leg["region_id"])[leg_status == "used"]
    excl_dets = np.asarray(leg["region_id"])[leg_status == "excluded"]
    rid = np.asarray(gaia["region_id"])
    status = np.full(rid.size, "unused", dtype="U8")
    status[np.isin(rid, used_dets)] = "used"
    status[np.isin(rid, excl_dets)] = "excluded"
    return status


def pair_marks(review: Review, rows=None) -> PairMarks:
    """The region-file marks of the Gaia pairs (all, or ``rows``).  Pure."""
    g = review.gaia
    rows = np.arange(len(g["region_id"])) if rows is None else np.asarray(rows, dtype=int)
    ra_c, dec_c = review.corrected(np.asarray(g["det_ra"])[rows], np.asarray(g["det_dec"])[rows])
    return PairMarks(
        region_id=np.asarray(g["region_id"])[rows], ref_id=np.asarray(g["ref_id"])[rows],
        det_ra=np.asarray(g["det_ra"], dtype=float)[rows],
        det_dec=np.asarray(g["det_dec"], dtype=float)[rows],
        det_ra_corr=np.atleast_1d(ra_c), det_dec_corr=np.atleast_1d(dec_c),
        ref_ra=np.asarray(g["ref_ra"], dtype=float)[rows],
        ref_dec=np.asarray(g["ref_dec"], dtype=float)[rows],
        err_r0=np.asarray(g["err_r0"], dtype=float)[rows],
        err_r1=np.asarray(g["err_r1"], dtype=float)[rows],
        err_ang=np.asarray(g["err_ang"], dtype=float)[rows],
        status=review.gaia_status[rows])


def selection_of(review: Review) -> Selection:
    """The selection file of the fit's leg: ``use = yes`` for the pairs not excluded.  Pure."""
    leg = review.leg
    rows = []
    for k in range(len(leg["region_id"])):
        rows.append(SelectionRow(int(leg["region_id"][k]), int(leg["ref_id"][k]),
                                 float(leg["sep"][k]), int(leg["group"][k]),
                                 str(review.leg_status[k]), float(review.leg_p_true[k]),
                                 review.leg_status[k] != "excluded"))
    return Selection(review.stackid, review.leg_name, review.xfm_id, tuple(rows))


# ---------------------------------------------------------------------------------------------
# Reading


def _keyword_dict(keywords) -> dict:
    return {str(name).upper(): value for name, value, *_ in keywords}


def load_review(pairsfile, transformfile, *, diagfile=None, selection=None) -> Review:
    """Read a stack's pairs and transform (and optionally diagnostics and a selection).

    Parameters
    ----------
    pairsfile, transformfile : str or Path
    diagfile : str or Path, optional
        stk_xfm's diagnostics file: exact ``used_spec`` and ``p_true`` per pair.
    selection : Selection, optional
        The operator's selection the transform was fitted with (its ``no`` pairs show as
        excluded).

    Raises
    ------
    stk_astrometry.errors.StkError
    """
    from stk_astrometry.formats.pairs import read_pairs
    from stk_astrometry.formats.transform import read_transform_file

    pin = read_pairs(pairsfile, param="pairsfile")
    xfm = read_transform_file(transformfile)
    keys = _keyword_dict(xfm.keywords)
    total = next((c for c in xfm.components if c.name.upper() == "TOTAL"), xfm.components[0])
    ra_ref = float(xfm.columns["ra_ref"][0])
    dec_ref = float(xfm.columns["dec_ref"][0])
    if pin.stackid and keys.get("STACKID") and str(keys["STACKID"]).strip() != pin.stackid:
        raise InputError(f"transformfile={transformfile}: STACKID {keys['STACKID']!r} is not "
                         f"the pairs file's {pin.stackid!r}")
    if abs(ra_ref - pin.ra_stack) > 1e-9 or abs(dec_ref - pin.dec_stack) > 1e-9:
        raise InputError(f"transformfile={transformfile}: tangent point ({ra_ref}, {dec_ref}) "
                         f"is not the pairs file's ({pin.ra_stack}, {pin.dec_stack})")
    method = str(keys.get("METHOD", pin.method)).strip().lower() or pin.method
    leg_name = "WISE_PAIRS" if method == "twostep" else "GAIA_PAIRS"
    leg = pin.tables[leg_name]
    n_leg = len(leg["region_id"])
    used = None
    p_true = np.full(n_leg, np.nan)
    if diagfile:
        from stk_astrometry.formats.diag import read_diag

        table = read_diag(diagfile).tables[leg_name]
        if len(table["region_id"]) != n_leg or not np.array_equal(
                np.asarray(table["region_id"]), np.asarray(leg["region_id"])):
            raise InputError(f"diagfile={diagfile}: its {leg_name} rows are not the pairs "
                             f"file's")
        used = np.asarray(table["used_spec"], dtype=bool)
        p_true = np.asarray(table["p_true"], dtype=float)
    include = exclude = None
    if selection is not None:
        from stk_astrometry.formats.selection import selected_ids

        include, _ = selected_ids(selection, which="include")
    fit_group = keys.get("GROUP", 0)
    fit_group = int(fit_group) if isinstance(fit_group, (int, np.integer)) else 0
    if method == "none":
        leg_status = np.full(n_leg, "unused", dtype="U8")
    else:
        leg_status = pair_status(leg["region_id"], leg["group"], fit_group=fit_group, used=used,
                                 include=include, exclude=exclude)
    gaia = pin.tables["GAIA_PAIRS"]
    return Review(
        stackid=pin.stackid or str(keys.get("STACKID", "")).strip(), instrument=pin.instrument,
        method=method, ra_stack=pin.ra_stack, dec_stack=pin.dec_stack, d_xi=float(total.d_xi),
        d_eta=float(total.d_eta), xfm_id=xfm.xfm_id, keywords=keys, gaia=gaia,
        leg_name=leg_name, leg=leg, leg_status=leg_status, leg_p_true=p_true,
        gaia_status=_status_of_gaia_pairs(method, gaia, leg, leg_status),
        pairs_path=str(pairsfile), transform_path=str(transformfile))
