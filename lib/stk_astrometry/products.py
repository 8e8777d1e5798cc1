"""The data products of specification §5.6, as one declarative table, and their recognition.

Owns :data:`PRODUCT_TABLE` (a row per product type: how it is recognised,
which world coordinate systems, header keywords and table columns it carries
that a new astrometric solution changes, and what else to do with it) and
:func:`recognise`, a pure function of a file name and the HDUs' headers.
Adding a product type is adding a row.  No file I/O here.

Recognition weighs three independent signals, because none is reliable alone
(CSC CONTENT values are mostly inferred, see ciao-conventions §4.2, and an
image binned from an event list may carry the event list's CONTENT):

* the CSC file-name pattern (``_evt3.fits``, ``_r0012b_regimg3.fits`` ...), 2 points;
* ``CONTENT`` of an HDU whose *shape* fits the product (an image product needs
  an image HDU; a table product a table or an empty primary), 4 points; a
  CONTENT naming the event product an image was binned from, on an image
  HDU, 1 point;
* HDU names characteristic of the product (``ECF90REGB``, ``SRCLIST`` ...), 3 points.

The highest score wins; a tie between different types is reported as ambiguous.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "GENERIC",
    "PRODUCTS",
    "PRODUCT_TABLE",
    "SCRUB_KEYWORDS",
    "ColumnPair",
    "HduInfo",
    "ProductType",
    "Recognition",
    "hdu_info",
    "instrument_grid",
    "recognise",
]


@dataclass(frozen=True)
class ColumnPair:
    """An RA/Dec column pair of one HDU.

    Attributes
    ----------
    hdu : str
        Regular expression matched (whole, case-insensitive) against EXTNAME/HDUNAME.
    ra : str
        Regular expression matched (whole, case-insensitive) against column names.
    dec : str
        Replacement template giving the Dec column's name from the RA match
        (``re.Match.expand``), e.g. ``src_dec\\g<band>``.
    quat : str
        Name of an attitude quaternion column that turns with the pair (ASPSOL3
        ``q_att``), '' for none.
    """

    hdu: str
    ra: str
    dec: str
    quat: str = ""


@dataclass(frozen=True)
class ProductType:
    """One row of the §5.6 product table.

    Attributes
    ----------
    name : str
        The §5.6 name, e.g. ``EVT3``, ``ECF90REG`` (the band is a property of the file).
    level : str
        ``observation``, ``observation source``, ``stack``, ``stack source`` or ``master``.
    action : str
        ``update`` (apply the transform), ``inherit`` (a JPG derived from ``parent``:
        recognised and reported, never modified) or ``nothing`` (recognised, needs no change).
    filename : str
        Regular expression searched in the file's base name (case-insensitive).
    content : tuple of str
        CONTENT values of an HDU of the right shape.
    shape : str
        ``image``, ``table`` or ``jpeg``: the shape of the principal HDU.
    binned_from : tuple of str
        CONTENT values of event products an image of this type may carry (weak signal).
    hdu_names : tuple of str
        Regular expressions of HDU names characteristic of the type (any one matching counts).
    wcs : tuple of str
        World coordinate systems §5.6 says the product carries (``EQPOS``, ``EQSRC``).
        Every celestial descriptor found is updated; one listed here and not
        found is reported.
    columns : tuple of ColumnPair
        RA/Dec table columns whose every row is moved.
    populate_eqsrc : str
        Regular expression of HDU names whose EQSRC must be (re)built from the
        pointing and the instrument's sky grid when missing or wrong (spec-notes 18).
    append_stkxfm : bool
        Insert the transform as an ``STKXFM`` HDU after the ``XFM`` HDU (spec-notes 17).
    scrub : bool
        Master product whose observation-specific pointing keywords a header
        scrub removes (spec-notes 20).
    parent : str
        For ``inherit``: the product the JPG is made from.
    note : str
        Free text for the report and the help page.
    """

    name: str
    level: str
    action: str
    filename: str
    content: tuple[str, ...] = ()
    shape: str = "table"
    binned_from: tuple[str, ...] = ()
    hdu_names: tuple[str, ...] = ()
    wcs: tuple[str, ...] = ()
    columns: tuple[ColumnPair, ...] = ()
    populate_eqsrc: str = ""
    append_stkxfm: bool = False
    scrub: bool = False
    parent: str = ""
    note: str = ""


# File-name stems (ciao-conventions §4.1).  <i><s><obs>_<obi>N<v>[_<c>], stack
# <i><s>J<hhmmsss>{p|m}<ddmmss>_<stkver>N<v>, master 2CXOJ<hhmmss[s]>{p|m}<ddmmss>N<v>.
_OBS = r"^(?:acis|hrc)f\d{5}_\d{3}n\d{3}(?:_e\d)?"
_STK = r"^(?:acis|hrc)fj\d{6,7}[pm]\d{6}_\d{3}n\d{3}"
_MST = r"^2cxoj\d{6,7}[pm]\d{6}n\d{3}"
_REG = r"_r\d{4}"
#: Any CSC file name (an observation, stack or master stem): a signal of its own.
_CSC_STEM = re.compile(f"{_OBS}|{_STK}|{_MST}", re.IGNORECASE)
_B = r"(?P<band>[a-z]?)"          # band letter after a region id (r0012b)
_FB = r"_(?P<band>[a-z])"         # band of a full-field product (_b_img3)
_FITS = r"\.fits(?:\.gz)?$"

_SRCFIT = "SRCFIT"
_MRGSRC_COLUMNS = (
    ColumnPair("SRCLIST", r"ra", "dec"),
    ColumnPair(_SRCFIT, r"detect_ra", "detect_dec"),
    ColumnPair(_SRCFIT, r"src_ra(?P<band>[a-z]?)", r"src_dec\g<band>"),
    ColumnPair(_SRCFIT, r"ext_ra(?P<band>[a-z]?)", r"ext_dec\g<band>"),
    ColumnPair("WAVSRC", r"ra", "dec"),
    ColumnPair("WAVSRC", r"wav(?P<n>\d+)(?P<band>[a-z]*)_ra", r"wav\g<n>\g<band>_dec"),
    ColumnPair("MPNTSRC", r"ra", "dec"),
    ColumnPair("MEXTSRC", r"center_ra", "center_dec"),
    ColumnPair("NO_DETECT", r"ra", "dec"),
)


def _upd(name, level, filename, content, shape, **kw):
    return ProductType(name, level, "update", filename, tuple(content), shape, **kw)


def _jpg(name, level, filename, parent):
    return ProductType(name, level, "inherit", filename, shape="jpeg", parent=parent,
                       note=f"JPG made from {parent}: a translation moves no pixel; "
                            "nothing to rewrite (spec-notes 19)")


def _nothing(name, level, filename, content, note):
    return ProductType(name, level, "nothing", filename, tuple(content), "table", note=note)


_OBSL, _OSRC, _STKL, _SSRC, _MSTL = (
    "observation", "observation source", "stack", "stack source", "master")

#: The §5.6 list, a row per product type.
PRODUCT_TABLE: tuple[ProductType, ...] = (
    # ---- per-ObsId products
    _upd("EVT3", _OBSL, _OBS + r"_evt3" + _FITS, ["EVT3"], "table",
         hdu_names=("EVENTS",), wcs=("EQPOS",)),
    _upd("ECORRIMG", _OBSL, _OBS + _FB + r"_img3" + _FITS, ["ECORRIMG"], "image",
         binned_from=("EVT3",), wcs=("EQPOS",)),
    _jpg("ECORRIMG_JPG", _OBSL, _OBS + _FB + r"_img3\.jpe?g$", "ECORRIMG"),
    _upd("BKGIMG", _OBSL, _OBS + _FB + r"_bkgimg3" + _FITS, ["BKGIMG"], "image",
         wcs=("EQPOS",)),
    _upd("EXPMAP", _OBSL, _OBS + _FB + r"_exp3" + _FITS, ["EXPMAP"], "image", wcs=("EQPOS",)),
    _upd("ASPSOL3", _OBSL, _OBS + r"_asol3" + _FITS, ["ASPSOL3", "ASPSOL"], "table",
         hdu_names=("ASPSOL",), columns=(ColumnPair("ASPSOL", "ra", "dec", quat="q_att"),),
         append_stkxfm=True,
         note="q_att rotated with ra/dec (roll kept); STKXFM HDU inserted after XFM"),
    _upd("BADPIX3", _OBSL, _OBS + r"_bpix3" + _FITS, ["BADPIX3", "BADPIX"], "table",
         hdu_names=("BADPIX.*",)),
    _upd("FOV3", _OBSL, _OBS + r"_fov3" + _FITS, ["FOV3", "FOV"], "table", wcs=("EQPOS",)),
    _upd("PIXMASK", _OBSL, _OBS + r"_pixmask3" + _FITS, ["PIXMASK"], "image", wcs=("EQPOS",)),
    _upd("POLY3", _OBSL, _OBS + r"(?:" + _FB + r")?_poly3" + _FITS, ["POLY3"], "table"),
    _upd("SEXPMAP", _OBSL, _OBS + r"(?:" + _FB + r")?_sexp3" + _FITS, ["SEXPMAP"], "image",
         wcs=("EQPOS",), note="file-name pattern _sexp3 is a guess"),
    # ---- per-ObsId source region products
    _upd("REGEVT3", _OSRC, _OBS + _REG + r"_regevt3" + _FITS, ["REGEVT3"], "table",
         hdu_names=("EVENTS",), wcs=("EQPOS",)),
    _upd("REGIMG", _OSRC, _OBS + _REG + _B + r"_regimg3" + _FITS, ["REGIMG"], "image",
         binned_from=("REGEVT3",), wcs=("EQPOS",)),
    _jpg("REGIMG_JPG", _OSRC, _OBS + _REG + _B + r"_regimg3\.jpe?g$", "REGIMG"),
    _upd("PSF", _OSRC, _OBS + _REG + _B + r"_(?:bin)?psf3" + _FITS, ["PSF", "BINPSF"], "image",
         wcs=("EQPOS",), note="PSF and BINPSF"),
    _jpg("PSF_JPG", _OSRC, _OBS + _REG + _B + r"_(?:bin)?psf3\.jpe?g$", "PSF"),
    _upd("REGEXPMAP", _OSRC, _OBS + _REG + _B + r"_regexp3" + _FITS, ["REGEXPMAP"], "image",
         wcs=("EQPOS",)),
    _upd("SPECTRUM", _OSRC, _OBS + _REG + r"_pha3" + _FITS, ["SPECTRUM"], "table",
         hdu_names=("SPECTRUM",), wcs=("EQPOS",)),
    _upd("ARF", _OSRC, _OBS + _REG + r"_arf3" + _FITS, ["ARF"], "table",
         hdu_names=("SPECRESP",)),
    _nothing("RMF", _OSRC, _OBS + _REG + r"_rmf3" + _FITS, ["RMF"],
             "response matrix: no sky coordinates"),
    _upd("LIGHTCURVE", _OSRC, _OBS + _REG + _B + r"_lc3" + _FITS, ["LIGHTCURVE"], "table"),
    _upd("ECF90REG", _OSRC, _OBS + _REG + r"_reg3" + _FITS, ["ECF90REG"], "table",
         hdu_names=(r"ECF90REG[A-Z]",), wcs=("EQSRC",), populate_eqsrc=r"ECF90REG[A-Z]",
         note="ECF90REG<BAND>: EQSRC populated when missing or wrong (spec-notes 18)"),
    _upd("DRAWS", _OSRC, _OBS + _REG + _B + r"_draws3" + _FITS, ["DRAWS"], "table",
         hdu_names=("SRCDRAWS",), columns=(ColumnPair("SRCDRAWS", "ra", "dec"),)),
    _nothing("APERPHOT", _OSRC, _OBS + _REG + _B + r"_phot3" + _FITS, ["APERPHOT"],
             "headers carry no coordinate information (§5.6)"),
    # ---- stack products
    _upd("STKEVT3", _STKL, _STK + r"_evt3" + _FITS, ["STKEVT3"], "table",
         hdu_names=("EVENTS",), wcs=("EQPOS",)),
    _upd("STKECORRIMG", _STKL, _STK + _FB + r"_img3" + _FITS, ["STKECORRIMG"], "image",
         binned_from=("STKEVT3",), wcs=("EQPOS",)),
    _jpg("STKECORRIMG_JPG", _STKL, _STK + _FB + r"_img3\.jpe?g$", "STKECORRIMG"),
    _upd("STKBKGIMG", _STKL, _STK + _FB + r"_bkgimg3" + _FITS, ["STKBKGIMG"], "image",
         wcs=("EQPOS",)),
    _upd("STKEXPMAP", _STKL, _STK + _FB + r"_exp3" + _FITS, ["STKEXPMAP"], "image",
         wcs=("EQPOS",)),
    _upd("STKFOV3", _STKL, _STK + r"_fov3" + _FITS, ["STKFOV3"], "table", wcs=("EQPOS",)),
    _upd("SENSITY", _STKL, _STK + _FB + r"_sens3" + _FITS, ["SENSITY"], "image",
         wcs=("EQPOS",)),
    _upd("MRGSRC", _STKL, _STK + r"_mrgsrc3" + _FITS, ["MRGSRC"], "table",
         hdu_names=("SRCLIST", "SRCFIT", "WAVSRC", "MPNTSRC", "MEXTSRC", "NO_DETECT"),
         wcs=("EQSRC",), columns=_MRGSRC_COLUMNS),
    _upd("THETAMEAN", _STKL, _STK + r"(?:" + _FB + r")?_theta(?:mean)?3" + _FITS,
         ["THETAMEAN"], "image", wcs=("EQPOS",), note="file-name pattern is a guess"),
    # ---- stack source region products
    _upd("STKREGEVT", _SSRC, _STK + _REG + r"_regevt3" + _FITS, ["STKREGEVT3", "STKREGEVT"],
         "table", hdu_names=("EVENTS",), wcs=("EQPOS",)),
    _upd("STKREGIMG", _SSRC, _STK + _REG + _B + r"_regimg3" + _FITS, ["STKREGIMG"], "image",
         binned_from=("STKREGEVT3", "STKREGEVT"), wcs=("EQPOS",)),
    _jpg("STKREGIMG_JPG", _SSRC, _STK + _REG + _B + r"_regimg\.jpe?g$", "STKREGIMG"),
    _jpg("STKREGIMG3_JPG", _SSRC, _STK + _REG + _B + r"_regimg3\.jpe?g$", "STKREGIMG"),
    _upd("STKREGEVP", _SSRC, _STK + _REG + r"_regevp3" + _FITS, ["STKREGEVP"], "table",
         wcs=("EQPOS",), note="file-name pattern _regevp3 is a guess"),
    _upd("SRCREG/BKGREG", _SSRC, _STK + _REG + r"_reg3" + _FITS, ["STKSRCREG", "SRCREG"],
         "table", hdu_names=("SRCREG", "BKGREG"), wcs=("EQSRC",),
         populate_eqsrc=r"SRCREG|BKGREG",
         note="EQSRC populated when missing or wrong (spec-notes 18)"),
    _upd("STKDRWS", _SSRC, _STK + _REG + _B + r"_draws3" + _FITS, ["STKDRAWS", "STKDRWS"],
         "table", hdu_names=("SRCDRWS", "SRCDRAWS"),
         columns=(ColumnPair("SRCDRA?WS", "ra", "dec"),)),
    _nothing("STKAPERPHOT", _SSRC, _STK + _REG + _B + r"_phot3" + _FITS, ["STKAPERPHOT"],
             "headers carry no coordinate information (§5.6)"),
    # ---- master source products
    _upd("BAYESBLKS", _MSTL, _MST + r"_blocks3" + _FITS, ["BAYESBLKS"], "table", scrub=True),
    _upd("SRCAPERPHOT", _MSTL, _MST + r"(?:" + _FB + r")?_phot3" + _FITS, ["SRCAPERPHOT"],
         "table", scrub=True),
    _upd("SRCPOLY3", _MSTL, _MST + r"_poly3" + _FITS, ["SRCPOLY3"], "table",
         wcs=("EQPOS",), scrub=True),
)

#: Name -> row.
PRODUCTS = {p.name: p for p in PRODUCT_TABLE}

#: The rules for a file of no known type with ``unknown=generic``.
GENERIC = ProductType(
    "GENERIC", "unknown", "update", "", (), "table",
    columns=(ColumnPair(".*", r"(?P<p>(?:\w*_)?)ra(?P<s>(?:_\w*)?)", r"\g<p>dec\g<s>"),),
    note="generic rules: every celestial WCS, RA/Dec keyword pair and RA/Dec column pair")

#: Observation-specific pointing keywords a header scrub of a master product removes
#: (spec-notes 20).
SCRUB_KEYWORDS = ("OBS_ID", "OBI_NUM", "SEQ_NUM", "RA_NOM", "DEC_NOM", "ROLL_NOM",
                  "RA_PNT", "DEC_PNT", "ROLL_PNT", "RA_TARG", "DEC_TARG")

#: Chandra sky pixel grids: (pixel size in deg, reference pixel).
_GRIDS = {
    "ACIS": (0.492 / 3600.0, 4096.5),
    "HRC": (0.13175 / 3600.0, 16384.5),
}


def instrument_grid(instrument: str) -> tuple[float, float]:
    """Sky pixel size (deg) and reference pixel of ``ACIS`` or ``HRC`` (ACIS-I/S, HRC-I/S too).

    Raises
    ------
    KeyError
        An instrument that is neither.
    """
    key = str(instrument).strip().upper()
    for name, grid in _GRIDS.items():
        if key.startswith(name):
            return grid
    raise KeyError(instrument)


@dataclass(frozen=True)
class HduInfo:
    """What recognition needs to know about one HDU.

    Attributes
    ----------
    name : str
        EXTNAME (or HDUNAME), upper case; ``PRIMARY`` for the primary HDU.
    content : str
        CONTENT value, upper case, '' if absent.
    kind : str
        ``image`` (an array with axes), ``table`` or ``empty``.
    """

    name: str
    content: str
    kind: str


def hdu_info(header, *, index: int) -> HduInfo:
    """Summarise a header for :func:`recognise`."""
    xt = str(header.get("XTENSION", "PRIMARY")).strip().upper()
    naxis = int(header.get("NAXIS", 0))
    if xt in ("BINTABLE", "TABLE", "A3DTABLE"):
        kind = "table"
    elif naxis > 0 and any(int(header.get(f"NAXIS{i}", 0)) > 0 for i in range(1, naxis + 1)):
        kind = "image"
    else:
        kind = "empty"
    name = str(header.get("EXTNAME", header.get("HDUNAME", "PRIMARY" if index == 0 else "")))
    return HduInfo(name.strip().upper(), str(header.get("CONTENT", "")).strip().upper(), kind)


@dataclass(frozen=True)
class Recognition:
    """The outcome of :func:`recognise`.

    Attributes
    ----------
    product : ProductType or None
        The recognised type, None when unknown, ambiguous or recognised by one
        weak signal only.
    band : str
        Band letter from the file name or HDU names ('' if none).
    reason : str
        The signals that decided (or why nothing was decided), for the report.
    weak : bool
        True when the best match rests on a single signal and no CSC file name
        (e.g. an HDU named SRCLIST): reported, and left unless the user names
        the type.
    """

    product: ProductType | None
    band: str
    reason: str
    weak: bool = False


_SHAPE_OK = {"image": ("image",), "table": ("table", "empty"), "jpeg": ()}


def _score(ptype: ProductType, filename: str, hdus, *, is_jpeg: bool):
    if (ptype.shape == "jpeg") != is_jpeg:
        return 0, "", []
    score = 0
    band = ""
    why = []
    m = re.search(ptype.filename, filename, flags=re.IGNORECASE)
    if m:
        score += 2
        band = (m.groupdict().get("band") or "").lower()
        why.append("file name")
    if is_jpeg:
        return score, band, why
    content = set(ptype.content)
    binned = set(ptype.binned_from)
    c_hit = any(h.content in content and h.kind in _SHAPE_OK[ptype.shape] for h in hdus)
    if c_hit:
        score += 4
        why.append("CONTENT")
    elif binned and any(h.content in binned and h.kind == "image" for h in hdus):
        score += 1
        why.append("CONTENT of the events it was binned from")
    for pattern in ptype.hdu_names:
        hit = next((h for h in hdus if re.fullmatch(pattern, h.name, flags=re.IGNORECASE)),
                   None)
        if hit is not None:
            score += 3
            why.append(f"HDU {hit.name}")
            break
    # an image product without an image (a table product without a table) is not that product
    if score and not any(h.kind == ("image" if ptype.shape == "image" else "table")
                         for h in hdus):
        return 0, "", []
    return score, band, why


def recognise(filename: str, hdus, *, is_jpeg: bool = False, forced: str = "") -> Recognition:
    """Recognise the §5.6 product type of a file.

    A type is decided by a CSC file name (the type's own pattern, or any CSC
    observation/stack/master stem with one more signal), or by at least two
    independent signals (CONTENT, a characteristic HDU name, the CONTENT of the
    events an image was binned from).  A best match on one signal alone is *weak*: a
    catalog with an HDU named SRCLIST is not a MRGSRC product.

    Parameters
    ----------
    filename : str
        The file's base name.
    hdus : sequence of HduInfo
        Every HDU of a FITS file (empty for a JPEG).
    is_jpeg : bool, optional
        The file is a JPEG image (by its magic bytes).
    forced : str, optional
        A type named by the user (a :data:`PRODUCTS` key): taken whatever the signals.

    Returns
    -------
    Recognition
    """
    if forced:
        ptype = PRODUCTS[forced]
        m = re.search(ptype.filename, filename, flags=re.IGNORECASE)
        band = (m.groupdict().get("band") or "").lower() if m else ""
        return Recognition(ptype, band, "type named by the user (product=)")
    scored = []
    for ptype in PRODUCT_TABLE:
        score, band, why = _score(ptype, filename, hdus, is_jpeg=is_jpeg)
        if score:
            scored.append((score, ptype, band, why))
    if not scored:
        contents = sorted({h.content for h in hdus if h.content})
        what = f"CONTENT {','.join(contents)}" if contents else "no CONTENT"
        return Recognition(None, "", f"no product type matches (file name, {what})")
    scored.sort(key=lambda s: -s[0])
    best = scored[0]
    ties = [s for s in scored if s[0] == best[0] and s[1] is not best[1]]
    if ties:
        names = ", ".join(s[1].name for s in [best, *ties])
        return Recognition(None, "", f"ambiguous: {names} match equally ({best[0]} points)")
    if "file name" not in best[3] and len(best[3]) < 2 and not _CSC_STEM.match(filename):
        return Recognition(None, "", f"looks like {best[1].name} by {best[3][0]} alone",
                           weak=True)
    return Recognition(best[1], best[2], " + ".join(best[3]))
