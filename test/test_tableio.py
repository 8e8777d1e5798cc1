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



@pytest.fixture(autouse=True)
def _layouts_cleared():
    """Each test sees the plain reader's layout and row-dtype makers themselves, not what an
    earlier test in the same process left remembered."""
    tableio._plain_columns.cache_clear()
    tableio._np_dtype_of.cache_clear()

def _read_table_result(spec):
    try:
        tin = tableio.read_table(spec, param="f")
    except Exception as exc:  # noqa: BLE001 - the error itself is compared
        return ("error", type(exc).__name__, str(exc))
    cols = {}
    for name in tin.table.colnames:
        col = tin.table[name]
        data, mask = np.ma.getdata(col), np.ma.getmaskarray(col)
        if hasattr(tin.table, "data_mask"):      # the masked array's parts, without it
            fast_data, fast_mask = tin.table.data_mask(name)
            assert fast_data.dtype == data.dtype and fast_data.tobytes() == data.tobytes()
            assert fast_mask.dtype == bool and fast_mask.shape == data.shape
            assert fast_mask.tobytes() == mask.tobytes()
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


def _fast_result(path, block):
    """What tableio's fast reader (numpy or fitsio) makes of ``path[block]``, called directly:
    None when it leaves the file to astropy, else the table as :func:`_astropy_result` gives
    astropy's.  Its errors are raised (read_table would hide them behind astropy's reader)."""
    try:
        fast = tableio._read_with_fitsio(Path(path), block)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
        return ("declined", type(exc).__name__)      # as _read_fits_fast takes it
    if fast is None:
        return None
    table, header, label = fast
    assert isinstance(table, tableio.ColumnTable)
    return _columns_result(table, header, label)


def _astropy_result(path, block):
    table, header, label = tableio._read_fits(Path(path), block, str(path), "f")
    return _columns_result(table, header, label)


def _columns_result(table, header, label):
    cols = {}
    for name in table.colnames:
        col = table[name]
        mask = np.ma.getmaskarray(col)
        data = np.ma.getdata(col)
        # the values where not masked: astropy's and fitsio's byte order and str/bytes differ,
        # and fitsio keeps a text's trailing blanks (the catalog readers strip them)
        values = [(v.decode() if isinstance(v, bytes) else v).rstrip(" ")
                  if isinstance(v, (str, bytes)) else v for v in data[~mask].tolist()]
        kind = "U" if data.dtype.kind == "S" else data.dtype.kind
        cols[name] = (kind, data.shape, repr(values), mask.tobytes())
    cards = [(c.keyword, "UNDEFINED" if type(c.value).__name__ == "Undefined" else repr(c.value))
             for c in header.cards]
    return (label, cards, list(table.colnames), cols)


def check_same(path, blocks=(None,), *, fast_takes=False):
    """``path`` read both ways: equal.  True when the numpy reader took the file.

    The fast reader called directly gives the same both ways; ``fast_takes``: it takes every
    block that read_table reads, giving what astropy's reader gives (values, masks, names,
    header, label) -- for the layouts the package reads (fuzzed files: their blank text and
    odd bytes are read differently by the two libraries, and the readers strip and check)."""
    compared = set()
    for block in blocks:
        spec = str(path) if block is None else f"{path}[{block}]"
        plain, other = _both(_read_table_result, spec)
        assert plain == other, spec
        if plain[0] != "error":
            fast, fitsio_fast = _both(_fast_result, path, tableio.parse_virtual_filename(spec)[1])
            assert fast == fitsio_fast, spec
            if fast_takes:
                assert fast is not None and fast[0] != "declined", spec
                if fast[0] not in compared:        # each HDU once (astropy is slow)
                    compared.add(fast[0])
                    assert fast == _astropy_result(path, tableio.parse_virtual_filename(spec)[1]), spec
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
    took = check_same(path, [None] + list(range(1, len(names) + 2)) + [n for n in names if n],
                      fast_takes="products" not in path.parts)
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
            assert check_same(path, (None, 2), fast_takes=True)


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
        assert check_same(tmp_path / name, (None, 2, 3, "PAIRS"), fast_takes=True)


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
    takes = not name.startswith("vizier")     # VizieR's case twins: astropy's
    check_same(path, (None, 1, 2, 3, "CATALOG"), fast_takes=takes)
    # a masked integer column (TNULL), a logical column, empty: as astroquery results have
    table = table.copy()
    table["flag"] = np.array([True, False, True])
    table["count"] = np.ma.MaskedArray([3, 0, 7], mask=[False, True, False])
    table.meta["EXTNAME"] = "CATALOG"
    table.write(path, format="fits", overwrite=True)
    check_same(path, (None, 2, "CATALOG", "catalog"), fast_takes=takes)
    table[:0].write(path, format="fits", overwrite=True)
    check_same(path, (None, 2, "CATALOG"), fast_takes=takes)
    # no rows: read, each column empty of the file's type (text as bytes, as fitsio describes it)
    empty = tableio.read_table(f"{path}[CATALOG]", param="f").table
    assert len(empty) == 0
    if takes:
        for name in table.colnames:
            if table[name].dtype.kind in "US":
                assert empty._columns[name].dtype.kind == "S", name


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


