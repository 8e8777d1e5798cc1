"""stk_astrometry.tableio's FITS readers: the numpy reader of plain layouts (PlainFits, issue 11)
gives what fitsio gives, on every catalog and per-stack file layout the package writes and reads,
on catalogs shaped as the services write them, and on fuzzed headers and damaged files -- where
it declines, fitsio (then astropy) reads the file exactly as before.

Each file is read both ways (``tableio._PLAIN_READ`` on and off) through :func:`read_table` (every
block selector) and through ``formats._fits.read_fits`` (the pairs/transform files' reader), and the
results are compared byte for byte: dtypes, values (NaN payloads included), masks, names, header
cards, labels -- or the same error.
"""

import shutil
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from stk_astrometry import tableio
from stk_astrometry.formats import _fits

ROOT = Path(__file__).resolve().parents[1]


def _read_table_result(spec):
    try:
        tin = tableio.read_table(spec, param="f")
    except Exception as exc:  # noqa: BLE001 - the error itself is compared
        return ("error", type(exc).__name__, str(exc))
    cols = {}
    for name in tin.table.colnames:
        col = tin.table[name]
        data, mask = np.ma.getdata(col), np.ma.getmaskarray(col)
        with np.errstate(invalid="ignore"):      # a float32 signalling NaN, cast
            floats = tin.table.floats(name) if hasattr(tin.table, "floats") else None
        values = repr(data.tolist()) if data.dtype.kind == "O" else data.tobytes()
        cols[name] = (str(data.dtype), data.shape, values, mask.tobytes(),
                      None if floats is None else floats.tobytes())
    header = [c.image for c in tin.header.cards] if tin.header else []
    return (type(tin.table).__name__, tin.hdu, list(tin.table.colnames), cols, header,
            tin.original_names, tin.ambiguous)


def _read_fits_result(path):
    try:
        hdus = _fits.read_fits(path)
    except Exception as exc:  # noqa: BLE001
        return ("error", type(exc).__name__, str(exc))
    out = []
    for extname, header, columns, units in hdus:
        cols = None if columns is None else {
            n: (str(a.dtype), a.shape, repr(a.tolist()) if a.dtype.kind == "O" else a.tobytes())
            for n, a in columns.items()}
        out.append((extname, [c.image for c in header.cards], cols, units))
    return out


def _both(fn, *args):
    got = {}
    for plain in (True, False):
        tableio._PLAIN_READ = plain
        try:
            got[plain] = fn(*args)
        finally:
            tableio._PLAIN_READ = True
    return got[True], got[False]


def check_same(path, blocks=(None,)):
    """``path`` read both ways: equal.  True when the numpy reader took the file."""
    for block in blocks:
        spec = str(path) if block is None else f"{path}[{block}]"
        plain, other = _both(_read_table_result, spec)
        assert plain == other, spec
    plain, other = _both(_read_fits_result, path)
    assert plain == other, path
    fh = tableio.PlainFits.open(path)
    if fh is None:
        return False
    with fh:
        return True


# ------------------------------------------------------------------ the package's own layouts

def _package_files():
    files = sorted((ROOT / "share" / "sample").glob("*.fits"))
    files += sorted((ROOT / "test" / "golden").rglob("*.fits"))
    return files


@pytest.mark.parametrize("path", _package_files(), ids=lambda p: p.name)
def test_bundled_and_golden_files_read_the_same_by_numpy(path):
    with fits.open(path) as hdul:
        names = [h.name for h in hdul]
    took = check_same(path, [None] + list(range(1, len(names) + 2)) + [n for n in names if n])
    # the catalogs and per-stack files are plain; the data products (vector columns, images
    # with scaling) are fitsio's
    assert took or "products" in path.parts


def test_simulated_stack_inputs_read_the_same_by_numpy(tmp_path):
    import sys

    sys.path.insert(0, str(ROOT / "test" / "benchmarks"))
    from _common import write_sim_inputs

    from stk_astrometry.simulate import SimConfig, simulate_stack

    rng = np.random.default_rng(11)
    for i, (ndet, dens) in enumerate([(40, 5.0), (0, 0.5), (3, 0.0), (150, 50.0)]):
        sub = tmp_path / f"s{i}"
        sub.mkdir()
        sim = simulate_stack(SimConfig(ndet=ndet, gaia_density=dens, wise_density=min(dens, 5)),
                             rng=rng)
        for path in write_sim_inputs(sim, sub).values():
            assert check_same(path, (None, 2))


