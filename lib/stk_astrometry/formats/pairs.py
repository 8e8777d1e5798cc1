"""The matched-pairs file (``CONTENT = 'STKPAIRS'``): written by stk_match, read by stk_xfm.

formats.md §1.  HDUs ``DETECTIONS``, ``GAIA_PAIRS``, ``WISE_PAIRS``, ``WISE_GAIA`` (all
present, possibly empty) after a primary header with the stack-level keywords.  The file's
content travels in memory as :class:`Pairs`; :func:`pairs_from_match` builds it from the
matching core's result, :func:`build_pairs_hdul` lays it out as FITS (no I/O),
:func:`write_pairs` writes it, :func:`read_pairs` reads and checks a file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stk_astrometry.errors import FormatError, InputError, ParameterError
from stk_astrometry.formats._columns import column_info
from stk_astrometry.formats._fits import (
    HduSpec,
    extra_cards,
    header_keywords,
    header_value,
    keyword_value,
    to_hdulist,
    write_fits_fast,
)
from stk_astrometry.formats.transform import INSTRUMENT_GRIDS

logger = logging.getLogger(__name__)

__all__ = ["CONTENT", "PAIR_HDUS", "TABLE_HDUS", "PAIR_COLUMNS", "WISE_GAIA_COLUMNS",
           "DETECTION_COLUMNS", "DETECTIONS_LAYOUT", "PAIRS_LAYOUT", "WISE_GAIA_LAYOUT",
           "STACK_KEYWORDS", "Pairs", "pairs_from_match", "build_pairs_hdul", "write_pairs",
           "read_pairs", "pairset_from_columns"]

CONTENT = "STKPAIRS"

#: The pair HDUs whose layout is :data:`PAIRS_LAYOUT`.
PAIR_HDUS = ("GAIA_PAIRS", "WISE_PAIRS")
#: Every table HDU, in file order.
TABLE_HDUS = ("DETECTIONS",) + PAIR_HDUS + ("WISE_GAIA",)

#: Column layouts, in file order: (name, TFORM or None for a string's width, unit).
DETECTIONS_LAYOUT = (
    ("region_id", "J", ""), ("ra", "D", "deg"), ("dec", "D", "deg"),
    ("xi", "D", "arcsec"), ("eta", "D", "arcsec"), ("err_r0", "D", "arcsec"),
    ("err_r1", "D", "arcsec"), ("err_ang", "D", "deg"), ("theta", "D", "arcmin"),
    ("src_cnts", "D", "count"), ("likelihood_class", None, ""), ("n_gaia", "J", ""),
    ("n_wise", "J", ""),
)
PAIRS_LAYOUT = (
    ("region_id", "J", ""), ("ref_id", "K", ""), ("det_ra", "D", "deg"),
    ("det_dec", "D", "deg"), ("ref_ra", "D", "deg"), ("ref_dec", "D", "deg"),
    ("det_xi", "D", "arcsec"), ("det_eta", "D", "arcsec"), ("ref_xi", "D", "arcsec"),
    ("ref_eta", "D", "arcsec"), ("err_r0", "D", "arcsec"), ("err_r1", "D", "arcsec"),
    ("err_ang", "D", "deg"), ("ref_sigra", "D", "arcsec"), ("ref_sigdec", "D", "arcsec"),
    ("theta", "D", "arcmin"), ("src_cnts", "D", "count"), ("sep", "D", "arcsec"),
    ("d_xi", "D", "arcsec"), ("d_eta", "D", "arcsec"), ("group", "J", ""), ("n_cand", "J", ""),
)
WISE_GAIA_LAYOUT = (
    ("wise_id", "K", ""), ("gaia_id", "K", ""), ("wise_ra", "D", "deg"),
    ("wise_dec", "D", "deg"), ("wise_xi", "D", "arcsec"), ("wise_eta", "D", "arcsec"),
    ("wise_sigra", "D", "arcsec"), ("wise_sigdec", "D", "arcsec"), ("gaia_ra", "D", "deg"),
    ("gaia_dec", "D", "deg"), ("gaia_xi", "D", "arcsec"), ("gaia_eta", "D", "arcsec"),
    ("sep", "D", "arcsec"), ("d_xi", "D", "arcsec"), ("d_eta", "D", "arcsec"),
)
LAYOUTS = {"DETECTIONS": DETECTIONS_LAYOUT, "GAIA_PAIRS": PAIRS_LAYOUT,
           "WISE_PAIRS": PAIRS_LAYOUT, "WISE_GAIA": WISE_GAIA_LAYOUT}

#: Where a column of one HDU means something more specific than the shared description.
_COLUMN_INFO = {
    "WISE_GAIA": {"sep": ("Separation of the ALLWISE source and its Gaia best neighbour",
                          "pos.angDistance"),
                  "d_xi": ("Offset in xi, Gaia minus ALLWISE", "pos.cartesian.x;arith.diff"),
                  "d_eta": ("Offset in eta, Gaia minus ALLWISE", "pos.cartesian.y;arith.diff")},
}

#: The columns a reader requires (stk_xfm's needs).
PAIR_COLUMNS = ("region_id", "det_xi", "det_eta", "d_xi", "d_eta", "sep", "group", "err_r0",
                "err_r1", "err_ang", "ref_sigra", "ref_sigdec")
WISE_GAIA_COLUMNS = ("wise_id", "wise_xi", "wise_eta", "wise_sigra", "wise_sigdec", "sep",
                     "d_xi", "d_eta")
DETECTION_COLUMNS = ("region_id", "ra", "dec", "theta", "src_cnts")

#: Keywords repeated in every HDU.
STACK_KEYWORDS = ("STACKID", "INSTRUME", "RA_STACK", "DEC_STACK")
_STACK_COMMENTS = {"STACKID": "detect_stack_id", "INSTRUME": "ACIS or HRC",
                   "RA_STACK": "[deg] stack tangent point RA",
                   "DEC_STACK": "[deg] stack tangent point Dec"}
#: Set by the writer or the FITS stamping; not carried in :attr:`Pairs.keywords`.
_NOT_CARRIED = ("CONTENT", "HDUNAME", "CREATOR", "DATE", "HISTNUM", "CHECKSUM", "DATASUM")


@dataclass(frozen=True, eq=False)
class Pairs:
    """The content of a matched-pairs file, in memory.

    Attributes
    ----------
    stackid, instrument : str
    ra_stack, dec_stack : float
        Tangent point, deg.
    method : str
        ``direct``, ``twostep`` or ``none``.
    n_groups : int
    match_radius, dens_gaia, dens_wise : float or None
        ``MATCHRAD`` (arcsec), ``DENSGAIA``/``DENSWISE`` (per arcmin²); None when absent.
    keywords : tuple of (name, value, comment)
        The primary header's stack-level keywords in file order (formats.md §1).
    tables : dict
        HDU name (:data:`TABLE_HDUS`) -> ``{column: ndarray}`` in file order.
    units : dict
        HDU name -> ``{column: unit}``.
    cards : dict
        HDU name -> extra header cards as read from a file (``()`` in memory); a copy of an
        HDU (the diagnostics file) keeps them.
    path : str or None
        The file read, None for pairs built in memory.
    """

    stackid: str
    instrument: str
    ra_stack: float
    dec_stack: float
    method: str
    n_groups: int
    match_radius: float | None
    dens_gaia: float | None
    dens_wise: float | None
    keywords: tuple
    tables: dict
    units: dict = field(default_factory=dict)
    cards: dict = field(default_factory=dict)
    path: str | None = None

    @property
    def detections(self) -> dict:
        """The ``DETECTIONS`` columns."""
        return self.tables["DETECTIONS"]

    def pairs(self, hdu_name):
        """The :class:`~stk_astrometry.xfmfit.PairSet` of a ``*_PAIRS`` HDU or of ``WISE_GAIA``."""
        return pairset_from_columns(self.tables[hdu_name], kind=hdu_name)

    def n_rows(self, hdu_name) -> int:
        cols = self.tables[hdu_name]
        return len(next(iter(cols.values()))) if cols else 0


def pairset_from_columns(cols, *, kind):
    """A PairSet from the columns of a ``*_PAIRS`` HDU or of ``WISE_GAIA``.  Pure."""
    from stk_astrometry import xfmfit

    def f(name):
        return np.asarray(cols[name], dtype=float)

    if kind == "WISE_GAIA":
        n = len(cols["wise_id"])
        nan = np.full(n, np.nan)
        return xfmfit.PairSet(
            region_id=np.asarray(cols["wise_id"], dtype=np.int64), src_xi=f("wise_xi"),
            src_eta=f("wise_eta"), d_xi=f("d_xi"), d_eta=f("d_eta"), sep=f("sep"),
            group=np.zeros(n, dtype=int), err_r0=nan, err_r1=nan, err_ang=nan,
            ref_sigra=f("wise_sigra"), ref_sigdec=f("wise_sigdec"))
    return xfmfit.PairSet(
        region_id=np.asarray(cols["region_id"], dtype=np.int64), src_xi=f("det_xi"),
        src_eta=f("det_eta"), d_xi=f("d_xi"), d_eta=f("d_eta"), sep=f("sep"),
        group=np.asarray(cols["group"], dtype=int), err_r0=f("err_r0"), err_r1=f("err_r1"),
        err_ang=f("err_ang"), ref_sigra=f("ref_sigra"), ref_sigdec=f("ref_sigdec"))


# ---------------------------------------------------------------------------------------------
# From the matching core


#: Each table's column units (from LAYOUTS, made once: issue 11).
_UNITS = {name: {c: u for c, _, u in LAYOUTS[name] if u} for name in TABLE_HDUS}


def pairs_from_match(result, det, gaia, wise, *, stackid, instrument) -> Pairs:
    """The pairs file's content from :func:`stk_astrometry.matching.match_stack`.  Pure.

    Parameters
    ----------
    result : stk_astrometry.matching.MatchResult
    det, gaia, wise : the core's input arrays (``wise`` None without ALLWISE)
    stackid, instrument : str
    """
    from stk_astrometry import matching

    cfg = result.config
    rows = result.det_rows
    klass = np.asarray(det.likelihood_class)[rows].astype(str)
    detections = {
        "region_id": np.asarray(det.region_id)[rows].astype(np.int32),
        "ra": np.asarray(det.ra_deg)[rows], "dec": np.asarray(det.dec_deg)[rows],
        "xi": result.det_xi_arcsec[rows], "eta": result.det_eta_arcsec[rows],
        "err_r0": np.asarray(det.err_r0_arcsec)[rows],
        "err_r1": np.asarray(det.err_r1_arcsec)[rows],
        "err_ang": np.asarray(det.err_ang_deg)[rows],
        "theta": np.asarray(det.theta_arcmin)[rows],
        "src_cnts": np.asarray(det.src_cnts)[rows],
        "likelihood_class": klass,
        "n_gaia": result.n_gaia_cand.astype(np.int32),
        "n_wise": result.n_wise_cand.astype(np.int32),
    }

    def pair_columns(pairs, ref_ids, ref_ra, ref_dec, ref_xi, ref_eta, sigra, sigdec):
        d, r = pairs.det_row, pairs.ref_row
        return {
            "region_id": np.asarray(det.region_id)[d].astype(np.int32),
            "ref_id": np.asarray(ref_ids, dtype=np.int64)[r],
            "det_ra": np.asarray(det.ra_deg)[d], "det_dec": np.asarray(det.dec_deg)[d],
            "ref_ra": np.asarray(ref_ra, dtype=float)[r],
            "ref_dec": np.asarray(ref_dec, dtype=float)[r],
            "det_xi": result.det_xi_arcsec[d], "det_eta": result.det_eta_arcsec[d],
            "ref_xi": np.asarray(ref_xi)[r], "ref_eta": np.asarray(ref_eta)[r],
            "err_r0": np.asarray(det.err_r0_arcsec)[d],
            "err_r1": np.asarray(det.err_r1_arcsec)[d],
            "err_ang": np.asarray(det.err_ang_deg)[d],
            "ref_sigra": np.asarray(sigra, dtype=float)[r],
            "ref_sigdec": np.asarray(sigdec, dtype=float)[r],
            "theta": np.asarray(det.theta_arcmin)[d], "src_cnts": np.asarray(det.src_cnts)[d],
            "sep": pairs.sep_arcsec, "d_xi": pairs.d_xi_arcsec, "d_eta": pairs.d_eta_arcsec,
            "group": pairs.group.astype(np.int32), "n_cand": pairs.n_cand.astype(np.int32),
        }

    n_gaia = len(gaia)
    g_sigra = getattr(gaia, "sigra_arcsec", None)
    g_sigdec = getattr(gaia, "sigdec_arcsec", None)
    gaia_cols = pair_columns(result.gaia_pairs, gaia.source_id, gaia.ra_deg, gaia.dec_deg,
                             result.gaia_xi_arcsec, result.gaia_eta_arcsec,
                             np.zeros(n_gaia) if g_sigra is None else g_sigra,
                             np.zeros(n_gaia) if g_sigdec is None else g_sigdec)
    wise_pairs = result.wise_pairs or matching.empty_pairs(cfg.n_groups)
    if wise is None:
        wise_ids = np.empty(0, dtype=np.int64)
        w_ra = w_dec = w_sigra = w_sigdec = np.empty(0)
    else:
        wise_ids, w_ra, w_dec = wise.allwise_oid, wise.ra_deg, wise.dec_deg
        w_sigra, w_sigdec = wise.sigra_arcsec, wise.sigdec_arcsec
    wise_cols = pair_columns(wise_pairs, wise_ids, w_ra, w_dec, result.wise_xi_arcsec,
                             result.wise_eta_arcsec, w_sigra, w_sigdec)
    wg = result.wise_gaia
    wr, gr = wg.wise_row, wg.gaia_row
    wg_cols = {
        "wise_id": np.asarray(wise_ids, dtype=np.int64)[wr],
        "gaia_id": np.asarray(gaia.source_id, dtype=np.int64)[gr],
        "wise_ra": np.asarray(w_ra, dtype=float)[wr],
        "wise_dec": np.asarray(w_dec, dtype=float)[wr],
        "wise_xi": np.asarray(result.wise_xi_arcsec)[wr],
        "wise_eta": np.asarray(result.wise_eta_arcsec)[wr],
        "wise_sigra": np.asarray(w_sigra, dtype=float)[wr],
        "wise_sigdec": np.asarray(w_sigdec, dtype=float)[wr],
        "gaia_ra": np.asarray(gaia.ra_deg, dtype=float)[gr],
        "gaia_dec": np.asarray(gaia.dec_deg, dtype=float)[gr],
        "gaia_xi": result.gaia_xi_arcsec[gr], "gaia_eta": result.gaia_eta_arcsec[gr],
        "sep": wg.sep_arcsec, "d_xi": wg.d_xi_arcsec, "d_eta": wg.d_eta_arcsec,
    }

    keys = [
        ("STACKID", stackid, _STACK_COMMENTS["STACKID"]),
        ("INSTRUME", instrument, _STACK_COMMENTS["INSTRUME"]),
        ("RA_STACK", cfg.ra_stack_deg, _STACK_COMMENTS["RA_STACK"]),
        ("DEC_STACK", cfg.dec_stack_deg, _STACK_COMMENTS["DEC_STACK"]),
        ("RSTACK", cfg.r_stack_arcmin, "[arcmin] cone radius r_stack"),
        ("MATCHRAD", cfg.match_radius_arcsec, "[arcsec] cross-match radius"),
        ("SEPBINS", ",".join(f"{e:g}" for e in cfg.sep_bins_arcsec),
         "[arcsec] upper edges of separation groups"),
        ("NGROUPS", cfg.n_groups, "number of separation groups"),
        ("MAXPM", cfg.max_pm_masyr, "[mas/yr] total proper-motion limit"),
        ("DENSGAIA", result.density_gaia, "[arcmin-2] Gaia within RSTACK, unfiltered"),
        ("DENSWISE", result.density_wise or 0.0, "[arcmin-2] ALLWISE within RSTACK, unfiltered"),
        ("HAVEWISE", wise is not None, "ALLWISE inputs given?"),
        ("NMGAIA", result.n_match_gaia, "detections with >= 1 Gaia match"),
        ("NMWISE", result.n_match_wise, "detections with >= 1 ALLWISE match"),
    ]
    keys += [(f"NMGAIA{i}", n, f"detections with a Gaia match in group {i}")
             for i, n in enumerate(result.gaia_pairs.n_match_group, start=1)]
    keys += [(f"NMWISE{i}", n, f"detections with an ALLWISE match in group {i}")
             for i, n in enumerate(wise_pairs.n_match_group, start=1)]
    keys += [("METHOD", result.method, "direct, twostep or none"),
             ("METHREQ", cfg.method, "method parameter (auto: spec 5.5.2)")]
    keys += [(f.keyword, f.count, f.description[:47]) for f in result.filters]
    keys = tuple((k, header_value(v), c) for k, v, c in keys)
    tables = {"DETECTIONS": detections, "GAIA_PAIRS": gaia_cols, "WISE_PAIRS": wise_cols,
              "WISE_GAIA": wg_cols}
    units = {name: dict(table_units) for name, table_units in _UNITS.items()}   # (copies)
    return Pairs(
        stackid=stackid, instrument=instrument, ra_stack=float(cfg.ra_stack_deg),
        dec_stack=float(cfg.dec_stack_deg), method=result.method, n_groups=int(cfg.n_groups),
        match_radius=float(cfg.match_radius_arcsec), dens_gaia=float(result.density_gaia),
        dens_wise=None if result.density_wise is None else float(result.density_wise),
        keywords=keys, tables=tables, units=units, cards={name: () for name in TABLE_HDUS})


# ---------------------------------------------------------------------------------------------
# Writer


def _formats(name, columns):
    fixed = _FIXED_FORMATS.get(name, {})
    return {c: fixed.get(c) for c in columns}


#: Each table's fixed TFORMs (from LAYOUTS, made once: issue 11).
_FIXED_FORMATS = {name: {c: f for c, f, _ in layout if f} for name, layout in LAYOUTS.items()}


def pairs_specs(pairs: Pairs):
    """The matched-pairs file's HDUs (formats.md §1) as :class:`~._fits.HduSpec`.  Pure."""
    stack = [(k, v, c) for k, v, c in pairs.keywords if k in STACK_KEYWORDS]
    rest = [(k, v, c) for k, v, c in pairs.keywords if k not in STACK_KEYWORDS]
    # the stack keywords first in every HDU, then the primary's own
    specs = [HduSpec(None, keys=tuple([("CONTENT", CONTENT, "stk_match matched-pairs file"),
                                       ("HDUNAME", "PRIMARY", "")] + stack + rest),
                     drop_long_comments=False)]
    for name in TABLE_HDUS:
        cols = pairs.tables[name]
        specs.append(HduSpec(name, cols, units=pairs.units.get(name, {}),
                             formats=_formats(name, cols), keys=tuple(stack),
                             drop_long_comments=False,
                             column_info=column_info(cols, _COLUMN_INFO.get(name))))
    return specs


