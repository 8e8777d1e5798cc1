"""Synthetic CXC-like data products of every §5.6 type, for tests, simulations and benchmarks.

Owns the look of the products ``stk_update_wcs`` rewrites, as far as it
matters to it: HDU layout and names, CONTENT, the EQPOS/EQSRC world
coordinate systems the CXC data model writes (MTYPEn/MFORMn, CTYPEnP
physical WCS with LTV/LTM, TCTYPn/TCRVLn on event x,y, XLON-TAN/XLAT-TAN on
region tables), pointing keywords (RA_NOM ... RA_TARG, RA_STACK with
DEC_STACK as a DTYPEn/DVALn pair) and the RA/Dec columns named in §5.6.
Layouts follow ciao-conventions.md §4-§5; where a real layout is unknown the
builder says so in its docstring.  Data are random but seeded.

Public API::

    PRODUCT_KINDS                       # every §5.6 product type name
    product_filename(kind, ...)         # its CSC file name
    write_product(kind, path, *, ra_nom, dec_nom, ...)  # one file
    write_product_tree(folder, *, ra_nom, dec_nom, ...) # every kind, CSC-like nested tree
    write_stkxfm(path, *, d_xi_arcsec, d_eta_arcsec, ra_ref_deg, dec_ref_deg)  # a transform

``write_product("EVT3", path, nrows=N)`` streams rows in chunks, so a 1 GB
event file costs bounded memory (about 25 s per GB on one core).

``traps=True`` adds what must *not* be moved: RA_ERR/DEC_ERR keywords (arcsec),
a sentinel pair RA_OBJ/DEC_OBJ = -999, an RA_SRC/DEC_SRC pair of 'INDEF'
strings, a detector WCS (``CTYPEnD = 'DETX'``, ``'FPX--TAN'`` axes), and an
alternate celestial WCS 'A' on images.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from astropy.io import fits

from stk_astrometry.fitsedit import BLOCK, checksummed_header_bytes, ones_complement_sum
from stk_astrometry.fitsutil import history_records, set_keyword
from stk_astrometry.products import PRODUCT_TABLE, instrument_grid
from stk_astrometry.wcsupdate import attitude_quaternion

__all__ = [
    "COUNTS_IMAGE_KINDS",
    "PRODUCT_KINDS",
    "minimal_jpeg",
    "product_filename",
    "write_product",
    "write_product_tree",
    "write_stkxfm",
]

#: Every §5.6 product type (the names of :data:`stk_astrometry.products.PRODUCT_TABLE`).
PRODUCT_KINDS = tuple(p.name for p in PRODUCT_TABLE)

#: The counts images into which ``write_product(..., sources=)`` renders point sources.
COUNTS_IMAGE_KINDS = ("ECORRIMG", "STKECORRIMG")

_OBS_STEM = "{i}f{obsid:05d}_000N001"
_STK_STEM = "{i}fJ1348473p263535_002N029"
_MST_STEM = "2CXOJ134847.3p263535N001".replace(".", "")

_NAMES = {
    "EVT3": "{obs}_evt3.fits", "ECORRIMG": "{obs}_{b}_img3.fits",
    "ECORRIMG_JPG": "{obs}_{b}_img3.jpg", "BKGIMG": "{obs}_{b}_bkgimg3.fits",
    "EXPMAP": "{obs}_{b}_exp3.fits", "ASPSOL3": "{obs}_asol3.fits",
    "BADPIX3": "{obs}_bpix3.fits", "FOV3": "{obs}_fov3.fits",
    "PIXMASK": "{obs}_pixmask3.fits", "POLY3": "{obs}_{b}_poly3.fits",
    "SEXPMAP": "{obs}_{b}_sexp3.fits",
    "REGEVT3": "{obs}_{r}_regevt3.fits", "REGIMG": "{obs}_{r}{b}_regimg3.fits",
    "REGIMG_JPG": "{obs}_{r}{b}_regimg3.jpg", "PSF": "{obs}_{r}{b}_psf3.fits",
    "PSF_JPG": "{obs}_{r}{b}_psf3.jpg", "REGEXPMAP": "{obs}_{r}{b}_regexp3.fits",
    "SPECTRUM": "{obs}_{r}_pha3.fits", "ARF": "{obs}_{r}_arf3.fits",
    "RMF": "{obs}_{r}_rmf3.fits", "LIGHTCURVE": "{obs}_{r}{b}_lc3.fits",
    "ECF90REG": "{obs}_{r}_reg3.fits", "DRAWS": "{obs}_{r}{b}_draws3.fits",
    "APERPHOT": "{obs}_{r}{b}_phot3.fits",
    "STKEVT3": "{stk}_evt3.fits", "STKECORRIMG": "{stk}_{b}_img3.fits",
    "STKECORRIMG_JPG": "{stk}_{b}_img3.jpg", "STKBKGIMG": "{stk}_{b}_bkgimg3.fits",
    "STKEXPMAP": "{stk}_{b}_exp3.fits", "STKFOV3": "{stk}_fov3.fits",
    "SENSITY": "{stk}_{b}_sens3.fits", "MRGSRC": "{stk}_mrgsrc3.fits",
    "THETAMEAN": "{stk}_theta3.fits",
    "STKREGEVT": "{stk}_{r}_regevt3.fits", "STKREGIMG": "{stk}_{r}{b}_regimg3.fits",
    "STKREGIMG_JPG": "{stk}_{r}{b}_regimg.jpg", "STKREGIMG3_JPG": "{stk}_{r}{b}_regimg3.jpg",
    "STKREGEVP": "{stk}_{r}_regevp3.fits", "SRCREG/BKGREG": "{stk}_{r}_reg3.fits",
    "STKDRWS": "{stk}_{r}{b}_draws3.fits", "STKAPERPHOT": "{stk}_{r}{b}_phot3.fits",
    "BAYESBLKS": "{mst}_blocks3.fits", "SRCAPERPHOT": "{mst}_{b}_phot3.fits",
    "SRCPOLY3": "{mst}_poly3.fits",
}

_CONTENT = {"ECF90REG": "SRCREG", "SRCREG/BKGREG": "STKSRCREG", "STKREGEVT": "STKREGEVT3",
            "STKDRWS": "STKDRAWS", "PSF": "PSF"}


def product_filename(kind: str, *, instrument: str = "ACIS", band: str = "b",
                     obsid: int = 14031, region: int = 12) -> str:
    """CSC-style file name of a product of type ``kind``."""
    i = "hrc" if instrument.upper().startswith("HRC") else "acis"
    if instrument.upper().startswith("HRC") and band == "b":
        band = "w"
    return _NAMES[kind].format(obs=_OBS_STEM.format(i=i, obsid=obsid), stk=_STK_STEM.format(i=i),
                               mst=_MST_STEM, b=band, r=f"r{region:04d}")


def minimal_jpeg() -> bytes:
    """Bytes starting like a JFIF JPEG (SOI, APP0) and ending with EOI; never decoded here."""
    app0 = b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    return b"\xff\xd8\xff\xe0" + (len(app0) + 2).to_bytes(2, "big") + app0 + b"\xff\xd9"


# --------------------------------------------------------------------------- headers

def _pointing(header, *, ra_nom, dec_nom, roll=45.0, level, instrument, content, hduname,
              traps=False, obsid=14031, stack=True):
    header["TELESCOP"] = ("CHANDRA", "Telescope used")
    header["INSTRUME"] = (instrument, "Instrument used")
    header["CONTENT"] = (content, "What data product")
    header["HDUNAME"] = (hduname, "ASCDM block name")
    header["ORIGIN"] = ("ASC", "Source of FITS file")
    if level != "nocoord":
        header["OBS_ID"] = (str(obsid), "Observation ID")
        header["RA_NOM"] = (ra_nom, "[deg] Nominal RA")
        header["DEC_NOM"] = (dec_nom, "[deg] Nominal Dec")
        header["ROLL_NOM"] = (roll, "[deg] Nominal roll")
        header["RA_PNT"] = (ra_nom + 0.001, "[deg] Pointing RA")
        header["DEC_PNT"] = (dec_nom - 0.001, "[deg] Pointing Dec")
        header["ROLL_PNT"] = (roll + 0.01, "[deg] Pointing roll")
        header["RA_TARG"] = (ra_nom + 0.002, "[deg] Observer's specified target RA")
        header["DEC_TARG"] = (dec_nom + 0.002, "[deg] Observer's specified target Dec")
        if stack:
            header["RA_STACK"] = (ra_nom, "[deg] stack tangent point RA")
            set_keyword(header, "DEC_STACK", dec_nom, "[deg] stack tangent point Dec")
    if traps:
        header["RA_ERR"] = (0.35, "[arcsec] RA uncertainty")
        header["DEC_ERR"] = (0.30, "[arcsec] Dec uncertainty")
        header["RA_OBJ"] = (-999.0, "[deg] object RA (sentinel)")
        header["DEC_OBJ"] = (-999.0, "[deg] object Dec (sentinel)")
        header["RA_SRC"] = ("INDEF", "source RA")
        header["DEC_SRC"] = ("INDEF", "source Dec")
        set_keyword(header, "RA_SIGMA_SYS", 0.2, "[arcsec] systematic error")
    # a fixed, earlier tool's HISTORY in CIAO's layout, as real products carry
    header["HISTNUM"] = (2, "Number of HISTORY records")
    for record in history_records("synthprod", [("infile", "none")], when="2026-01-01T00:00:00"):
        header.add_history(record)


def _image_wcs(header, *, ra_nom, dec_nom, pixel_deg, crpix_sky, shape, block=1.0,
               x0=None, y0=None, traps=False):
    """EQPOS image WCS + physical 'P' sky WCS with LTV/LTM (ciao-conventions §5.2)."""
    ny, nx = shape
    x0 = crpix_sky - block * nx / 2 if x0 is None else x0
    y0 = crpix_sky - block * ny / 2 if y0 is None else y0
    header["MTYPE1"] = ("sky", "DM Keyword: Descriptor name.")
    header["MFORM1"] = ("x,y", "[pixel]")
    header["CTYPE1P"] = ("x", "sky coordinates")
    header["CTYPE2P"] = ("y", "sky coordinates")
    header["CRVAL1P"] = x0
    header["CRVAL2P"] = y0
    header["CRPIX1P"] = 0.5
    header["CRPIX2P"] = 0.5
    header["CDELT1P"] = block
    header["CDELT2P"] = block
    header["WCSNAMEP"] = "PHYSICAL"
    header["LTV1"] = 0.5 - x0 / block
    header["LTV2"] = 0.5 - y0 / block
    header["LTM1_1"] = 1.0 / block
    header["LTM2_2"] = 1.0 / block
    header["MTYPE2"] = ("EQPOS", "DM Keyword: Descriptor name.")
    header["MFORM2"] = ("RA,DEC", "[deg]")
    header["CTYPE1"] = "RA---TAN"
    header["CTYPE2"] = "DEC--TAN"
    header["CRVAL1"] = ra_nom
    header["CRVAL2"] = dec_nom
    header["CRPIX1"] = (crpix_sky - x0) / block + 0.5
    header["CRPIX2"] = (crpix_sky - y0) / block + 0.5
    header["CDELT1"] = -pixel_deg * block
    header["CDELT2"] = pixel_deg * block
    header["CUNIT1"] = "deg"
    header["CUNIT2"] = "deg"
    header["EQUINOX"] = 2000.0
    header["RADESYS"] = "ICRS"
    if traps:
        # alternate celestial WCS (another tangent point) and detector axes
        header["WCSNAMEA"] = "ALTSKY"
        header["CTYPE1A"] = "RA---TAN"
        header["CTYPE2A"] = "DEC--TAN"
        header["CRVAL1A"] = ra_nom + 0.01
        header["CRVAL2A"] = dec_nom - 0.01
        header["CRPIX1A"] = 10.0
        header["CRPIX2A"] = 12.0
        header["CDELT1A"] = -pixel_deg * block
        header["CDELT2A"] = pixel_deg * block
        header["WCSNAMED"] = "DETECTOR"
        header["CTYPE1D"] = "DETX"
        header["CTYPE2D"] = "DETY"
        header["CRVAL1D"] = 4096.5
        header["CRVAL2D"] = 4096.5
        header["CRPIX1D"] = 1.0
        header["CRPIX2D"] = 1.0
        header["CDELT1D"] = 1.0
        header["CDELT2D"] = 1.0
        header["WCSNAMEF"] = "FOCALPLANE"
        header["CTYPE1F"] = "FPX--TAN"
        header["CTYPE2F"] = "FPY--TAN"
        header["CRVAL1F"] = 0.0
        header["CRVAL2F"] = 0.0
        header["CRPIX1F"] = 1.0
        header["CRPIX2F"] = 1.0
        header["CDELT1F"] = 1.0
        header["CDELT2F"] = 1.0


def _column_wcs(header, n, *, ctype, crval, crpix, cdelt):
    header[f"TCTYP{n}"] = ctype
    header[f"TCRVL{n}"] = crval
    header[f"TCRPX{n}"] = crpix
    header[f"TCDLT{n}"] = cdelt
    header[f"TCUNI{n}"] = "deg"


def _colnum(header, name):
    for n in range(1, header["TFIELDS"] + 1):
        if header[f"TTYPE{n}"].lower() == name.lower():
            return n
    raise KeyError(name)


def _sky_columns_wcs(header, *, kind, ra_nom, dec_nom, pixel_deg, crpix, xname="x", yname="y"):
    nx, ny = _colnum(header, xname), _colnum(header, yname)
    lon, lat = ("RA---TAN", "DEC--TAN") if kind == "EQPOS" else ("XLON-TAN", "XLAT-TAN")
    _column_wcs(header, nx, ctype=lon, crval=ra_nom, crpix=crpix, cdelt=-pixel_deg)
    _column_wcs(header, ny, ctype=lat, crval=dec_nom, crpix=crpix, cdelt=pixel_deg)
    header["MTYPE1"] = ("sky" if kind == "EQPOS" else "POS", "DM Keyword: Descriptor name.")
    header["MFORM1"] = (f"{xname},{yname}", "[pixel]")
    header["MTYPE2"] = (kind, "DM Keyword: Descriptor name.")
    header["MFORM2"] = ("RA,DEC" if kind == "EQPOS" else "RA_SRC,DEC_SRC", "[deg]")


# --------------------------------------------------------------------------- HDU builders

def _base_header(kind, *, ra_nom, dec_nom, instrument, traps, content=None, hduname=None,
                 level="obs"):
    h = fits.Header()
    _pointing(h, ra_nom=ra_nom, dec_nom=dec_nom, level=level, instrument=instrument,
              content=content or _CONTENT.get(kind, kind), hduname=hduname or kind,
              traps=traps)
    return h


def _events(kind, *, ra_nom, dec_nom, instrument, nrows, rng, traps):
    pixel, crpix = instrument_grid(instrument)
    cols = [
        fits.Column("time", "D", unit="s"),
        fits.Column("ccd_id", "I"),
        fits.Column("chipx", "I", unit="pixel"),
        fits.Column("chipy", "I", unit="pixel"),
        fits.Column("detx", "E", unit="pixel"),
        fits.Column("dety", "E", unit="pixel"),
        fits.Column("x", "E", unit="pixel"),
        fits.Column("y", "E", unit="pixel"),
        fits.Column("energy", "E", unit="eV"),
        fits.Column("pi", "J", unit="chan"),
    ]
    hdu = fits.BinTableHDU.from_columns(cols, nrows=0, name="EVENTS")
    h = hdu.header
    base = _base_header(kind, ra_nom=ra_nom, dec_nom=dec_nom, instrument=instrument, traps=traps,
                        hduname="EVENTS")
    for card in base.cards:
        if card.keyword == "HISTORY":
            h.add_history(card.value)
        else:
            h.append(card)
    _sky_columns_wcs(h, kind="EQPOS", ra_nom=ra_nom, dec_nom=dec_nom, pixel_deg=pixel,
                     crpix=crpix)
    # detector-frame columns: TAN-projected but not celestial
    nd = _colnum(h, "detx")
    _column_wcs(h, nd, ctype="FPX--TAN" if traps else "DETX", crval=0.0, crpix=crpix,
                cdelt=-pixel)
    _column_wcs(h, nd + 1, ctype="FPY--TAN" if traps else "DETY", crval=0.0, crpix=crpix,
                cdelt=pixel)
    h["NAXIS2"] = nrows
    dtype = np.dtype([("time", ">f8"), ("ccd_id", ">i2"), ("chipx", ">i2"), ("chipy", ">i2"),
                      ("detx", ">f4"), ("dety", ">f4"), ("x", ">f4"), ("y", ">f4"),
                      ("energy", ">f4"), ("pi", ">i4")])
    return h, dtype


def _event_chunk(dtype, n, rng, crpix, t0):
    arr = np.zeros(n, dtype=dtype)
    arr["time"] = t0 + np.arange(n) * 3.2
    arr["ccd_id"] = rng.integers(0, 10, n)
    arr["chipx"] = rng.integers(1, 1025, n)
    arr["chipy"] = rng.integers(1, 1025, n)
    xy = rng.normal(crpix, 500.0, (2, n))
    arr["detx"] = xy[0] + 3.0
    arr["dety"] = xy[1] - 2.0
    arr["x"] = xy[0]
    arr["y"] = xy[1]
    arr["energy"] = rng.uniform(300, 8000, n)
    arr["pi"] = (arr["energy"] / 14.6).astype(np.int32)
    return arr


def _write_events(path, kind, *, ra_nom, dec_nom, instrument, nrows, rng, traps,
                  chunk_rows=1_000_000):
    _, crpix = instrument_grid(instrument)
    header, dtype = _events(kind, ra_nom=ra_nom, dec_nom=dec_nom, instrument=instrument,
                            nrows=nrows, rng=rng, traps=traps)
    primary = _base_header(kind, ra_nom=ra_nom, dec_nom=dec_nom, instrument=instrument,
                           traps=traps, hduname="PRIMARY")
    phdu = fits.PrimaryHDU(header=primary)
    gti = fits.BinTableHDU.from_columns(
        [fits.Column("START", "D", array=[1e8]), fits.Column("STOP", "D", array=[1e8 + 5e4])],
        name="GTI")
    gti.header["HDUNAME"] = "GTI7"
    buf = io.BytesIO()
    fits.HDUList([phdu]).writeto(buf, checksum=True)
    nbytes = nrows * dtype.itemsize
    pad = (-nbytes) % BLOCK
    header_bytes = checksummed_header_bytes(header.copy(), 0)
    with open(path, "wb") as out:
        out.write(buf.getvalue())
        hdr_offset = out.tell()
        out.write(header_bytes)
        datasum = 0
        done = 0
        carry = b""
        while done < nrows:
            n = min(chunk_rows, nrows - done)
            raw = carry + _event_chunk(dtype, n, rng, crpix, 1e8 + done * 3.2).tobytes()
            whole = len(raw) - len(raw) % 4
            datasum = ones_complement_sum(raw[:whole], datasum)
            carry = raw[whole:]
            out.write(raw[:whole])
            done += n
        tail = carry + b"\0" * pad
        datasum = ones_complement_sum(tail, datasum)
        out.write(tail)
        buf2 = io.BytesIO()
        fits.HDUList([fits.PrimaryHDU(), gti]).writeto(buf2, checksum=True)
        out.write(buf2.getvalue()[BLOCK:])
        final = checksummed_header_bytes(header, datasum, nblocks=len(header_bytes) // BLOCK)
        out.seek(hdr_offset)
        out.write(final)


def _image(kind, *, ra_nom, dec_nom, instrument, rng, traps, shape=(64, 64), block=1.0,
           dtype=np.float32, sources=None):
    pixel, crpix = instrument_grid(instrument)
    # drawn even when replaced by rendered sources: the products after this one keep their
    # random draws whether or not sources are rendered
    data = rng.poisson(3.0, shape).astype(dtype)
    if sources is not None:
        shape, block = tuple(sources.shape), float(sources.block)
    h = _base_header(kind, ra_nom=ra_nom, dec_nom=dec_nom, instrument=instrument, traps=traps,
                     hduname=kind)
    hdu = fits.PrimaryHDU(data=data)
    for card in h.cards:
        if card.keyword == "HISTORY":
            hdu.header.add_history(card.value)
        else:
            hdu.header.append(card)
    _image_wcs(hdu.header, ra_nom=ra_nom, dec_nom=dec_nom, pixel_deg=pixel, crpix_sky=crpix,
               shape=shape, block=block, traps=traps)
    if sources is not None:
        hdu.data = _rendered(hdu.header, sources, pixel_deg=pixel)
    return [hdu]


def _rendered(header, sources, *, pixel_deg):
    """The counts image of ``sources`` (a :class:`skyimage.PointSources`) on ``header``'s grid.

    int16 as a binned counts image is; a pixel above 32767 counts is clipped (saturated).
    """
    from stk_astrometry import skyimage

    x, y = skyimage.sky_to_pixel(sources.ra_deg, sources.dec_deg, crval1=header["CRVAL1"],
                                 crval2=header["CRVAL2"], crpix1=header["CRPIX1"],
                                 crpix2=header["CRPIX2"], cdelt1=header["CDELT1"],
                                 cdelt2=header["CDELT2"])
    sigma_pix = np.asarray(sources.sigma_arcsec, dtype=float) / 3600.0 / abs(header["CDELT1"])
    image = skyimage.render_counts_image(
        sources.shape, x, y, sources.counts, sigma_pix,
        background=sources.background * float(header["CDELT1P"]) ** 2,
        rng=np.random.default_rng(sources.seed))
    return np.clip(image, 0, np.iinfo(np.int16).max).astype(np.int16)


def _region_table(name, *, ra_nom, dec_nom, instrument, eqsrc, rng, content, traps):
    pixel, crpix = instrument_grid(instrument)
    n = 2
    cols = [
        fits.Column("SHAPE", "16A", array=["ellipse", "ellipse"][:n]),
        fits.Column("X", "D", unit="pixel", array=crpix + rng.normal(0, 50, n)),
        fits.Column("Y", "D", unit="pixel", array=crpix + rng.normal(0, 50, n)),
        fits.Column("R", "2D", unit="pixel", array=np.abs(rng.normal(8, 1, (n, 2)))),
        fits.Column("ROTANG", "D", unit="deg", array=rng.uniform(0, 180, n)),
        fits.Column("COMPONENT", "I", array=np.arange(1, n + 1)),
    ]
    hdu = fits.BinTableHDU.from_columns(cols, name=name)
    h = hdu.header
    base = _base_header(name, ra_nom=ra_nom, dec_nom=dec_nom, instrument=instrument, traps=traps,
                        content=content, hduname=name)
    for card in base.cards:
        if card.keyword == "HISTORY":
            h.add_history(card.value)
        else:
            h.append(card)
    h["HDUCLASS"] = "ASC"
    h["HDUCLAS1"] = "REGION"
    h["HDUCLAS2"] = "SRC" if "BKG" not in name else "BKG"
    # wavdetect positions of the source at two scales, as CXC long keywords (DTYPEn/DVALn);
    # a scale without a detection holds the -999 sentinel (deterministic: no rng draw)
    set_keyword(h, "WAV1B_RA", round(ra_nom + 0.0021, 7), "[deg] wavdetect source RA")
    set_keyword(h, "WAV1B_DEC", round(dec_nom - 0.0013, 7), "[deg] wavdetect source Dec")
    set_keyword(h, "WAV2B_RA", -999.0, "[deg] wavdetect source RA")
    set_keyword(h, "WAV2B_DEC", -999.0, "[deg] wavdetect source Dec")
    if eqsrc == "good":
        _sky_columns_wcs(h, kind="EQSRC", ra_nom=ra_nom, dec_nom=dec_nom, pixel_deg=pixel,
                         crpix=crpix, xname="X", yname="Y")
    elif eqsrc == "wrong":
        _sky_columns_wcs(h, kind="EQSRC", ra_nom=0.0, dec_nom=0.0, pixel_deg=1.0, crpix=0.5,
                         xname="X", yname="Y")
    else:
        h["MTYPE1"] = ("POS", "DM Keyword: Descriptor name.")
        h["MFORM1"] = ("X,Y", "[pixel]")
    return hdu


def _merge(hdu, header):
    for card in header.cards:
        if card.keyword == "HISTORY":
            hdu.header.add_history(card.value)
        elif card.keyword not in hdu.header:
            hdu.header.append(card)
    return hdu


def _radec(n, ra_nom, dec_nom, rng, *, nulls=True):
    ra = ra_nom + rng.normal(0, 0.05, n) / np.cos(np.radians(dec_nom))
    dec = dec_nom + rng.normal(0, 0.05, n)
    ra = np.mod(ra, 360.0)
    if nulls and n >= 3:
        ra[1] = np.nan
        dec[1] = np.nan
        ra[2] = -999.0
        dec[2] = -999.0
    return ra, dec


def _simple_table(kind, name, columns, *, ra_nom, dec_nom, instrument, traps, level="obs",
                  content=None):
    hdu = fits.BinTableHDU.from_columns(columns, name=name)
    return _merge(hdu, _base_header(kind, ra_nom=ra_nom, dec_nom=dec_nom, instrument=instrument,
                                    traps=traps, content=content, hduname=name, level=level))


def _primary(kind, *, ra_nom, dec_nom, instrument, traps, level="obs", content=None):
    return fits.PrimaryHDU(header=_base_header(kind, ra_nom=ra_nom, dec_nom=dec_nom,
                                               instrument=instrument, traps=traps,
                                               content=content, hduname="PRIMARY",
                                               level=level))


def _build(kind, *, ra_nom, dec_nom, instrument, band, nrows, rng, traps, eqsrc,
           sources=None):
    pixel, crpix = instrument_grid(instrument)
    kw = {"ra_nom": ra_nom, "dec_nom": dec_nom, "instrument": instrument, "traps": traps}
    n = 50 if nrows is None else int(nrows)
    if kind in ("ECORRIMG", "BKGIMG", "EXPMAP", "PIXMASK", "SEXPMAP", "REGIMG", "PSF",
                "REGEXPMAP", "STKECORRIMG", "STKBKGIMG", "STKEXPMAP", "SENSITY", "THETAMEAN",
                "STKREGIMG"):
        dtype = np.int16 if kind == "PIXMASK" else np.float32
        return _image(kind, rng=rng, dtype=dtype,
                      sources=sources if kind in COUNTS_IMAGE_KINDS else None, **kw)
    if kind == "ASPSOL3":
        t = np.arange(n) * 0.256
        ra = np.full(n, ra_nom) + rng.normal(0, 1e-4, n)
        dec = np.full(n, dec_nom) + rng.normal(0, 1e-4, n)
        # the draw the q_att column was once made of: kept so that every product made
        # after this one keeps its random numbers
        rng.normal(0, 1, (n, 4))
        asp = _simple_table(kind, "ASPSOL", [
            fits.Column("time", "D", unit="s", array=1e8 + t),
            fits.Column("ra", "D", unit="deg", array=ra),
            fits.Column("dec", "D", unit="deg", array=dec),
            fits.Column("roll", "D", unit="deg", array=np.full(n, 45.0)),
            fits.Column("ra_err", "E", unit="arcsec", array=np.full(n, 0.1)),
            # the attitude that points at (ra, dec) with that roll (Chandra q_att convention)
            fits.Column("q_att", "4D", array=attitude_quaternion(ra, dec, np.full(n, 45.0))),
        ], **kw)
        # aspect solutions carry RA_PNT/DEC_PNT = 0 (wcs_update bug page): a sentinel
        asp.header["RA_PNT"] = 0.0
        asp.header["DEC_PNT"] = 0.0
        xfm = fits.BinTableHDU.from_columns(
            [fits.Column(c, "D", array=[v]) for c, v in (
                ("a11", 1.0), ("a12", 0.0), ("a21", 0.0), ("a22", 1.0), ("t1", 0.1),
                ("t2", -0.2), ("ra_ref", ra_nom), ("dec_ref", dec_nom), ("roll_ref", 0.0),
                ("xpix_ref", crpix), ("ypix_ref", crpix), ("x_scale", -pixel),
                ("y_scale", pixel))], name="xfm3")
        return [_primary(kind, **kw), asp, xfm]
    if kind == "BADPIX3":
        return [_primary(kind, **kw), _simple_table(kind, "BADPIX7", [
            fits.Column("chipx_lo", "I", array=[1, 5]), fits.Column("chipx_hi", "I", array=[1, 5]),
            fits.Column("chipy_lo", "I", array=[1, 9]), fits.Column("chipy_hi", "I", array=[1024, 9]),
            fits.Column("status", "J", array=[1, 2])], **kw)]
    if kind in ("FOV3", "STKFOV3", "POLY3", "SRCPOLY3"):
        level = "master" if kind == "SRCPOLY3" else "obs"
        hdu = _simple_table(kind, "FOV" if "FOV" in kind else "POLYGON", [
            fits.Column("SHAPE", "16A", array=["polygon"] * 2),
            fits.Column("X", "8D", unit="pixel", array=crpix + rng.normal(0, 900, (2, 8))),
            fits.Column("Y", "8D", unit="pixel", array=crpix + rng.normal(0, 900, (2, 8))),
            fits.Column("CCD_ID", "I", array=[6, 7])], level=level, **kw)
        if kind != "POLY3":
            _sky_columns_wcs(hdu.header, kind="EQPOS", ra_nom=ra_nom, dec_nom=dec_nom,
                             pixel_deg=pixel, crpix=crpix, xname="X", yname="Y")
        return [_primary(kind, level=level, **kw), hdu]
    if kind == "SPECTRUM":
        spec = _simple_table(kind, "SPECTRUM", [
            fits.Column("CHANNEL", "J", array=np.arange(1, 1025)),
            fits.Column("COUNTS", "J", array=rng.poisson(2, 1024))], **kw)
        reg = _region_table("REGION", eqsrc="good", rng=rng, content="SPECTRUM", **kw)
        for key in list(reg.header):
            if key.startswith("TCTYP"):
                reg.header[key] = {"XLON-TAN": "RA---TAN", "XLAT-TAN": "DEC--TAN"}.get(
                    reg.header[key], reg.header[key])
        reg.header["MTYPE2"] = "EQPOS"
        return [_primary(kind, **kw), spec, reg]
    if kind == "ARF":
        return [_primary(kind, **kw), _simple_table(kind, "SPECRESP", [
            fits.Column("ENERG_LO", "E", array=np.linspace(0.3, 10, 100)),
            fits.Column("ENERG_HI", "E", array=np.linspace(0.31, 10.01, 100)),
            fits.Column("SPECRESP", "E", array=rng.uniform(100, 600, 100))], **kw)]
    if kind == "RMF":
        prim = fits.PrimaryHDU()
        prim.header["CONTENT"] = "RMF"
        prim.header["INSTRUME"] = instrument
        mat = fits.BinTableHDU.from_columns([
            fits.Column("ENERG_LO", "E", array=np.linspace(0.3, 10, 20)),
            fits.Column("ENERG_HI", "E", array=np.linspace(0.31, 10.01, 20)),
            fits.Column("MATRIX", "5E", array=rng.uniform(0, 1, (20, 5)))], name="MATRIX")
        return [prim, mat]
    if kind == "LIGHTCURVE":
        return [_primary(kind, **kw), _simple_table(kind, "LIGHTCURVE", [
            fits.Column("TIME", "D", array=1e8 + np.arange(20) * 100.0),
            fits.Column("COUNT_RATE", "E", array=rng.uniform(0, 1, 20))], **kw)]
    if kind == "ECF90REG":
        bands = ("W",) if instrument.upper().startswith("HRC") else ("B", "U", "S", "M", "H")
        hdus = [_primary(kind, content="SRCREG", **kw)]
        for b in bands:
            hdus.append(_region_table(f"ECF90REG{b}", eqsrc=eqsrc or "missing", rng=rng,
                                      content="SRCREG", **kw))
        return hdus
    if kind == "SRCREG/BKGREG":
        return [_primary(kind, content="STKSRCREG", **kw),
                _region_table("SRCREG", eqsrc=eqsrc or "wrong", rng=rng, content="STKSRCREG",
                              **kw),
                _region_table("BKGREG", eqsrc=eqsrc or "wrong", rng=rng, content="STKSRCREG",
                              **kw)]
    if kind in ("DRAWS", "STKDRWS"):
        ra, dec = _radec(n, ra_nom, dec_nom, rng)
        name = "SRCDRAWS" if kind == "DRAWS" else "SRCDRWS"
        return [_primary(kind, **kw), _simple_table(kind, name, [
            fits.Column("ra", "D", unit="deg", array=ra),
            fits.Column("dec", "D", unit="deg", array=dec),
            fits.Column("loglike", "D", array=rng.normal(0, 1, n))], **kw)]
    if kind in ("APERPHOT", "STKAPERPHOT"):
        prim = fits.PrimaryHDU()
        prim.header["CONTENT"] = kind
        return [prim, _simple_table(kind, "PHOTOM", [
            fits.Column("energy_band", "8A", array=["b", "s"]),
            fits.Column("mode", "E", array=[1.0, 2.0])], level="nocoord", **kw)]
    if kind == "MRGSRC":
        return _mrgsrc(n, band=band, rng=rng, **kw)
    if kind in ("BAYESBLKS", "SRCAPERPHOT"):
        return [_primary(kind, level="master", **kw), _simple_table(kind, "BLOCKS" if kind ==
            "BAYESBLKS" else "PHOTOM", [
            fits.Column("time_lo", "D", array=[0.0, 1.0]),
            fits.Column("rate", "E", array=[0.1, 0.2])], level="master", **kw)]
    raise KeyError(kind)


def _mrgsrc(n, *, ra_nom, dec_nom, instrument, band, rng, traps):
    pixel, crpix = instrument_grid(instrument)
    kw = {"ra_nom": ra_nom, "dec_nom": dec_nom, "instrument": instrument, "traps": traps}
    ra, dec = _radec(n, ra_nom, dec_nom, rng)
    srclist = _simple_table("MRGSRC", "SRCLIST", [
        fits.Column("region_id", "J", array=np.arange(1, n + 1)),
        fits.Column("ra", "D", unit="deg", array=ra),
        fits.Column("dec", "D", unit="deg", array=dec),
        fits.Column("ra_err", "E", unit="arcsec", array=np.full(n, 0.3)),
        fits.Column("x", "D", unit="pixel", array=crpix + rng.normal(0, 300, n)),
        fits.Column("y", "D", unit="pixel", array=crpix + rng.normal(0, 300, n)),
        fits.Column("detect_ra_pos_err", "E", unit="arcsec", array=np.full(n, 0.2)),
    ], **kw)
    _sky_columns_wcs(srclist.header, kind="EQSRC", ra_nom=ra_nom, dec_nom=dec_nom,
                     pixel_deg=pixel, crpix=crpix)
    r2, d2 = _radec(n, ra_nom, dec_nom, rng)
    r3, d3 = _radec(n, ra_nom, dec_nom, rng, nulls=False)
    b = band or "b"
    srcfit = _simple_table("MRGSRC", "SRCFIT", [
        fits.Column("detect_ra", "D", unit="deg", array=ra),
        fits.Column("detect_dec", "D", unit="deg", array=dec),
        fits.Column(f"src_ra{b}", "D", unit="deg", array=r2),
        fits.Column(f"src_dec{b}", "D", unit="deg", array=d2),
        fits.Column(f"ext_ra{b}", "D", unit="deg", array=r3),
        fits.Column(f"ext_dec{b}", "D", unit="deg", array=d3),
        fits.Column(f"src_ra_err{b}", "E", unit="arcsec", array=np.full(n, 0.4)),
    ], **kw)
    wav = _simple_table("MRGSRC", "WAVSRC", [
        fits.Column("RA", "D", unit="deg", array=r2),
        fits.Column("DEC", "D", unit="deg", array=d2),
        fits.Column(f"wav1{b}_ra", "D", unit="deg", array=r3),
        fits.Column(f"wav1{b}_dec", "D", unit="deg", array=d3),
        fits.Column(f"wav2{b}_ra", "D", unit="deg", array=r3),
        fits.Column(f"wav2{b}_dec", "D", unit="deg", array=d3),
    ], **kw)
    mpnt = _simple_table("MRGSRC", "MPNTSRC", [
        fits.Column("RA", "D", unit="deg", array=r3), fits.Column("DEC", "D", unit="deg", array=d3)],
        **kw)
    mext = _simple_table("MRGSRC", "MEXTSRC", [
        fits.Column("CENTER_RA", "D", unit="deg", array=r3[:3]),
        fits.Column("CENTER_DEC", "D", unit="deg", array=d3[:3]),
        fits.Column("RADIUS", "E", unit="arcsec", array=[5.0, 6.0, 7.0])], **kw)
    nodet = _simple_table("MRGSRC", "NO_DETECT", [
        fits.Column("RA", "D", unit="deg", array=ra), fits.Column("DEC", "D", unit="deg", array=dec)],
        **kw)
    return [_primary("MRGSRC", **kw), srclist, srcfit, wav, mpnt, mext, nodet]


def write_product(kind: str, path, *, ra_nom: float, dec_nom: float, instrument: str = "ACIS",
                  band: str = "b", nrows: int | None = None, rng=None, traps: bool = False,
                  eqsrc: str | None = None, sources=None) -> Path:
    """Write one synthetic product of type ``kind``.

    Parameters
    ----------
    kind : str
        One of :data:`PRODUCT_KINDS`.
    path : path-like
    ra_nom, dec_nom : float
        Pointing (deg): the tangent point of the sky pixel grid and the WCS reference.
    instrument : str
        ``ACIS`` or ``HRC`` (sets the sky grid).
    band : str
        Band letter used in column names (MRGSRC).
    nrows : int, optional
        Rows of event lists (default 1000), aspect solutions and draws (default 50).
    rng : numpy.random.Generator, optional
        Default ``np.random.default_rng(0)``.
    traps : bool
        Add the keywords and WCS axes that must not move (module docstring).
    eqsrc : {'missing', 'wrong', 'good'}, optional
        State of the EQSRC of ECF90REG/SRCREG/BKGREG tables (default missing for
        ECF90REG, wrong for SRCREG/BKGREG, as spec-notes 18 says they are).
    sources : stk_astrometry.skyimage.PointSources, optional
        For the counts images (:data:`COUNTS_IMAGE_KINDS`): render these sources on their
        grid (shape, block) as an int16 Poisson counts image, instead of 64x64 pixels of
        noise.  Its own seed: the ``rng`` stream is not used for the image.

    Returns
    -------
    Path
    """
    if kind not in _NAMES:
        raise KeyError(f"unknown product kind {kind!r}; one of {', '.join(PRODUCT_KINDS)}")
    rng = np.random.default_rng(0) if rng is None else rng
    path = Path(path)
    if kind.endswith("_JPG"):
        path.write_bytes(minimal_jpeg())
        return path
    if kind in ("EVT3", "REGEVT3", "STKEVT3", "STKREGEVT", "STKREGEVP"):
        _write_events(path, kind, ra_nom=ra_nom, dec_nom=dec_nom, instrument=instrument,
                      nrows=1000 if nrows is None else int(nrows), rng=rng, traps=traps)
        return path
    hdus = _build(kind, ra_nom=ra_nom, dec_nom=dec_nom, instrument=instrument, band=band,
                  nrows=nrows, rng=rng, traps=traps, eqsrc=eqsrc, sources=sources)
    fits.HDUList(hdus).writeto(path, overwrite=True, checksum=True)
    return path


def write_product_tree(folder, *, ra_nom: float, dec_nom: float, instrument: str = "ACIS",
                       band: str = "b", kinds=PRODUCT_KINDS, rng=None, traps=False,
                       nrows: int | None = None) -> list[Path]:
    """Write one product of every kind into a nested CSC-like tree under ``folder``.

    Layout: ``obs/<obsid>/`` (per-observation), ``obs/<obsid>/r0012/`` (its
    source region products), ``stack/``, ``stack/r0012/``, ``master/``.

    Returns
    -------
    list of Path
        The files written, in :data:`PRODUCT_KINDS` order.
    """
    rng = np.random.default_rng(0) if rng is None else rng
    levels = {p.name: p.level for p in PRODUCT_TABLE}
    sub = {"observation": "obs/14031", "observation source": "obs/14031/r0012",
           "stack": "stack", "stack source": "stack/r0012", "master": "master"}
    out = []
    for kind in kinds:
        where = Path(folder) / sub[levels[kind]]
        where.mkdir(parents=True, exist_ok=True)
        path = where / product_filename(kind, instrument=instrument, band=band)
        out.append(write_product(kind, path, ra_nom=ra_nom, dec_nom=dec_nom,
                                 instrument=instrument, band=band, rng=rng, traps=traps,
                                 nrows=nrows))
    return out


def write_stkxfm(path, *, d_xi_arcsec: float, d_eta_arcsec: float, ra_ref_deg: float,
                 dec_ref_deg: float, instrument: str = "ACIS",
                 stackid: str = "acisfJ1348473p263535_002") -> Path:
    """Write a transform file in the layout ``stk_xfm`` writes (formats.md §2), one TOTAL row.

    For tests and benchmarks of ``stk_update_wcs`` that must not depend on ``stk_xfm``.
    """
    pixel, crpix = instrument_grid(instrument)
    x_scale, y_scale = -pixel, pixel
    values = [("a11", 1.0), ("a12", 0.0), ("a21", 0.0), ("a22", 1.0),
              ("t1", d_xi_arcsec / (3600.0 * x_scale)), ("t2", d_eta_arcsec / (3600.0 * y_scale)),
              ("ra_ref", ra_ref_deg), ("dec_ref", dec_ref_deg), ("roll_ref", 0.0),
              ("xpix_ref", crpix), ("ypix_ref", crpix), ("x_scale", x_scale),
              ("y_scale", y_scale)]
    cols = [fits.Column(n, "D", array=[v]) for n, v in values]
    cols.append(fits.Column("component", "16A", array=["TOTAL"]))
    cols += [fits.Column(n, "D", unit=u, array=[v]) for n, v, u in (
        ("d_xi", d_xi_arcsec, "arcsec"), ("d_eta", d_eta_arcsec, "arcsec"),
        ("d_xi_err", 0.05, "arcsec"), ("d_eta_err", 0.05, "arcsec"),
        ("cov_xi_eta", 0.0, "arcsec**2"))]
    hdu = fits.BinTableHDU.from_columns(cols, name="STKXFM")
    hdu.header["STACKID"] = stackid
    hdu.header["INSTRUME"] = instrument
    hdu.header["METHOD"] = "direct"
    hdu.header["QAFLAGS"] = 0
    hdu.header["RA_STACK"] = (ra_ref_deg, "[deg] stack tangent point")
    set_keyword(hdu.header, "DEC_STACK", dec_ref_deg, "[deg] stack tangent point")
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path, overwrite=True, checksum=True)
    return Path(path)