#: The fuzz mutations the numpy reader must decline (fitsio reads those files), and those it
#: must take (a plain layout still).
_DECLINED = {"tscal", "tzero", "tdim", "theap", "vector", "bit", "heap_col", "truncate",
             "trailing", "trailing_block", "gz", "ascii_table", "groups", "no_end", "naxis1",
             "pcount", "gcount", "bitpix16", "lower_tform", "zero_width", "no_ttype", "dup_name",
             "blank_name", "leading_space", "tfields_more", "tfields_less", "simple_f",
             "extname_int", "naxis3"}
_TAKEN = {None, "case_twin", "image_first", "primary_data", "hduname_only", "no_extname",
          "long_extname", "two_tables", "tnull_float", "tnull_text"}


def _fuzz_file(rng, path, mutation):
    ncols = int(rng.integers(2 if mutation in ("dup_name", "case_twin") else 1, 7))
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
        assert took == (mutation in _TAKEN), mutation
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
        with pytest.raises(OSError, match=f"^{path}: the table data ends early$"):
            fh[1].read()


def test_every_fuzz_mutation_is_either_declined_or_taken():
    assert set(_MUTATIONS) == _DECLINED | _TAKEN and not _DECLINED & _TAKEN


# ------------------------------------------------------------------ the layout rules one by one

def _image_hdu(cards, data=b"", *, primary=False):
    head = [_card("SIMPLE", True)] if primary else [_card("XTENSION", "IMAGE")]
    return _header_bytes(head + cards) + _padded(data)


def _table_hdu(extra=(), *, nfields=None, tform="D", rows=2, edit=None):
    nfields = 1 if nfields is None else nfields
    width = {"D": 8, "L": 1, "1A": 1, "3A": 3}[tform]
    cards = [_card("XTENSION", "BINTABLE"), _card("BITPIX", 8), _card("NAXIS", 2),
             _card("NAXIS1", width * nfields), _card("NAXIS2", rows), _card("PCOUNT", 0),
             _card("GCOUNT", 1), _card("TFIELDS", nfields)]
    for i in range(1, nfields + 1):
        cards += [_card(f"TTYPE{i}", f"c{i}"), _card(f"TFORM{i}", tform)]
    cards += list(extra)
    if edit:
        cards = edit(cards)
    return _header_bytes(cards) + _padded(bytes(width * nfields * rows))


_PRIMARY = _image_hdu([_card("BITPIX", 8), _card("NAXIS", 0)], primary=True)


def _opens(tmp_path, image):
    path = tmp_path / "r.fits"
    path.write_bytes(image)
    fh = tableio.PlainFits.open(path)
    if fh is None:
        return None
    with fh:
        return [(h.get_exttype(), h.get_extname(), h._columns, h.get_nrows()) for h in fh]


def _fitsio_view(path):
    import fitsio

    with fitsio.FITS(str(path)) as fh:
        return [(h.get_exttype(), h.get_extname()) for h in fh]


def test_table_field_count_from_one_to_999(tmp_path):
    assert _opens(tmp_path, _PRIMARY + _table_hdu(nfields=999, tform="L", rows=1))
    assert _opens(tmp_path, _PRIMARY + _table_hdu(nfields=1000, tform="L", rows=1)) is None
    assert _opens(tmp_path, _PRIMARY + _table_hdu(nfields=0, rows=0)) is None
    assert _opens(tmp_path, _PRIMARY + _table_hdu(
        edit=lambda c: [x if not x.startswith("TFIELDS") else _card("TFIELDS", "1")
                        for x in c])) is None


def test_text_columns_of_one_character_and_more(tmp_path):
    got = _opens(tmp_path, _PRIMARY + _table_hdu(tform="1A"))
    assert got[1][2] == [("c1", "S1")]
    got = _opens(tmp_path, _PRIMARY + _table_hdu(tform="3A", nfields=2))
    assert got[1][2] == [("c1", "S3"), ("c2", "S3")]