def build_pairs_hdul(pairs: Pairs):
    """The matched-pairs file as an astropy HDUList (formats.md §1).  No I/O."""
    return to_hdulist(pairs_specs(pairs))


def write_pairs(pairs: Pairs, path, history, *, clobber=False):
    """Write ``pairs`` to ``path`` atomically, stamped with ``history`` (a tool's parameters)."""
    write_fits_fast(path, pairs_specs(pairs), history, clobber=clobber)


# ---------------------------------------------------------------------------------------------
# Reader


def _check_columns(columns, label, wanted):
    missing = [c for c in wanted if c not in columns]
    if missing:
        raise FormatError(f"{label}: required column(s) {', '.join(missing)} missing; "
                          f"is this a stk_match matched-pairs file (formats.md §1)?")


def _header_float(header, name, label, *, required):
    from stk_astrometry.fitsutil import get_keyword

    value = get_keyword(header, name)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise FormatError(f"{label}: keyword {name} missing")
        return None
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise FormatError(f"{label}: keyword {name} = {value!r} is not a number") from exc
    if not np.isfinite(number):
        if required:
            raise FormatError(f"{label}: keyword {name} = {value!r} is not finite")
        return None
    return number


def read_pairs(spec, *, param="infile") -> Pairs:
    """Read and check a stk_match matched-pairs file.

    Parameters
    ----------
    spec : str or Path
        The file (no ``[block]``: all its HDUs are read).
    param : str
        The parameter that named it, for messages.

    Returns
    -------
    Pairs

    Raises
    ------
    InputError
        Missing or unreadable file.
    FormatError
        Not a stk_match output: naming the missing HDU, column or keyword.
    """
    from stk_astrometry.formats._fits import read_fits
    from stk_astrometry.tableio import parse_virtual_filename

    path_text, block = parse_virtual_filename(str(spec))
    if block is not None:
        raise ParameterError(f"{param}={spec}: give the matched-pairs file without a block; "
                             f"stk_xfm reads all its HDUs")
    path = Path(path_text)
    if not path.exists():
        raise InputError(f"{param}={spec}: file {path} does not exist")
    if path.is_dir():
        raise InputError(f"{param}={spec}: {path} is a directory")
    try:
        hdus = read_fits(path)
    except (OSError, ValueError, RuntimeError) as exc:
        raise InputError(f"{param}={spec}: cannot read {path} as FITS: {exc}") from exc
    primary = hdus[0][1]
    content = str(primary.get("CONTENT", "")).strip()
    if content != CONTENT:
        raise FormatError(
            f"{param}={spec}: not a stk_match matched-pairs file: primary CONTENT = "
            f"{content or '(missing)'!r}, expected 'STKPAIRS' (formats.md §1)")
    names = {}
    for extname, header, columns, units in hdus[1:]:
        names.setdefault(extname.upper(), (header, columns, units))
    missing = [n for n in TABLE_HDUS if n not in names or names[n][1] is None]
    if missing:
        raise FormatError(f"{param}={spec}: HDU(s) {', '.join(missing)} missing "
                          f"(a stk_match file has DETECTIONS, GAIA_PAIRS, WISE_PAIRS, "
                          f"WISE_GAIA)")
    label = f"{path}[PRIMARY]"
    method = str(primary.get("METHOD", "")).strip().lower()
    if method not in ("direct", "twostep", "none"):
        raise FormatError(f"{label}: keyword METHOD = {primary.get('METHOD')!r}, expected "
                          f"'direct', 'twostep' or 'none'")
    instrument = str(primary.get("INSTRUME", "")).strip().upper()
    if instrument not in INSTRUMENT_GRIDS:
        raise FormatError(f"{label}: keyword INSTRUME = {primary.get('INSTRUME')!r}, "
                          f"expected 'ACIS' or 'HRC'")
    ra_stack = _header_float(primary, "RA_STACK", label, required=True)
    dec_stack = _header_float(primary, "DEC_STACK", label, required=True)
    n_groups = _header_float(primary, "NGROUPS", label, required=True)
    if n_groups < 1 or n_groups != int(n_groups):
        raise FormatError(f"{label}: keyword NGROUPS = {n_groups!r} is not a positive integer")
    required = {"DETECTIONS": DETECTION_COLUMNS, "GAIA_PAIRS": PAIR_COLUMNS,
                "WISE_PAIRS": PAIR_COLUMNS, "WISE_GAIA": WISE_GAIA_COLUMNS}
    tables, units, cards = {}, {}, {}
    for name in TABLE_HDUS:
        header, columns, col_units = names[name]
        _check_columns(columns, f"{path}[{name}]", required[name])
        tables[name], units[name] = columns, col_units
        cards[name] = extra_cards(header)
    keywords = header_keywords(primary, skip=_NOT_CARRIED)
    return Pairs(
        stackid=str(keyword_value(keywords, "STACKID", "")).strip(),
        instrument=instrument, ra_stack=ra_stack, dec_stack=dec_stack, method=method,
        n_groups=int(n_groups),
        match_radius=_header_float(primary, "MATCHRAD", label, required=False),
        dens_gaia=_header_float(primary, "DENSGAIA", label, required=False),
        dens_wise=_header_float(primary, "DENSWISE", label, required=False),
        keywords=keywords, tables=tables, units=units, cards=cards, path=str(path))