def test_pairs_and_transform_files_read_the_same_by_numpy(tmp_path):
    """The per-stack files of the chain on the bundled sample (the api writes them)."""
    from stk_astrometry import api

    sample = ROOT / "share" / "sample"
    stem = "acisfJ1236480p621200_001"
    m = api.match_stack(sample / f"{stem}_det.fits", sample / f"{stem}_gaia.fits",
                        tmp_path / "pairs.fits", wisefile=sample / f"{stem}_allwise.fits",
                        bestnbfile=sample / f"{stem}_bestnb.fits")
    api.fit_stack(m, tmp_path / "xfm.fits")
    for name in ("pairs.fits", "xfm.fits"):
        assert check_same(tmp_path / name, (None, 2, 3, "PAIRS"))


# ------------------------------------------------------------------ catalogs as services write them

def _service_tables():
    from test_formats_catalogs import _gaia_archive_table, _irsa_allwise, _vizier_gaia

    ra = np.array([150.0, 150.01, 149.99])
    return {"gaia_archive": _gaia_archive_table(), "vizier": _vizier_gaia(),
            "vizier_j2000": _vizier_gaia(with_icrs=False),
            "irsa_allwise": _irsa_allwise(ra, ra / 75)}


@pytest.mark.parametrize("name", ["gaia_archive", "vizier", "vizier_j2000", "irsa_allwise"])
def test_service_catalogs_read_the_same_by_numpy(tmp_path, name):
    table = _service_tables()[name]
    path = tmp_path / f"{name}.fits"
    table.write(path, format="fits")
    check_same(path, (None, 1, 2, 3, "CATALOG"))
    # a masked integer column (TNULL), a logical column, empty: as astroquery results have
    table = table.copy()
    table["flag"] = np.array([True, False, True])
    table["count"] = np.ma.MaskedArray([3, 0, 7], mask=[False, True, False])
    table.meta["EXTNAME"] = "CATALOG"
    table.write(path, format="fits", overwrite=True)
    check_same(path, (None, 2, "CATALOG", "catalog"))
    table[:0].write(path, format="fits", overwrite=True)
    check_same(path, (None, 2, "CATALOG"))


def test_case_twins_and_scaled_columns_are_left_to_fitsio_and_astropy(tmp_path):
    path = tmp_path / "v.fits"
    _vizier_gaia_fits(path)
    assert check_same(path, (None, 2))        # read by numpy; tableio gives it to astropy
    assert type(tableio.read_table(str(path), param="f").table).__name__ == "Table"
    t = Table({"u": np.array([1, 2, 40000], dtype=np.uint16), "x": [1.0, 2.0, 3.0]})
    t.write(path, format="fits", overwrite=True)          # TZERO = 32768
    assert not check_same(path, (None, 2))


def _vizier_gaia_fits(path):
    from test_formats_catalogs import _vizier_gaia

    _vizier_gaia().write(path, format="fits", overwrite=True)


# ------------------------------------------------------------------ fuzzed headers and data

_TYPES = {"L": 1, "B": 1, "I": 2, "J": 4, "K": 8, "E": 4, "D": 8, "A": 1}


def _card(key, value):
    if isinstance(value, bool):
        text = f"{'T' if value else 'F':>20}"
    elif isinstance(value, str):
        text = "'" + value.replace("'", "''").ljust(8) + "'"
    else:
        text = f"{value:>20}"
    return f"{key:<8}= {text}".ljust(80)[:80]


def _header_bytes(cards):
    text = "".join(cards) + "END".ljust(80)
    text += " " * (-len(text) % 2880)
    return text.encode("ascii")


def _padded(data):
    return data + b"\0" * (-len(data) % 2880)


def _column_bytes(rng, kind, repeat, nrows):
    width = _TYPES[kind] * repeat
    if kind == "L":
        return rng.choice([b"T", b"F", b"\0", b"x"], size=nrows).tolist()
    if kind == "A":
        alphabet = np.frombuffer(b"abcXYZ 09_ -", dtype="S1")
        rows = []
        for _ in range(nrows):
            s = b"".join(rng.choice(alphabet, size=rng.integers(0, repeat + 1)).tolist())
            pad = b"\0" if rng.random() < 0.3 else b" "
            if rng.random() < 0.05:
                s = b"\xe9" + s
            rows.append((s + pad * repeat)[:repeat])
        return rows
    raw = rng.integers(0, 256, size=(nrows, width), dtype=np.uint8)
    if kind in "ED" and nrows:
        # NaNs with payloads, infinities, ordinary numbers
        vals = rng.normal(size=nrows).astype(">f8" if kind == "D" else ">f4")
        raw = np.frombuffer(vals.tobytes(), np.uint8).reshape(nrows, width).copy()
        raw[rng.random(nrows) < 0.3, 0] = 0x7F if kind == "E" else 0xFF
        raw[:, 1][rng.random(nrows) < 0.3] |= 0xF0
    return [bytes(r) for r in raw]