@pytest.mark.parametrize("bitpix", [8, 16, 32, 64, -32, -64])
def test_images_of_every_bitpix_are_skipped_by_their_size(tmp_path, bitpix):
    n = 41 * 37                 # over one block for every BITPIX
    image = _PRIMARY + _image_hdu([_card("BITPIX", bitpix), _card("NAXIS", 2),
                                   _card("NAXIS1", 41), _card("NAXIS2", 37), _card("PCOUNT", 0),
                                   _card("GCOUNT", 1), _card("EXTNAME", "IMG")],
                                  bytes(n * abs(bitpix) // 8)) + _table_hdu()
    got = _opens(tmp_path, image)
    assert [g[:2] for g in got] == _fitsio_view(tmp_path / "r.fits")
    assert got[2][2] == [("c1", ">f8")] and got[2][3] == 2


@pytest.mark.parametrize("cards, taken", [
    ([_card("BITPIX", 12), _card("NAXIS", 0)], False),
    ([_card("BITPIX", 8), _card("NAXIS", "0")], False),
    ([_card("BITPIX", 8), _card("NAXIS", -1)], False),
    ([_card("BITPIX", 8), _card("NAXIS", 1000)], False),
    ([_card("BITPIX", 8), _card("NAXIS", 1), _card("NAXIS1", 0)], True),
    ([_card("BITPIX", 8), _card("NAXIS", 1), _card("NAXIS1", -2)], False),
    ([_card("BITPIX", 8), _card("NAXIS", 2), _card("NAXIS1", 1)], False),     # NAXIS2 missing
    ([_card("BITPIX", 8), _card("NAXIS", 0), _card("PCOUNT", 0), _card("GCOUNT", 1)], True),
    ([_card("BITPIX", 8), _card("NAXIS", 0), _card("PCOUNT", 1)], False),
    ([_card("BITPIX", 8), _card("NAXIS", 0), _card("GCOUNT", 2)], False),
    ([_card("BITPIX", 8), _card("NAXIS", 0), _card("PCOUNT", "0")], False),
    ([_card("BITPIX", 8), _card("NAXIS", 0), _card("GCOUNT", True)], False),
    ([_card("BITPIX", 8), _card("NAXIS", 0), _card("GROUPS", False)], False),
    ([_card("BITPIX", 8), _card("NAXIS", 0), _card("BITPIX", 16)], True),     # the first counts
])
def test_primary_header_rules(tmp_path, cards, taken):
    got = _opens(tmp_path, _image_hdu(cards, primary=True) + _table_hdu())
    assert (got is not None) == taken


def test_a_primary_of_999_axes_and_headers_ending_at_a_block_end(tmp_path):
    cards = [_card("BITPIX", 8), _card("NAXIS", 999)] + [_card(f"NAXIS{i}", 1)
                                                          for i in range(1, 1000)]
    assert _opens(tmp_path, _image_hdu(cards, b"\x01", primary=True) + _table_hdu())
    cards = [_card("BITPIX", 8), _card("NAXIS", 0)] + [_card(f"K{i}", i) for i in range(32)]
    image = _image_hdu(cards, primary=True)          # 35 cards and END: one block exactly
    assert len(image) == 2880
    assert _opens(tmp_path, image + _table_hdu())
    cards = [_card("BITPIX", 8), _card("NAXIS", 0)] + [_card(f"K{i}", i) for i in range(33)]
    assert len(_image_hdu(cards, primary=True)) == 5760
    assert _opens(tmp_path, _image_hdu(cards, primary=True) + _table_hdu())


@pytest.mark.parametrize("first", [
    [_card("XTENSION", "TABLE")], [_card("XTENSION", "A3DTABLE")], [_card("XTENSION", 1)],
    [_card("BITPIX", 8), _card("XTENSION", "IMAGE")],
])
def test_extensions_other_than_image_and_bintable_are_fitsios(tmp_path, first):
    ext = _header_bytes(first + [_card("BITPIX", 8), _card("NAXIS", 0), _card("PCOUNT", 0),
                                 _card("GCOUNT", 1)])
    assert _opens(tmp_path, _PRIMARY + ext) is None


@pytest.mark.parametrize("cards, taken", [
    ([_card("PCOUNT", 0), _card("GCOUNT", 1)], True),
    ([_card("GCOUNT", 1)], False), ([_card("PCOUNT", 0)], False),
    ([_card("PCOUNT", 1), _card("GCOUNT", 1)], False),
    ([_card("PCOUNT", 0), _card("GCOUNT", 0)], False),
])
def test_image_extension_pcount_and_gcount(tmp_path, cards, taken):
    ext = _image_hdu([_card("BITPIX", 8), _card("NAXIS", 0)] + cards)
    assert (_opens(tmp_path, _PRIMARY + ext) is not None) == taken


@pytest.mark.parametrize("names, want", [
    ([("EXTNAME", "A"), ("HDUNAME", "B")], "A"), ([("HDUNAME", "B"), ("EXTNAME", "A")], "A"),
    ([("HDUNAME", "B")], "B"), ([], ""), ([("EXTNAME", "  C")], "C"), ([("EXTNAME", "  ")], ""),
    ([("EXTNAME", "D E ")], "D E"),
])
def test_the_hdu_name_is_fitsios(tmp_path, names, want):
    got = _opens(tmp_path, _PRIMARY + _table_hdu([_card(k, v) for k, v in names]))
    assert got[1][1] == want == _fitsio_view(tmp_path / "r.fits")[1][1]
    assert [g[0] for g in got] == ["IMAGE_HDU", "BINARY_TBL"]


def test_files_that_are_not_fits_or_not_there_are_declined_and_closed(tmp_path, monkeypatch):
    opened = []
    real_open = open

    def tracking(*a, **k):
        f = real_open(*a, **k)
        opened.append(f)
        return f

    monkeypatch.setattr(tableio, "open", tracking, raising=False)
    assert tableio.PlainFits.open(tmp_path / "missing.fits") is None
    (tmp_path / "empty.fits").write_bytes(b"")
    assert tableio.PlainFits.open(tmp_path / "empty.fits") is None
    (tmp_path / "t.fits").write_bytes(_PRIMARY + _table_hdu() + b"x")
    assert tableio.PlainFits.open(tmp_path / "t.fits") is None
    assert len(opened) == 2 and all(f.closed for f in opened)
    (tmp_path / "t.fits").write_bytes(_PRIMARY + _table_hdu())
    with tableio.PlainFits.open(tmp_path / "t.fits") as fh:
        assert len(fh) == 2 and [h.get_exttype() for h in fh] == ["IMAGE_HDU", "BINARY_TBL"]
        assert fh[-1].get_colnames() == ["c1"] and not opened[-1].closed
    assert opened[-1].closed


def test_open_fits_is_numpys_for_a_plain_file_else_fitsios(tmp_path, monkeypatch):
    import fitsio

    path = tmp_path / "t.fits"
    path.write_bytes(_PRIMARY + _table_hdu())
    with tableio.open_fits(path) as fh:
        assert isinstance(fh, tableio.PlainFits)
    path.write_bytes(_PRIMARY + _table_hdu([_card("TSCAL1", 2.0)]))
    with tableio.open_fits(path) as fh:
        assert isinstance(fh, fitsio.FITS)
    path.write_bytes(_PRIMARY + _table_hdu())
    monkeypatch.setattr(tableio, "_PLAIN_READ", False)
    with tableio.open_fits(path) as fh:
        assert isinstance(fh, fitsio.FITS)


def _hierarch(key, value):
    text = f"'{value}'" if isinstance(value, str) else str(value)
    return f"HIERARCH {key} = {text}".ljust(80)


def test_axis_and_field_counts_over_999_are_declined_even_when_hierarch_names_them(tmp_path):
    """The standard's limit (999: NAXISn and TTYPEn have eight characters at most); a 1000th
    one only through HIERARCH cards, which cfitsio does not read as such."""
    cards = ([_card("BITPIX", 8), _card("NAXIS", 1000)]
             + [_card(f"NAXIS{i}", 1) for i in range(1, 1000)] + [_hierarch("NAXIS1000", 1)])
    assert _opens(tmp_path, _image_hdu(cards, b"\x01", primary=True) + _table_hdu()) is None
    def thousand(cards):
        return [_card("TFIELDS", 1000) if c.startswith("TFIELDS ") else
                _card("NAXIS1", 1000) if c.startswith("NAXIS1 ") else c for c in cards]

    table = _table_hdu([_hierarch("TTYPE1000", "c1000"), _hierarch("TFORM1000", "L")],
                       nfields=999, tform="L", rows=1, edit=thousand)   # 1,000 bytes: 1 block
    assert _opens(tmp_path, _PRIMARY + table) is None
    # TFIELDS 1000 with rows of the first 999 columns' width: declined all the same
    assert _opens(tmp_path, _PRIMARY + table.replace(b"NAXIS1  =                 1000",
                                                     b"NAXIS1  =                  999")) is None
    assert _opens(tmp_path, _PRIMARY + table.replace(b"TFIELDS =                 1000",
                                                     b"TFIELDS =                  999")
                  .replace(b"NAXIS1  =                 1000", b"NAXIS1  =                  999"))
    # a negative NAXIS followed by a block that would fit a one-element image
    cards = [_card("BITPIX", 8), _card("NAXIS", -1)]
    assert _opens(tmp_path, _image_hdu(cards, b"\x01", primary=True) + _table_hdu()) is None


def test_an_end_inside_a_card_is_not_the_end_card(tmp_path):
    """END is a card of its own: 'END' and blanks further into a card (a HISTORY text, then a
    blank card) do not end the header."""
    cards = [_card("BITPIX", 8), _card("NAXIS", 0), "HISTORY END".ljust(80), " " * 80]
    cards += [_card(f"K{i}", i) for i in range(40)]        # the END card in the second block
    image = _image_hdu(cards, primary=True)
    assert len(image) == 5760 and image.find(b"END" + b" " * 77) < 2880
    got = _opens(tmp_path, image + _table_hdu())
    assert [g[0] for g in got] == _fitsio_view_types(tmp_path / "r.fits")


def _fitsio_view_types(path):
    return [t for t, _ in _fitsio_view(path)]


def test_column_masks_of_nulls_blanks_and_nans(tmp_path):
    """ColumnTable's masks (table[name] and data_mask alike): NaN floats, TNULL integers and
    blank text (empty or all blanks; a one-character text is not blank); integers without a
    TNULL, logicals and empty columns have none."""
    path = tmp_path / "m.fits"
    cols = [fits.Column("s", "2A", array=np.array(["", "  ", "a", "ab"])),
            fits.Column("f", "D", array=np.array([1.0, np.nan, 2.0, np.nan])),
            fits.Column("i", "J", array=np.array([5, -1, 7, -1]), null=-1),
            fits.Column("k", "J", array=np.array([5, -1, 7, -1])),
            fits.Column("b", "L", array=np.array([True, False, True, False]))]
    fits.BinTableHDU.from_columns(cols, name="T").writeto(path)
    table = tableio.read_table(str(path), param="f").table
    assert isinstance(table, tableio.ColumnTable)
    want = {"s": [1, 1, 0, 0], "f": [0, 1, 0, 1], "i": [0, 1, 0, 1], "k": [0, 0, 0, 0],
            "b": [0, 0, 0, 0]}
    for name, mask in want.items():
        data, got = table.data_mask(name)
        assert got.dtype == bool and got.tolist() == [bool(m) for m in mask], name
        assert np.ma.getmaskarray(table[name]).tolist() == got.tolist(), name
        assert np.ma.getdata(table[name]).tobytes() == data.tobytes(), name
    empty = tableio.ColumnTable({"s": np.array([], dtype="U3"), "x": np.zeros((0, 2), "U2")})
    for name, shape in (("s", (0,)), ("x", (0, 2))):
        data, mask = empty.data_mask(name)
        assert mask.dtype == bool and mask.shape == shape


def test_the_fast_reader_leaves_scaled_bit_variable_and_ascii_tables_to_astropy(tmp_path):
    """_read_with_fitsio (called directly: read_table's fallback would hide a wrong answer)
    returns None -- astropy's turn -- for scaled (TSCALn, TZEROn), bit (X) and variable-length
    (P) columns, an ASCII table found first, a block beyond the last HDU, a name not there,
    and a file without a table; it reads the plain table of the same files."""
    n = 3
    plain = fits.Column("x", "D", array=np.arange(n, dtype=float))
    odd = {"tscal": fits.Column("s", "I", array=np.arange(n, dtype=np.int16)),    # TSCAL2 below
           "tzero": fits.Column("u", "J", array=np.arange(n, dtype=np.int32)),     # TZERO2 below
           "bits": fits.Column("b", "8X", array=np.zeros((n, 8), dtype=bool)),
           "vla": fits.Column("v", "PJ()", array=np.array([[1], [2, 3], [4]], dtype=object))}
    for kind, col in odd.items():
        path = tmp_path / f"{kind}.fits"
        fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns([plain, col], name="ODD"),
                      fits.BinTableHDU.from_columns([plain], name="OK")]).writeto(path)
        if kind in ("tscal", "tzero"):
            fits.setval(path, f"{kind.upper()}2", value=2.0 if kind == "tscal" else 2**31, ext=1)
        for mode in (True, False):
            tableio._PLAIN_READ = mode
            try:
                assert tableio._read_with_fitsio(path, None) is None, kind
                assert tableio._read_with_fitsio(path, "ODD") is None, kind
                assert tableio._read_with_fitsio(path, 4) is None, kind      # beyond the last
                assert tableio._read_with_fitsio(path, 9) is None, kind
                assert tableio._read_with_fitsio(path, "NOPE") is None, kind
                table, _, label = tableio._read_with_fitsio(path, "OK")
                assert label == f"{path}[OK]" and table.colnames == ["x"], kind
            finally:
                tableio._PLAIN_READ = True
    path = tmp_path / "ascii.fits"
    fits.HDUList([fits.PrimaryHDU(),
                  fits.TableHDU.from_columns([fits.Column("a", "E10.4", array=np.ones(n))]),
                  fits.BinTableHDU.from_columns([plain], name="OK")]).writeto(path)
    assert tableio._read_with_fitsio(path, None) is None        # the first table is ASCII
    assert tableio._read_with_fitsio(path, 3)[2] == f"{path}[OK]"
    path = tmp_path / "image.fits"
    fits.HDUList([fits.PrimaryHDU(np.zeros((2, 2)))]).writeto(path)
    for mode in (True, False):
        tableio._PLAIN_READ = mode
        try:
            assert tableio._read_with_fitsio(path, None) is None      # no table HDU at all
            assert tableio._read_with_fitsio(path, 1) is None         # not a table
        finally:
            tableio._PLAIN_READ = True


def test_text_columns_cast_as_numpys_cast_of_bytes_to_str():
    """_ascii_text gives numpy's astype(str) of a text column of the rows: every ASCII byte
    (NULs and blanks inside and at the end, DEL), no rows, widths 1..24; a byte beyond ASCII
    (0x80 and 0xff) is refused as numpy refuses it (the reader then declines the file)."""
    rng = np.random.default_rng(5)
    for width in (1, 2, 7, 24):
        for n in (0, 1, 33):
            raw = rng.integers(0, 128, size=(n, width), dtype=np.uint8)
            raw[rng.random((n, width)) < 0.3] = 0
            raw[rng.random((n, width)) < 0.2] = ord(" ")
            raw[rng.random((n, width)) < 0.1] = 127
            rows = np.zeros(n, dtype=[("a", ">f8"), ("s", f"S{width}"), ("b", ">i2")])
            rows["s"] = [bytes(r) for r in raw]
            got = tableio._ascii_text(rows["s"], f"U{width}")
            want = rows["s"].astype(f"U{width}")
            assert got.dtype == want.dtype and got.shape == want.shape
            assert got.tobytes() == want.tobytes() and got.tolist() == want.tolist()
    for byte in (b"\x80", b"\xff"):
        bad = np.array([b"ok", b"a" + byte], dtype="S2")
        with pytest.raises(UnicodeDecodeError):
            tableio._ascii_text(bad, "U2")