_MUTATIONS = [
    None, None, None, None, None, None,
    "tscal", "tzero", "tdim", "theap", "vector", "lower_tform", "zero_width", "bit", "heap_col",
    "naxis1", "pcount", "gcount", "no_ttype", "dup_name", "case_twin", "blank_name",
    "leading_space", "truncate", "trailing", "trailing_block", "image_first", "primary_data",
    "simple_f", "bitpix16", "ascii_table", "tfields_more", "tfields_less", "groups",
    "no_end", "extname_int", "hduname_only", "no_extname", "long_extname", "two_tables",
    "tnull_float", "tnull_text", "naxis3", "gz",
]


def _fuzz_file(rng, path, mutation):
    ncols = int(rng.integers(1, 7))
    nrows = int(rng.integers(0, 8))
    kinds = [str(rng.choice(list(_TYPES))) for _ in range(ncols)]
    repeats = [int(rng.integers(1, 13)) if k == "A" else 1 for k in kinds]
    names = [f"col{i}" if rng.random() < 0.5 else f"Col_{i}x" for i in range(ncols)]
    cols = [_column_bytes(rng, k, r, nrows) for k, r in zip(kinds, repeats, strict=True)]
    rows = b"".join(b"".join(c[i] for c in cols) for i in range(nrows))
    naxis1 = sum(_TYPES[k] * r for k, r in zip(kinds, repeats, strict=True))
    tforms = [f"{r}A" if k == "A" else (k if rng.random() < 0.5 else f"1{k}")
              for k, r in zip(kinds, repeats, strict=True)]
    extra, heap = [], b""
    if mutation == "tscal":
        extra.append(_card("TSCAL1", 2.0))
    elif mutation == "tzero":
        extra.append(_card("TZERO1", 32768))
    elif mutation == "tdim":
        extra.append(_card("TDIM1", "(1)"))
    elif mutation == "theap":
        extra.append(_card("THEAP", naxis1 * nrows))
    elif mutation == "vector":
        tforms[0] = "2D"
        naxis1 += 16 - _TYPES[kinds[0]] * repeats[0]
        rows = b"".join(b"\x40" * 16 + b"".join(c[i] for c in cols[1:]) for i in range(nrows))
    elif mutation == "lower_tform":
        tforms[0] = tforms[0].lower()
    elif mutation == "zero_width":
        tforms.append("0A")
        names.append("empty")
    elif mutation == "bit":
        tforms.append("8X")
        names.append("bits")
        naxis1 += 1
        rows = b"".join(rows[i * (naxis1 - 1):(i + 1) * (naxis1 - 1)] + b"\x81"
                        for i in range(nrows))
    elif mutation == "heap_col":
        tforms.append("1PB(1)")
        names.append("var")
        naxis1 += 8
        rows = b"".join(rows[i * (naxis1 - 8):(i + 1) * (naxis1 - 8)]
                        + np.array([1, i], ">i4").tobytes() for i in range(nrows))
        heap = bytes(range(nrows))
    elif mutation == "naxis1":
        naxis1 += 1
        rows = b"".join(rows[i * (naxis1 - 1):(i + 1) * (naxis1 - 1)] + b"\0"
                        for i in range(nrows))
    elif mutation == "dup_name" and ncols > 1:
        names[1] = names[0]
    elif mutation == "case_twin" and ncols > 1:
        names[1] = names[0].upper() if names[0] != names[0].upper() else names[0].lower()
    elif mutation == "blank_name":
        names[0] = ""
    elif mutation == "leading_space":
        names[0] = " " + names[0]
    extname = "CAT"
    cards = [_card("XTENSION", "BINTABLE" if mutation != "ascii_table" else "TABLE"),
             _card("BITPIX", 16 if mutation == "bitpix16" else 8),
             _card("NAXIS", 3 if mutation == "naxis3" else 2), _card("NAXIS1", naxis1),
             _card("NAXIS2", nrows)]
    if mutation == "naxis3":
        cards.append(_card("NAXIS3", 1))
    cards += [_card("PCOUNT", len(heap) if mutation != "pcount" else 2880),
              _card("GCOUNT", 2 if mutation == "gcount" else 1)]
    nfields = ncols + (mutation in ("zero_width", "bit", "heap_col"))
    nfields += {"tfields_more": 1, "tfields_less": -1}.get(mutation, 0)
    cards.append(_card("TFIELDS", nfields))
    for i, (name, tform) in enumerate(zip(names, tforms, strict=True), start=1):
        if not (mutation == "no_ttype" and i == 1):
            cards.append(_card(f"TTYPE{i}", name))
        cards.append(_card(f"TFORM{i}", tform))
        if tform.lstrip("1") in ("I", "J", "K", "B") and rng.random() < 0.5 and nrows:
            value = int(np.frombuffer(cols[i - 1][0], f">{'u' if tform[-1] == 'B' else 'i'}"
                                      f"{_TYPES[tform[-1]]}")[0])
            cards.append(_card(f"TNULL{i}", value))
        if mutation == "tnull_float" and tform.lstrip("1") in ("E", "D"):
            cards.append(_card(f"TNULL{i}", 0))
        if mutation == "tnull_text" and tform.endswith("A"):
            cards.append(_card(f"TNULL{i}", "abc"))
        if rng.random() < 0.3:
            cards.append(_card(f"TUNIT{i}", "deg"))
    if mutation == "extname_int":
        cards.append(_card("EXTNAME", 7))
    elif mutation == "hduname_only":
        cards.append(_card("HDUNAME", extname))
    elif mutation == "long_extname":
        cards.append(_card("EXTNAME", "X" * 60))
    elif mutation != "no_extname":
        cards.append(_card("EXTNAME", extname))
    cards += extra
    table = _header_bytes(cards) + _padded(rows + heap + (b"\0" * 2880 if mutation == "pcount"
                                                          else b""))
    if mutation == "no_end":
        table = table.replace(b"END" + b" " * 77, b" " * 80)
    primary = [_card("SIMPLE", mutation != "simple_f"), _card("BITPIX", 8),
               _card("NAXIS", 0 if mutation not in ("primary_data", "groups") else 2)]
    pdata = b""
    if mutation in ("primary_data", "groups"):
        primary += [_card("NAXIS1", 0 if mutation == "groups" else 5), _card("NAXIS2", 3)]
        if mutation == "groups":
            primary += [_card("GROUPS", True), _card("PCOUNT", 0), _card("GCOUNT", 1)]
        else:
            pdata = _padded(bytes(15))
    primary.append(_card("EXTEND", True))
    image = _header_bytes(primary) + pdata
    if mutation == "image_first":
        image += _header_bytes([_card("XTENSION", "IMAGE"), _card("BITPIX", -32),
                                _card("NAXIS", 1), _card("NAXIS1", 3), _card("PCOUNT", 0),
                                _card("GCOUNT", 1), _card("EXTNAME", "IMG")]) + _padded(bytes(12))
    image += table
    if mutation == "two_tables":
        image += table.replace(b"'CAT     '", b"'CAT2    '")
    if mutation == "truncate":
        image = image[:-int(rng.integers(1, 2881))]
    elif mutation == "trailing":
        image += b"junk"
    elif mutation == "trailing_block":
        image += bytes(2880)
    if mutation == "gz":
        import gzip

        image = gzip.compress(image)
    path.write_bytes(image)