@pytest.mark.parametrize("cards, ends", [
    (["END"], True),
    ([" " * 80] * 35 + ["END"], True),
    ([" END"] + [" " * 80] * 2, False),            # END and 77 blanks from column 2 on
    (["HISTORY END", " " * 80], False),
    (["HISTORY END", " " * 80, "END"], True),      # the first one found is not a card
    (["HISTORY END", " " * 80, "END", " END"], True),   # the first card one, not the last one
    (["END", " END"], True),
    (["ENDX"], False),
    (["END     X"], False),
])
def test_the_end_card_is_found_only_at_a_card_start(cards, ends):
    block = "".join(c.ljust(80) for c in cards).ljust(2880).encode()
    assert len(block) == 2880 and tableio._has_end(block) is ends



def test_read_table_refuses_what_is_not_a_file_and_opens_a_plain_file_once(tmp_path, monkeypatch):
    """A name that is not there (also through a file), a folder: read_table's one-line errors.
    A plain FITS file is read through the PlainFits that checked it (one open, no is_fits_file);
    a FITS file of another layout and a text table as before."""
    from stk_astrometry.errors import InputError

    plain = tmp_path / "t.fits"
    plain.write_bytes(_PRIMARY + _table_hdu())
    for missing in (tmp_path / "nope.fits", plain / "x.fits"):
        with pytest.raises(InputError, match=rf"^f={missing}: file {missing} does not exist$"):
            tableio.read_table(str(missing), param="f")
    with pytest.raises(InputError, match=rf"^f={tmp_path}: {tmp_path} is a directory, not a table$"):
        tableio.read_table(str(tmp_path), param="f")
    with pytest.raises(InputError, match=r"\.fits: file .* does not exist$"):
        tableio.read_table(f"{tmp_path}/no\0pe.fits", param="f")
    opened = []
    real_open = tableio.PlainFits.open.__func__

    def counted(cls, path):
        fh = real_open(cls, path)
        opened.append(fh)
        return fh

    monkeypatch.setattr(tableio.PlainFits, "open", classmethod(counted))
    monkeypatch.setattr(tableio, "is_fits_file", lambda path: pytest.fail("checked again"))
    tin = tableio.read_table(str(plain), param="f")
    assert isinstance(tin.table, tableio.ColumnTable) and tin.table.colnames == ["c1"]
    assert len(opened) == 1 and opened[0].fh.closed
    monkeypatch.undo()
    scaled = tmp_path / "s.fits"
    scaled.write_bytes(_PRIMARY + _table_hdu([_card("TSCAL1", 2.0)]))
    assert tableio.PlainFits.open(scaled) is None
    assert tableio.read_table(str(scaled), param="f").table.colnames == ["c1"]
    (tmp_path / "t.csv").write_text("a,b\n1,2\n")
    assert tableio.read_table(str(tmp_path / "t.csv"), param="f").table.colnames == ["a", "b"]
    monkeypatch.setattr(tableio, "_PLAIN_READ", False)
    monkeypatch.setattr(tableio.PlainFits, "open", lambda path: pytest.fail("numpy reader off"))
    assert tableio.read_table(str(plain), param="f").table.colnames == ["c1"]
    monkeypatch.setattr(tableio, "_PLAIN_READ", True)
    monkeypatch.setattr(tableio, "_FAST_READ", False)        # astropy's reader alone
    tin = tableio.read_table(str(plain), param="f")
    assert tin.table.colnames == ["c1"] and not isinstance(tin.table, tableio.ColumnTable)


def test_a_header_astropy_parses_is_read_by_its_first_values_too(tmp_path):
    """A header with a card fitscards leaves to astropy (a CONTINUE long string) is read by the
    same rules as fitscards' headers: each name's first card, names in upper case, in order."""
    from stk_astrometry import fitscards

    long = ["LONGSTR = 'abc&'".ljust(80), "CONTINUE  'def'".ljust(80)]
    primary = _image_hdu([_card("BITPIX", 8), _card("NAXIS", 0)] + long, primary=True)
    table = _table_hdu(long + [_card("EXTNAME", "FIRST"), _card("EXTNAME", "SECOND")])
    got = _opens(tmp_path, primary + table)
    assert got is not None and [g[0] for g in got] == ["IMAGE_HDU", "BINARY_TBL"]
    assert got[1][1] == "FIRST" == _fitsio_view(tmp_path / "r.fits")[1][1]
    assert got[1][2] == [("c1", ">f8")] and got[1][3] == 2
    with tableio.PlainFits.open(tmp_path / "r.fits") as fh:
        assert not any(isinstance(h.header, fitscards.Header) for h in fh)    # astropy's
    assert check_same(tmp_path / "r.fits")


def test_read_table_names_the_block_and_parameter_in_astropys_errors(tmp_path):
    """What the fast reader declines goes to astropy's reader, whose errors name what the user
    gave (``param=spec``): a FITS file without a table, a block that is not there or not a
    table, a file that is not FITS but looks like it."""
    from stk_astrometry.errors import FormatError, InputError

    image = tmp_path / "i.fits"
    image.write_bytes(_PRIMARY)
    with pytest.raises(FormatError, match=rf"^det={image}: {image} has no table HDU$"):
        tableio.read_table(str(image), param="det")
    both = tmp_path / "t.fits"
    both.write_bytes(_PRIMARY + _table_hdu())
    with pytest.raises(InputError, match=rf"^det={both}\[3\]: {both} has 2 HDUs, no block \[3\]$"):
        tableio.read_table(f"{both}[3]", param="det")
    with pytest.raises(InputError, match=rf"^gaia={both}\[NOPE\]: {both} has no HDU named NOPE "):
        tableio.read_table(f"{both}[NOPE]", param="gaia")
    with pytest.raises(FormatError, match=rf"^det={both}\[1\]: {both}\[1\] is not a table$"):
        tableio.read_table(f"{both}[1]", param="det")
    broken = tmp_path / "b.fits"
    broken.write_bytes(b"SIMPLE  =" + b"x" * 100)
    with pytest.raises(InputError, match=rf"^det={broken}: cannot read FITS file {broken}: "):
        tableio.read_table(str(broken), param="det")