@pytest.mark.parametrize("chunk", range(4))
def test_fuzzed_tables_read_the_same_by_numpy_or_are_left_to_fitsio(tmp_path, chunk):
    rng = np.random.default_rng(1100 + chunk)
    plain = 0
    n = 3 * len(_MUTATIONS)
    for i in range(n):
        mutation = _MUTATIONS[i % len(_MUTATIONS)]
        path = tmp_path / f"f{i}.fits"
        _fuzz_file(rng, path, mutation)
        took = check_same(path, (None, 1, 2, 3, "CAT", "cat", "IMG"))
        plain += took
        if mutation in ("tscal", "tzero", "tdim", "theap", "vector", "bit", "heap_col",
                        "truncate", "trailing", "trailing_block", "gz", "ascii_table",
                        "groups", "no_end", "naxis1", "pcount", "gcount", "bitpix16"):
            assert not took, mutation
        path.unlink()
    assert plain >= n // 4          # the comparison is not vacuous: numpy read many of them


def test_a_file_replaced_while_read_is_read_whole_or_refused(tmp_path):
    """The data unit read after the headers: a file cut short in between is an OSError that
    the readers turn into fitsio's/astropy's error, never a short table."""
    path = tmp_path / "c.fits"
    Table({"x": np.arange(100.0)}).write(path, format="fits")
    fh = tableio.PlainFits.open(path)
    assert fh is not None
    with fh:
        shutil.copy(path, tmp_path / "keep.fits")
        with open(path, "r+b") as out:
            out.truncate(2880 * 2 + 10)
        with pytest.raises(OSError, match="ends early"):
            fh[1].read()