def test_read_table_reads_text_tables_by_their_suffix_or_as_ascii(tmp_path):
    """A text table: astropy's reader for its suffix (SkyServer CSV with its '#Table1' line),
    plain ASCII for a suffix astropy does not know; labelled by the path."""
    txt = tmp_path / "t.txt"
    txt.write_text("a b\n1 2\n3 4\n")
    tin = tableio.read_table(str(txt), param="f")
    assert tin.hdu == str(txt) and tin.table.colnames == ["a", "b"]
    assert list(tin.table["a"]) == [1, 3] and tin.header == {}
    csv = tmp_path / "t.csv"
    csv.write_text("#Table1\nA,b\n1,2\n")
    tin = tableio.read_table(str(csv), param="f")
    assert tin.hdu == str(csv) and tin.table.colnames == ["a", "b"] and list(tin.table["b"]) == [2]
    assert tin.original_names == {"a": "A", "b": "b"}
    assert tin.path == csv and tin.spec == str(csv) and tin.ambiguous == {}
    one = tmp_path / "one.txt"
    one.write_text("a\n1\n")
    assert tableio.read_table(one, param="f").table.colnames == ["a"]


def test_columns_differing_only_in_case_are_left_out_and_logged_by_label(tmp_path, caplog):
    import logging

    twins = tmp_path / "twins.csv"
    twins.write_text("b,B,c\n1,2,3\n")
    with caplog.at_level(logging.DEBUG, logger="stk_astrometry.tableio"):
        tin = tableio.read_table(str(twins), param="f")
    assert tin.table.colnames == ["c"] and tin.ambiguous == {"b": ("b", "B")}
    assert f"{twins}: columns 'b', 'B' differ only in case; left out" in caplog.text


def test_read_table_says_why_a_text_file_is_not_a_table(tmp_path, monkeypatch):
    """astropy's first line of its message, 'the file is empty' for an empty file, the
    exception's name for a message without text."""
    from astropy.table import Table

    from stk_astrometry.errors import InputError

    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2,3\n")
    with pytest.raises(InputError, match=rf"^f={bad}: {bad} is neither FITS nor a table astropy "
                                         r"can read \(Number of header columns \(2\) inconsistent "
                                         r"with data columns in data line 0\)$"):
        tableio.read_table(str(bad), param="f")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(InputError, match=r"can read \(the file is empty\)$"):
        tableio.read_table(str(empty), param="f")

    def silent(*args, **kwargs):
        raise ValueError("")

    monkeypatch.setattr(Table, "read", silent)
    with pytest.raises(InputError, match=r"can read \(ValueError\)$"):
        tableio.read_table(str(bad), param="f")


def test_require_columns_names_hits_aliases_clashes_and_what_it_tried():
    # require_columns (issue 11: plain loops): the first candidate present wins; an ambiguous
    # name (columns differing only in case, left out) is an error only when it comes before
    # the hit; a missing column's message lists the aliases tried
    from types import SimpleNamespace

    from stk_astrometry.errors import CatalogError

    table = tableio.ColumnTable({"ra": np.zeros(2), "dec_deg": np.zeros(2), "x": np.zeros(2)})
    tin = SimpleNamespace(table=table, hdu="t.fits[T]")           # no .ambiguous at all
    assert tableio.require_columns(tin, ["ra", "dec"], aliases={"dec": ["DEJ2000", "DEC_DEG"]},
                                   optional=["pm"]) == {"ra": "ra", "dec": "dec_deg", "pm": None}
    with pytest.raises(CatalogError, match=r"^t\.fits\[T\]: required column 'pmra' is missing$"):
        tableio.require_columns(tin, ["pmra"])
    with pytest.raises(CatalogError, match=r"required column 'pmra' is missing \(also tried pm_ra\)$"):
        tableio.require_columns(tin, ["pmra"], aliases={"pmra": ["PM_RA"]})
    with pytest.raises(CatalogError, match=r"missing \(also tried a, b\)$"):
        tableio.require_columns(tin, ["pmra"], aliases={"pmra": ["a", "b"]})
    tin.ambiguous = {"dej2000": ("dej2000", "DEJ2000"), "y": ("y", "Y")}
    # the hit before the clash: taken
    assert tableio.require_columns(tin, ["x"], aliases={"x": ["y"]}) == {"x": "x"}
    # the clash before the hit, or no hit: the error
    with pytest.raises(CatalogError, match=r"column 'dec' is ambiguous: 'dej2000' and 'DEJ2000'"):
        tableio.require_columns(tin, ["dec"], aliases={"dec": ["dej2000", "dec_deg"]})
    with pytest.raises(CatalogError, match=r"column 'q' is ambiguous: 'y' and 'Y'"):
        tableio.require_columns(tin, ["ra"], aliases={"q": ["y"]}, optional=["q"])


def test_plain_columns_are_remembered_by_layout_and_refusals_raised_each_time():
    """_plain_columns (issue 11): the columns of TTYPEn/TFORMn values packed to NAXIS1,
    remembered -- PlainFits._columns hands each HDU its own list -- and a refused layout raises
    every time it is asked."""
    from stk_astrometry.tableio import PlainFits, _np_dtype, _plain_columns

    names, forms = ("ra", "id", "flag", "name", "b"), ("D", " J ", "L", "12A", "1B")
    want = (("ra", ">f8"), ("id", ">i4"), ("flag", "?"), ("name", "S12"), ("b", "u1"))
    assert _plain_columns(names, forms, 26) == want
    assert _plain_columns(names, forms, 26) is _plain_columns(names, forms, 26)
    assert _plain_columns.cache_info().currsize == 1
    for bad in [(names, forms, 25), (names, forms, 27), (("ra", "ra"), ("D", "D"), 16),
                (("ra", " x"), ("D", "D"), 16), (("ra", ""), ("D", "D"), 16),
                (("ra", 1), ("D", "D"), 16), (("ra", "x"), ("D", None), 16),
                (("ra", "x"), ("D", "2D"), 24), (("ra", "x"), ("D", "0A"), 8),
                (("ra", "x"), ("D", "1PJ"), 16), (("a",), ("J",), 4.5)]:
        for _ in range(2):
            with pytest.raises(ValueError):
                _plain_columns(*bad)
    assert _plain_columns.cache_info().currsize == 1
    kw = {"TFIELDS": 2, "TTYPE1": "a", "TFORM1": "J", "TTYPE2": "b", "TFORM2": "3A",
          "TTYPE3": "c", "TFORM3": "D"}
    first, rows = PlainFits._columns(kw, 8, [7, 5])
    assert first == [("a", ">i4"), ("b", "S3")] and rows == 5
    first.append(("x", "u1"))      # each HDU its own list
    assert PlainFits._columns(kw, 8, [7, 5])[0] == [("a", ">i4"), ("b", "S3")]
    kw["TFIELDS"] = 3
    assert PlainFits._columns(kw, 8, [15, 0]) == ([("a", ">i4"), ("b", "S3"), ("c", ">f8")], 0)
    # the rows' dtype: made once a layout, the same for a list or a tuple of the columns
    dt = _np_dtype([("a", ">i4"), ("b", "S3")])
    assert dt == np.dtype([("a", ">i4"), ("b", "S3")]) and dt.itemsize == 7
    assert _np_dtype((("a", ">i4"), ("b", "S3"))) is dt
    assert _np_dtype([("a", ">i4")]) == np.dtype([("a", ">i4")])


# ------------------------------------------------------- raw_header of a fitsio HDU (issue 11)

def _header_cards(header):
    """``(keyword, value, comment)`` of every card of an astropy or fitscards header."""
    return [(c.keyword, c.value, c.comment) for c in header.cards]


@pytest.mark.parametrize("gz", [False, True])
def test_raw_header_of_a_fitsio_hdu_is_every_card_of_that_hdu_in_the_file(tmp_path, gz):
    """raw_header of an HDU fitsio opened (a layout PlainFits leaves to it: a vector column)
    is that HDU's header as it is in the file -- each HDU's own, found at its offset after a
    data unit of several blocks, with the empty string and the CONTINUE long string fitsio's
    records drop or cut -- from the file itself or from its gzip compression (as fitsio reads
    it), and each byte beyond ASCII read as U+FFFD (as ASCII, not UTF-8), not an error."""
    import gzip

    import fitsio

    primary = fits.PrimaryHDU(np.arange(3000, dtype=">i4").reshape(30, 100))   # 5 data blocks
    primary.header["EMPTY"] = ("", "an empty string")
    primary.header["LONGSTR"] = "x" * 100
    table = fits.BinTableHDU.from_columns(
        [fits.Column(name="v", format="2D", array=np.arange(8.0).reshape(4, 2))], name="CAT")
    table.header["NOTE"] = ("plain", "caf_ comment")
    plain = tmp_path / "v.fits"
    fits.HDUList([primary, table]).writeto(plain)
    # a byte beyond ASCII, and two that are one character in UTF-8 (read as ASCII: two)
    image = plain.read_bytes().replace(b"caf_ comment", b"ca\xc3\xa9 comm\xe9nt")
    assert image.count(b"ca\xc3\xa9 comm\xe9nt") == 1
    path = tmp_path / ("v.fits.gz" if gz else "w.fits")
    path.write_bytes(gzip.compress(image) if gz else image)
    assert tableio.PlainFits.open(path) is None            # fitsio's, not the numpy reader's
    expected = [fits.Header.fromstring(image[start:image.index(b"END" + b" " * 77, start) + 80]
                                       .decode("ascii", errors="replace"))
                for start in (0, 2880 * 6)]
    with fitsio.FITS(str(path)) as fh:
        got = [tableio.raw_header(path, fh[i]) for i in range(2)]
    assert _header_cards(got[0]) == _header_cards(expected[0])
    assert _header_cards(got[1]) == _header_cards(expected[1])
    assert got[0]["EMPTY"] == "" and got[0]["LONGSTR"] == "x" * 100
    assert got[1]["EXTNAME"] == "CAT" and got[1].comments["NOTE"] == "ca\ufffd\ufffd comm\ufffdnt"
    assert got[1]["NAXIS2"] == 4 and "SIMPLE" not in got[1]
