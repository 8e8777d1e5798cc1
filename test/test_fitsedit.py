"""fitsedit: the durability of every write, pinned step by step.

Each test records the system calls that make a write durable (``os.fsync``,
``os.replace``, ``os.pwrite``, ``os.unlink``) with monkeypatch and asserts their
order, so that removing or reordering one step (an fsync of the temporary file
before the rename, of the folder after it, of the journal before the patch, of
the patched file before the journal goes, of a rollback) fails a test.  The
journal's own checks (size, corrupt, truncated, orphan) and the copy fallback
without ``os.copy_file_range`` are here too, and the header pieces: checksums, header
serialisation, the FITS scan.
"""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from stk_astrometry import fitsedit, fitsutil, synthprod
from stk_astrometry.errors import ProductError

BLOCK = fitsedit.BLOCK


def _fits_bytes(nblocks=3):
    head = b"SIMPLE  =                    T".ljust(80) + b"BITPIX  =                    8".ljust(80)
    head += b"NAXIS   =                    0".ljust(80) + b"END".ljust(80)
    return head.ljust(BLOCK, b" ") + bytes(range(256)) * (BLOCK * (nblocks - 1) // 256) \
        + b"\0" * ((BLOCK * (nblocks - 1)) % 256)


class Recorder:
    """Record durability-relevant calls as (name, path) in order, then do them."""

    def __init__(self, monkeypatch):
        self.calls = []
        real = {n: getattr(os, n) for n in ("fsync", "replace", "pwrite", "unlink")}

        def path_of(fd):
            try:
                return os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                return f"fd{fd}"

        def fsync(fd):
            self.calls.append(("fsync", path_of(fd)))
            return real["fsync"](fd)

        def replace(a, b, **kw):
            self.calls.append(("replace", str(Path(a).resolve()), str(Path(b).resolve())))
            return real["replace"](a, b, **kw)

        def pwrite(fd, data, offset):
            self.calls.append(("pwrite", path_of(fd)))
            return real["pwrite"](fd, data, offset)

        def unlink(p, **kw):
            self.calls.append(("unlink", str(Path(p).resolve())))
            return real["unlink"](p, **kw)

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "replace", replace)
        monkeypatch.setattr(os, "pwrite", pwrite)
        monkeypatch.setattr(os, "unlink", unlink)

    def index(self, pred, start=0):
        for i in range(start, len(self.calls)):
            if pred(self.calls[i]):
                return i
        raise AssertionError(f"no call matching after #{start}: {self.calls}")


def _is(name, path=None, where=None):
    def pred(c):
        if c[0] != name:
            return False
        if path is not None and c[1] != str(path):
            return False
        return where is None or where(c)
    return pred


# --------------------------------------------------------------------------- temp + rename

def test_rewrite_fsyncs_the_temp_then_renames_then_fsyncs_the_folder(tmp_path, monkeypatch):
    src = tmp_path / "a.fits"
    src.write_bytes(_fits_bytes())
    rec = Recorder(monkeypatch)
    fitsedit.rewrite_file(src, src, [(0, BLOCK), b"X" * BLOCK, (2 * BLOCK, BLOCK)])
    i_ren = rec.index(_is("replace", where=lambda c: c[2] == str(src)))
    tmp = rec.calls[i_ren][1]
    i_sync = rec.index(_is("fsync", tmp))
    assert i_sync < i_ren, rec.calls                       # the data is on disk before
    rec.index(_is("fsync", str(tmp_path)), i_ren)          # the rename is on disk after
    assert src.read_bytes()[BLOCK:2 * BLOCK] == b"X" * BLOCK


def test_fsync_directory_fsyncs_the_folder(tmp_path, monkeypatch):
    rec = Recorder(monkeypatch)
    fitsutil.fsync_directory(tmp_path)
    assert rec.calls == [("fsync", str(tmp_path))]


def test_copy_then_commit_fsyncs_before_the_rename(tmp_path, monkeypatch):
    src = tmp_path / "a.fits"
    src.write_bytes(_fits_bytes())
    out = tmp_path / "out"
    out.mkdir()
    rec = Recorder(monkeypatch)
    tmp = fitsedit.copy_file(src, out / "a.fits")
    fitsedit.commit_temp(tmp, out / "a.fits")
    i_ren = rec.index(_is("replace", where=lambda c: c[1] == str(tmp.resolve())))
    assert rec.index(_is("fsync", str(tmp.resolve()))) < i_ren
    rec.index(_is("fsync", str(out)), i_ren)
    assert (out / "a.fits").read_bytes() == src.read_bytes()


# --------------------------------------------------------------------------- journal

def _patches(path, offset=100, n=40):
    raw = Path(path).read_bytes()
    return [fitsedit.Patch(offset, raw[offset:offset + n], b"Z" * n),
            fitsedit.Patch(BLOCK + 7, raw[BLOCK + 7:BLOCK + 17], b"Y" * 10)]


def test_journal_is_durable_before_the_patch_and_removed_after_the_fsync(tmp_path,
                                                                         monkeypatch):
    path = tmp_path / "a.fits"
    path.write_bytes(_fits_bytes())
    jpath = fitsedit.journal_path(path)
    patches = _patches(path)
    rec = Recorder(monkeypatch)
    fitsedit.patch_in_place(path, patches, journal=True)
    # the journal: its temporary file fsynced, renamed into place, the folder fsynced...
    i_jren = rec.index(_is("replace", where=lambda c: c[2] == str(jpath)))
    assert rec.index(_is("fsync", rec.calls[i_jren][1])) < i_jren
    i_jdir = rec.index(_is("fsync", str(tmp_path)), i_jren)
    # ...all before the first byte of the file is patched
    i_patch = rec.index(_is("pwrite", str(path)))
    assert i_jdir < i_patch, rec.calls
    # the file fsynced after its patches, and only then the journal removed (and that made
    # durable by a folder fsync)
    i_fsync = rec.index(_is("fsync", str(path)), i_patch)
    i_unlink = rec.index(_is("unlink", str(jpath)))
    assert i_fsync < i_unlink, rec.calls
    rec.index(_is("fsync", str(tmp_path)), i_unlink)
    assert not jpath.exists()
    assert path.read_bytes()[100:140] == b"Z" * 40


def _interrupted(path, patches, *, written):
    """A journal in place and the first ``written`` patches written: a run killed there."""
    fitsedit._write_journal(path, patches)
    fd = os.open(path, os.O_RDWR)
    try:
        fitsedit._write_patches(fd, patches[:written])
    finally:
        os.close(fd)


def test_rollback_is_fsynced_before_the_journal_goes(tmp_path, monkeypatch):
    path = tmp_path / "a.fits"
    path.write_bytes(_fits_bytes())
    old = path.read_bytes()
    patches = _patches(path)
    _interrupted(path, patches, written=1)
    jpath = fitsedit.journal_path(path)
    rec = Recorder(monkeypatch)
    assert "rolled back" in fitsedit.recover(path)
    i_write = rec.index(_is("pwrite", str(path)))
    i_fsync = rec.index(_is("fsync", str(path)), i_write)
    i_unlink = rec.index(_is("unlink", str(jpath)))
    assert i_fsync < i_unlink, rec.calls
    rec.index(_is("fsync", str(tmp_path)), i_unlink)
    assert path.read_bytes() == old


def test_completed_patch_is_kept_without_writing(tmp_path, monkeypatch):
    path = tmp_path / "a.fits"
    path.write_bytes(_fits_bytes())
    patches = _patches(path)
    _interrupted(path, patches, written=2)
    new = path.read_bytes()
    rec = Recorder(monkeypatch)
    assert "kept the new version" in fitsedit.recover(path)
    assert not [c for c in rec.calls if c[0] == "pwrite"]
    assert path.read_bytes() == new


def test_journal_of_a_file_that_changed_size_is_refused(tmp_path):
    # another program appended an HDU after the kill: the patched ranges still hold old or
    # new bytes, but the file is not the one journaled; rolling back would mix two versions
    path = tmp_path / "a.fits"
    path.write_bytes(_fits_bytes())
    patches = _patches(path)
    _interrupted(path, patches, written=1)
    with open(path, "ab") as fh:
        fh.write(b"\0" * BLOCK)
    before = path.read_bytes()
    with pytest.raises(ProductError, match=r"does not match the file \(size"):
        fitsedit.recover(path)
    assert path.read_bytes() == before and fitsedit.journal_path(path).exists()


@pytest.mark.parametrize("damage, message", [
    (lambda raw: raw[:-5], "truncated or corrupt journal"),
    (lambda raw: raw[:len(fitsedit._JOURNAL_MAGIC) + 10], "corrupt journal"),
    (lambda raw: b"garbage" + raw, "not a stk_update_wcs journal"),
    (lambda raw: raw.replace(b'"patches"', b'"patchez"', 1), "lacks the file size or the patch"),
    (lambda raw: raw.replace(b'"size": ', b'"size": "x', 1), "corrupt journal"),
    (lambda raw: fitsedit._JOURNAL_MAGIC + b"[1, 2]\n", "corrupt journal"),
    (lambda raw: b"", "not a stk_update_wcs journal"),
])
def test_corrupt_or_truncated_journal_is_refused_and_kept(tmp_path, damage, message):
    path = tmp_path / "a.fits"
    path.write_bytes(_fits_bytes())
    patches = _patches(path)
    _interrupted(path, patches, written=1)
    jpath = fitsedit.journal_path(path)
    jpath.write_bytes(damage(jpath.read_bytes()))
    before = path.read_bytes()
    with pytest.raises(ProductError, match=message):
        fitsedit.recover(path)
    assert path.read_bytes() == before and jpath.exists()


def test_journal_header_is_what_recover_reads(tmp_path):
    path = tmp_path / "a.fits"
    path.write_bytes(_fits_bytes())
    patches = _patches(path)
    jpath = fitsedit._write_journal(path, patches)
    raw = jpath.read_bytes()
    meta = json.loads(raw[len(fitsedit._JOURNAL_MAGIC):].split(b"\n", 1)[0])
    assert meta["size"] == path.stat().st_size
    assert meta["patches"] == [[p.offset, len(p.old)] for p in patches]


def test_orphan_journal_is_removed(tmp_path):
    path = tmp_path / "a.fits"
    path.write_bytes(_fits_bytes())
    _interrupted(path, _patches(path), written=1)
    path.unlink()
    assert "orphan journal" in fitsedit.recover(path)
    assert not fitsedit.journal_path(path).exists()


# --------------------------------------------------------------------------- copies

@pytest.mark.parametrize("how", ["missing", "failing"])
def test_copy_without_copy_file_range_gives_the_same_bytes(tmp_path, monkeypatch, how):
    src = tmp_path / "a.fits"
    src.write_bytes(_fits_bytes(nblocks=40))
    if how == "missing":
        monkeypatch.delattr(os, "copy_file_range", raising=False)
    else:
        def exdev(*_a, **_k):
            raise OSError(18, "Invalid cross-device link")
        monkeypatch.setattr(os, "copy_file_range", exdev)
    monkeypatch.setattr(fitsedit, "_COPY_CHUNK", BLOCK * 3)     # several chunks
    dest = tmp_path / "b.fits"
    fitsedit.rewrite_file(src, dest, [(0, BLOCK * 20), b"Q" * BLOCK, (BLOCK * 21, BLOCK * 19)])
    want = src.read_bytes()
    assert dest.read_bytes() == want[:BLOCK * 20] + b"Q" * BLOCK + want[BLOCK * 21:]
    tmp = fitsedit.copy_file(src, tmp_path / "c.fits")
    fitsedit.commit_temp(tmp, tmp_path / "c.fits")
    assert (tmp_path / "c.fits").read_bytes() == want


# --------------------------------------------------------------------------- temporary files

def test_only_a_dead_writers_temporary_files_are_removed(tmp_path):
    import subprocess
    import sys

    dest = tmp_path / "a.fits"
    fd, live = fitsutil.make_temp(dest)            # ours: locked while fd is open
    dead = tmp_path / ".a.fits.abcd1234.tmp"       # a killed run's (nobody holds it)
    dead.write_bytes(b"x")
    jdead = tmp_path / "..a.fits.stkjournal.wxyz9876.tmp"
    jdead.write_bytes(b"x")
    other = tmp_path / ".b.fits.abcd1234.tmp"      # another file's
    other.write_bytes(b"x")
    # another process looks: it must leave our live temp alone
    code = ("import sys; from stk_astrometry import fitsutil; "
            "print(sorted(fitsutil.remove_orphan_temps(sys.argv[1], 'a.fits')))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                         text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=str(Path(fitsedit.__file__).parents[1])))
    assert out.stdout.strip() == str(sorted([dead.name, jdead.name]))
    assert live.exists() and other.exists() and not dead.exists() and not jdead.exists()
    os.close(fd)
    assert fitsutil.remove_orphan_temps(tmp_path, "a.fits") == [live.name]


# --------------------------------------------------------------------------- card header

def _sample_headers():
    repo = Path(__file__).resolve().parents[1]
    files = sorted((repo / "share" / "sample").rglob("*.fits"))
    return [lay.raw_header.decode("ascii") for f in files for lay in fitsedit.scan_fits(f)]


def test_card_header_reads_and_edits_as_astropy_does():
    # the fast header must give astropy's values and comments, and after the same edits
    # (values changed, keywords added and removed, HISTORY added, a card inserted) the same
    # bytes astropy would write
    from astropy.io import fits

    texts = _sample_headers()
    assert len(texts) > 20
    for text in texts:
        a, c = fits.Header.fromstring(text), fitsedit.parse_header(text)
        assert isinstance(c, fitsedit.CardHeader)
        for card in a.cards:
            k = card.keyword
            if k in ("HISTORY", "COMMENT", ""):
                continue
            assert c[k] == a[k] and c.comments[k] == a.comments[k], (k, c[k], a[k])
        for h in (a, c):
            h["RA_NOM"] = (201.123456789, "moved")
            h["NEWKEY"] = ("abc", "new")
            h["EXTNAME"] = "ZZ"
            h.add_history("a HISTORY record")
            h.insert(3, ("ZZINSERT", 5, "n"))
            h["COMMENT"] = "a comment"
            if "DATE" in h:
                del h["DATE"]
        assert fitsedit.serialize_header(a) == fitsedit.serialize_header(c)


def test_card_header_leaves_continue_cards_to_astropy():
    from astropy.io import fits

    h = fits.Header()
    h["LONGSTR"] = "x" * 100                 # a CONTINUE card
    parsed = fitsedit.parse_header(h.tostring())
    assert isinstance(parsed, fits.Header) and parsed["LONGSTR"] == "x" * 100


RA0, DEC0 = 201.2, 26.6


def test_checksum_encoding_matches_astropy(tmp_path):
    path = tmp_path / "a.fits"
    synthprod.write_product("ECORRIMG", path, ra_nom=RA0, dec_nom=DEC0)
    lay = fitsedit.scan_fits(path)[0]
    datasum = fitsedit.datasum_of_range(path, lay.data_offset, lay.data_size)
    assert datasum == int(lay.header["DATASUM"])
    assert fitsedit.header_checksum_ok(lay.raw_header, lay.header) == datasum
    h = lay.header.copy()
    h["EXTRA"] = "changed"
    raw = fitsedit.checksummed_header_bytes(h, datasum, nblocks=lay.header_size // 2880)
    assert len(raw) == lay.header_size
    assert fitsedit.ones_complement_sum(raw, datasum) == 0xFFFFFFFF
    data = path.read_bytes()[lay.data_offset:]
    (tmp_path / "b.fits").write_bytes(raw + data)
    with fits.open(tmp_path / "b.fits", checksum=True) as hdul:   # warnings are errors
        assert hdul[0].header["EXTRA"] == "changed"
        assert hdul[0]._checksum_valid and hdul[0]._datasum_valid


def test_serialize_header_pads_or_refuses():
    h = fits.Header([("KEY", 1)])
    raw = fitsedit.serialize_header(h, nblocks=2)
    assert len(raw) == 5760 and raw[-80:].startswith(b"END")
    for i in range(40):
        h[f"K{i}"] = i
    assert fitsedit.serialize_header(h, nblocks=1) is None


def test_scan_rejects_truncated(tmp_path):
    path = tmp_path / "a.fits"
    synthprod.write_product("ECORRIMG", path, ra_nom=RA0, dec_nom=DEC0)
    raw = path.read_bytes()
    (tmp_path / "t.fits").write_bytes(raw[:-2880])
    with pytest.raises(fitsedit.FormatError, match="truncated"):
        fitsedit.scan_fits(tmp_path / "t.fits")


# --------------------------------------------------------------------------- what a file is


def _card(text):
    return text.encode().ljust(80)


@pytest.mark.parametrize("head, fits_, why", [
    (_card("SIMPLE  =                    T") + b" " * 2800, True, "fixed format"),
    (_card("SIMPLE  = T"), True, "free format, exactly one card"),
    (_card("SIMPLE  =                    F"), False, "not standard"),
    (_card("SIMPLE  =                    T")[:79], False, "shorter than a card"),
    (_card("simple  =                    T"), False, "lower case"),
    (_card("XTENSION= 'IMAGE   '"), False, "an extension alone"),
    (b"", False, "empty"),
])
def test_fits_file_recognised_by_its_first_card(tmp_path, head, fits_, why):
    p = tmp_path / "f.bin"
    p.write_bytes(head)
    assert fitsedit.is_fits_file(p) is fits_, why
    assert not fitsedit.is_jpeg_file(p)


def test_gzip_fits_recognised_by_magic_and_content(tmp_path):
    import gzip

    good = tmp_path / "a.fits.gz"
    good.write_bytes(gzip.compress(_fits_bytes(2)))
    assert fitsedit.is_gzip_fits(good) and not fitsedit.is_fits_file(good)
    text = tmp_path / "t.gz"
    text.write_bytes(gzip.compress(b"hello world\n" * 20))
    short = tmp_path / "s.gz"
    short.write_bytes(gzip.compress(_card("SIMPLE  =                    T")[:79]))
    broken = tmp_path / "b.gz"
    broken.write_bytes(b"\x1f\x8b" + b"\x00" * 40)
    cut = tmp_path / "c.gz"
    cut.write_bytes(gzip.compress(_fits_bytes(2))[:20])
    plain = tmp_path / "p.fits"
    plain.write_bytes(_fits_bytes(2))
    for p in (text, short, broken, cut, plain):
        assert not fitsedit.is_gzip_fits(p), p.name
    assert fitsedit.is_fits_file(plain)


def test_jpeg_recognised_by_its_start_of_image_marker(tmp_path):
    p = tmp_path / "x.jpg"
    p.write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 10)
    assert fitsedit.is_jpeg_file(p) and not fitsedit.is_fits_file(p)
    p.write_bytes(b"\xff\xd8")
    assert not fitsedit.is_jpeg_file(p)
    p.write_bytes(b"\xff\xd8\xfe")
    assert not fitsedit.is_jpeg_file(p)


def test_unreadable_file_is_one_product_error(tmp_path):
    with pytest.raises(ProductError, match=r"^cannot read .*nope\.fits: No such file"):
        fitsedit.is_fits_file(tmp_path / "nope.fits")
    with pytest.raises(ProductError, match=r"^cannot open .*nope\.fits: No such file"):
        fitsedit.scan_fits(tmp_path / "nope.fits")


@pytest.mark.parametrize("cards, size", [
    (dict(NAXIS=0), 0),
    (dict(NAXIS=2, NAXIS1=10, NAXIS2=3, BITPIX=8), 2880),
    (dict(NAXIS=2, NAXIS1=2880, NAXIS2=1, BITPIX=8), 2880),
    (dict(NAXIS=2, NAXIS1=2881, NAXIS2=1, BITPIX=8), 5760),
    (dict(NAXIS=2, NAXIS1=100, NAXIS2=100, BITPIX=-64), 80640),
    (dict(NAXIS=1, NAXIS1=720, BITPIX=32), 2880),
    (dict(NAXIS=1, NAXIS1=721, BITPIX=-32), 5760),
    (dict(NAXIS=2, NAXIS1=8, NAXIS2=10, BITPIX=8, PCOUNT=3000, GCOUNT=1), 5760),
    (dict(NAXIS=2, NAXIS1=8, NAXIS2=0, BITPIX=8), 0),
    # random groups: NAXIS1 = 0, the group parameters in PCOUNT, GCOUNT groups
    (dict(NAXIS=3, NAXIS1=0, NAXIS2=40, NAXIS3=50, BITPIX=16, GROUPS=True, PCOUNT=2,
          GCOUNT=30), 120960),
    (dict(NAXIS=3, NAXIS1=0, NAXIS2=40, NAXIS3=50, BITPIX=16, PCOUNT=2, GCOUNT=30), 2880),
    (dict(NAXIS=3, NAXIS1=1, NAXIS2=40, NAXIS3=50, BITPIX=16, GROUPS=True, PCOUNT=0,
          GCOUNT=1), 5760),
    (dict(NAXIS=2, NAXIS1=10, NAXIS2=10, BITPIX=16, GCOUNT=2), 2880),
    (dict(NAXIS=2, NAXIS1=1000, NAXIS2=2, BITPIX=16, GCOUNT=2), 8640),
    (dict(NAXIS=1, NAXIS1=3000), 5760),              # BITPIX missing: bytes
])
def test_data_size_is_the_standards_padded_size(cards, size):
    h = fits.Header()
    for k, v in cards.items():
        h[k] = v
    assert fitsedit.data_size_bytes(h) == size


def test_scan_locates_every_hdu(tmp_path):
    hdul = fits.HDUList([fits.PrimaryHDU(),
                         fits.ImageHDU(data=__import__("numpy").zeros((10, 10)), name="IMG"),
                         fits.BinTableHDU.from_columns([fits.Column("a", "D", array=[1.0] * 400)],
                                                       name="TAB")])
    hdul[0].header["LONG"] = "x" * 3000                 # a header of several blocks
    hdul.writeto(tmp_path / "f.fits")
    lays = fitsedit.scan_fits(tmp_path / "f.fits")
    assert [lay.index for lay in lays] == [0, 1, 2]
    size = (tmp_path / "f.fits").stat().st_size
    assert lays[0].header_offset == 0 and lays[0].header_size % 2880 == 0
    assert lays[0].header_size > 2880 and lays[0].data_size == 0
    assert lays[0].data_offset == lays[0].header_size == lays[1].header_offset
    assert lays[1].data_size == 2880 and lays[1].data_offset == lays[1].header_offset + lays[1].header_size
    assert lays[2].header_offset == lays[1].end_offset and lays[2].end_offset == size
    assert lays[2].data_size == 5760 and lays[2].is_table and not lays[1].is_table
    raw = (tmp_path / "f.fits").read_bytes()
    for lay in lays:
        assert lay.raw_header == raw[lay.header_offset:lay.header_offset + lay.header_size]
    assert lays[1].header["EXTNAME"] == "IMG" and lays[0].header["LONG"] == "x" * 3000


def test_scan_tolerates_trailing_padding_and_bytes_and_says_so(tmp_path, caplog):
    good = _fits_bytes(1)
    p = tmp_path / "f.fits"
    p.write_bytes(good + b"\0" * 2880)
    with caplog.at_level("WARNING", logger="stk_astrometry.fitsedit"):
        assert len(fitsedit.scan_fits(p)) == 1
        p.write_bytes(good + b"junk" * 10)
        assert len(fitsedit.scan_fits(p)) == 1
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs == [f"{p}: 2880 bytes of padding after the last HDU ignored",
                    f"{p}: 40 trailing bytes after the last HDU ignored"]


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[:2880 * 3 + 100], r"HDU 2 header at byte 5760 is truncated \(no END card\)$"),
    (lambda b: b"XIMPLE" + b[6:], r"expected SIMPLE at byte 0, found b'XIMPLE  '$"),
    (lambda b: b[:5760] + b"SIMPLE  " + b[5768:], r"expected XTENSION at byte 5760, found b'SIMPLE  '$"),
    (lambda b: b[:-2880], r"HDU 2 data unit is truncated \(needs 5760 bytes at 11520, file has "
                          r"14400\)$"),
    (lambda b: b"", r"empty file$"),
    (lambda b: b[:2000], r"HDU 1 header at byte 0 is truncated \(no END card\)$"),
])
def test_scan_names_what_is_wrong(tmp_path, damage, message):
    from stk_astrometry.errors import FormatError

    hdul = fits.HDUList([fits.PrimaryHDU(data=__import__("numpy").zeros(700, dtype="i4")),
                         fits.BinTableHDU.from_columns([fits.Column("a", "D", array=[1.0] * 400)])])
    hdul[1].header["LONG"] = "y" * 3000
    hdul.writeto(tmp_path / "g.fits")
    raw = (tmp_path / "g.fits").read_bytes()
    assert [lay.end_offset for lay in fitsedit.scan_fits(tmp_path / "g.fits")] == [5760, 17280]
    (tmp_path / "b.fits").write_bytes(damage(raw))
    with pytest.raises(FormatError, match=message):
        fitsedit.scan_fits(tmp_path / "b.fits")


# --------------------------------------------------------------------------- gzip products


def test_rewrite_compressed_is_gzip_of_the_pieces_named_after_the_product(tmp_path):
    import gzip

    src = tmp_path / "src.bin"
    src.write_bytes(bytes(range(256)) * 100)
    dest = tmp_path / "p_evt3.fits.gz"
    fitsedit.rewrite_file(src, dest, [b"head", (10, 20000), memoryview(b"mid"), (0, 5)],
                          compress=True)
    raw = dest.read_bytes()
    data = bytes(range(256)) * 100
    assert gzip.decompress(raw) == b"head" + data[10:20010] + b"mid" + data[:5]
    def fname(b):
        return b[10:b.index(b"\0", 10)] if b[3] & 0x08 else None
    assert fname(raw) == b"p_evt3.fits"                # the name inside, without .gz
    assert raw[4:8] == b"\0\0\0\0"                 # mtime 0: the same bytes every time
    again = tmp_path / "again.fits.gz"
    fitsedit.rewrite_file(src, again, [b"head", (10, 20000), b"mid", (0, 5)], compress=True)
    assert again.read_bytes()[10 + len(b"again.fits") + 1:] == raw[10 + len(b"p_evt3.fits") + 1:]
    plain = tmp_path / "x.fits"
    fitsedit.rewrite_file(src, plain, [b"head", (10, 20000)], compress=True)
    assert fname(plain.read_bytes()) == b"x.fits"
    import zlib
    body = raw[10 + len(b"p_evt3.fits") + 1:-8]
    level6 = zlib.compressobj(6, zlib.DEFLATED, -15)
    want = level6.compress(b"head" + data[10:20010] + b"mid" + data[:5]) + level6.flush()
    assert body == want                                # gzip -6, the gzip command's default
    from stk_astrometry.errors import FormatError
    with pytest.raises(FormatError, match="source file shorter than expected at byte 25600"):
        fitsedit.rewrite_file(src, tmp_path / "y.fits.gz", [(25000, 1000)], compress=True)
    assert not (tmp_path / "y.fits.gz").exists()


def test_gunzip_to_a_locked_temporary_beside_the_product(tmp_path):
    import fcntl
    import gzip

    from stk_astrometry.errors import FormatError

    data = _fits_bytes(3)
    src = tmp_path / "p.fits.gz"
    src.write_bytes(gzip.compress(data))
    tmp = fitsedit.gunzip_to_temp(src, tmp_path / "p.fits.gz")
    try:
        assert tmp.read_bytes() == data and tmp.parent == tmp_path
        assert fitsutil.temp_owner(tmp.name) == "p.fits.gz"
        fd = os.open(tmp, os.O_RDONLY)
        try:
            with pytest.raises(OSError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    finally:
        fitsedit.discard_temp(tmp)
    assert not tmp.exists()
    cut = tmp_path / "cut.fits.gz"
    cut.write_bytes(gzip.compress(data)[:-30])
    with pytest.raises(FormatError, match=r"cut\.fits\.gz: corrupt or truncated gzip file"):
        fitsedit.gunzip_to_temp(cut, cut)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


# --------------------------------------------------------------------------- the kill-test hook


@pytest.mark.parametrize("env, written", [
    (None, b"...."), ("", b"...."), ("journal:0", b"...."), ("patch:0", b"AB.."),
    ("patch:x", b"...."), ("other:0", b"...."),
])
def test_fault_hook_is_inert_unless_asked(tmp_path, monkeypatch, env, written):
    import time

    p = tmp_path / "f.bin"
    p.write_bytes(b"....")
    slept = []
    monkeypatch.setattr(time, "sleep", lambda s: slept.append(s))
    if env is None:
        monkeypatch.delenv(fitsedit.FAULT_ENV, raising=False)
    else:
        monkeypatch.setenv(fitsedit.FAULT_ENV, env)
    patches = [fitsedit.Patch(0, b"..", b"AB"), fitsedit.Patch(2, b"..", b"CD")]
    fd = os.open(p, os.O_RDWR)
    try:
        fitsedit._fault_point(fd, patches)
    finally:
        os.close(fd)
    assert p.read_bytes() == written
    assert slept == ([0.0] if env in ("journal:0", "patch:0") else [])


# --------------------------------------------------------------------------- checksums


def test_checksummed_header_is_valid_and_sized_as_asked(tmp_path):
    import numpy as np

    data = np.arange(720, dtype=">i4").tobytes()
    datasum = fitsedit.ones_complement_sum(data)
    h = fits.Header()
    h["SIMPLE"], h["BITPIX"], h["NAXIS"], h["NAXIS1"] = True, 32, 1, 720
    raw = fitsedit.checksummed_header_bytes(h, datasum)
    assert len(raw) == 2880 and h["DATASUM"] == str(datasum)
    assert h["CHECKSUM"] != "0" * 16 and f"'{h['CHECKSUM']}'".encode() in raw
    (tmp_path / "c.fits").write_bytes(raw + data)
    with fits.open(tmp_path / "c.fits", checksum=True) as hdul:   # warns on a bad sum
        assert hdul[0].header["CHECKSUM"] == h["CHECKSUM"]
    assert fitsedit.header_checksum_ok(raw, h) == datasum
    assert len(fitsedit.checksummed_header_bytes(h, datasum, spare=2)) == 3 * 2880
    raw3 = fitsedit.checksummed_header_bytes(h, datasum, nblocks=3)
    assert len(raw3) == 3 * 2880 and fitsedit.header_checksum_ok(raw3, h) == datasum
    for i in range(40):
        h[f"K{i:02d}"] = "x" * 60
    assert fitsedit.checksummed_header_bytes(h, datasum, nblocks=1) is None


@pytest.mark.parametrize("card, start, end", [
    ("KEY     = 'abc'  / c", 11, 15), ("KEY     = 'it''s' / c", 11, 17),
    ("KEY     = ''''", 11, 14), ("KEY     = 'open", 11, -1), ("KEY     = 'a''", 11, -1),
    ("'", 0, 1),                 # the closing quote at the very first character
])
def test_quote_end_skips_escaped_quotes(card, start, end):
    assert fitsedit._quote_end(card, start) == end


# --------------------------------------------------------------------------- recovery decisions


def test_old_or_new_accepts_torn_writes_only():
    p = fitsedit.Patch(0, b"AAAA", b"BBBB")
    assert fitsedit._old_or_new(b"AAAA", p) and fitsedit._old_or_new(b"BBBB", p)
    assert fitsedit._old_or_new(b"BBAA", p) and fitsedit._old_or_new(b"ABAB", p)
    assert not fitsedit._old_or_new(b"ABAC", p) and not fitsedit._old_or_new(b"CCCC", p)
    assert not fitsedit._old_or_new(b"AAA", p) and not fitsedit._old_or_new(b"AAAAA", p)


def test_recover_rolls_a_torn_write_back_and_refuses_foreign_bytes(tmp_path):
    path = tmp_path / "a.fits"
    old = _fits_bytes()
    path.write_bytes(old)
    patches = _patches(path)
    _interrupted(path, patches, written=0)
    raw = bytearray(path.read_bytes())
    raw[100:120] = b"Z" * 20                   # half of the first patch written: torn
    path.write_bytes(bytes(raw))
    assert fitsedit.recover(path) == "interrupted update rolled back to the old version"
    assert path.read_bytes() == old and not fitsedit.journal_path(path).exists()
    assert fitsedit.recover(path) is None
    _interrupted(path, patches, written=2)
    assert fitsedit.recover(path) == "interrupted update had completed; kept the new version"
    new = path.read_bytes()
    assert new[100:140] == b"Z" * 40 and new[BLOCK + 7:BLOCK + 17] == b"Y" * 10
    path.write_bytes(old)
    _interrupted(path, patches, written=1)
    raw = bytearray(path.read_bytes())
    raw[BLOCK + 9] = ord("Q")                  # another tool's edit inside a patched range
    path.write_bytes(bytes(raw))
    with pytest.raises(ProductError, match=rf"^{path}: the interrupted update's journal .* does "
                                           rf"not match the file \(bytes {BLOCK + 7}-{BLOCK + 16} "
                                           r"hold neither the old nor the new version\)"):
        fitsedit.recover(path)
    assert fitsedit.journal_path(path).exists() and path.read_bytes() == bytes(raw)


def test_patch_in_place_journals_by_default(tmp_path, monkeypatch):
    path = tmp_path / "a.fits"
    path.write_bytes(_fits_bytes())
    written = []
    real = fitsedit._write_journal
    monkeypatch.setattr(fitsedit, "_write_journal", lambda p, ps: written.append(p) or real(p, ps))
    fitsedit.patch_in_place(path, _patches(path))
    assert written == [path] and not fitsedit.journal_path(path).exists()
    assert path.read_bytes()[100:140] == b"Z" * 40


@pytest.mark.parametrize("size", [1, 2, 5000])
def test_copy_file_copies_every_byte(tmp_path, size):
    src = tmp_path / "s.bin"
    src.write_bytes(bytes(range(256)) * (size // 256) + bytes(range(size % 256)))
    tmp = fitsedit.copy_file(src, tmp_path / "d.bin")
    try:
        assert tmp.read_bytes() == src.read_bytes()
    finally:
        fitsedit.discard_temp(tmp)


# --------------------------------------------------------------------------- what a file is (2)


@pytest.mark.parametrize("card, why", [
    ("SIMPLE  =                    T/ conforms to FITS", "a comment right after the value"),
    ("SIMPLE  = T", "free format"),
])
def test_fits_start_is_recognised_plain_and_gzipped(tmp_path, card, why):
    import gzip

    head = _card(card) + _fits_bytes(1)[80:]
    plain = tmp_path / "p.fits"
    plain.write_bytes(head)
    packed = tmp_path / "p.fits.gz"
    packed.write_bytes(gzip.compress(head))
    assert fitsedit.is_fits_file(plain), why
    assert fitsedit.is_gzip_fits(packed), why


def test_sniffing_a_file_reads_only_its_first_bytes(tmp_path, monkeypatch):
    # a 1 GB event file is recognised by its first card, not read whole
    import builtins

    sizes = []

    class Spy:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def read(self, n=-1):
            sizes.append(n)
            return self.fh.read(n)

    monkeypatch.setattr(fitsedit, "open", lambda *a, **k: Spy(builtins.open(*a, **k)),
                        raising=False)
    p = tmp_path / "big.jpg"
    p.write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 10000)
    assert fitsedit.is_jpeg_file(p) and not fitsedit.is_fits_file(p)
    assert not fitsedit.is_gzip_fits(p)
    assert sizes and all(isinstance(n, int) and 0 < n <= 80 for n in sizes), sizes


# --------------------------------------------------------------------------- data units (2)


@pytest.mark.parametrize("cards, size, why", [
    (dict(NAXIS1=100, NAXIS2=2, BITPIX=8), 0, "no NAXIS: no data unit, whatever NAXISn say"),
    (dict(NAXIS=2, NAXIS1=10, BITPIX=8), 0, "a missing NAXISn is a zero axis"),
    (dict(NAXIS=1, NAXIS1=0, BITPIX=8, GROUPS=True, PCOUNT=0, GCOUNT=1), 0,
     "random groups without group axes or parameters"),
])
def test_data_size_of_incomplete_headers(cards, size, why):
    h = fits.Header()
    for k, v in cards.items():
        h[k] = v
    assert fitsedit.data_size_bytes(h) == size, why


def _two_hdus(tmp_path, primary_cards=()):
    import numpy as np

    hdul = fits.HDUList([fits.PrimaryHDU(data=np.zeros(700, dtype="i4")),
                         fits.BinTableHDU.from_columns([fits.Column("a", "D", array=[1.0] * 400)])])
    for k, v in primary_cards:
        hdul[0].header[k] = v
    hdul.writeto(tmp_path / "g.fits")
    return tmp_path / "g.fits"


def test_scan_refuses_a_trailing_block_that_is_neither_padding_nor_an_hdu(tmp_path):
    from stk_astrometry.errors import FormatError

    path = _two_hdus(tmp_path)
    end = path.stat().st_size
    with open(path, "ab") as fh:
        fh.write(b"X" * BLOCK)
    with pytest.raises(FormatError, match=rf"expected XTENSION at byte {end}, found b'XXXXXXXX'$"):
        fitsedit.scan_fits(path)


def test_scan_finds_the_end_card_only_at_a_card_boundary(tmp_path):
    # 'END     ' inside a card's text is not the END card: the header goes on
    cards = [("NOTE", "END     inside a value, in the first block")]
    cards += [(f"K{i:02d}", i) for i in range(40)]          # END in the second block
    path = _two_hdus(tmp_path, cards)
    lays = fitsedit.scan_fits(path)
    assert lays[0].header_size == 2 * BLOCK and lays[0].header["K39"] == 39
    assert lays[1].header_offset == lays[0].end_offset


def test_scan_names_the_file_and_byte_of_a_non_ascii_header(tmp_path):
    from stk_astrometry.errors import FormatError

    path = _two_hdus(tmp_path)
    lays = fitsedit.scan_fits(path)
    raw = bytearray(path.read_bytes())
    at = lays[1].header_offset + raw[lays[1].header_offset:].index(b"TTYPE1  = 'a")
    raw[at + 11] = 0xE9
    path.write_bytes(bytes(raw))
    with pytest.raises(FormatError, match=rf"^{path}: unreadable FITS header at byte "
                                          rf"{lays[1].header_offset}: "):
        fitsedit.scan_fits(path)


# --------------------------------------------------------------------------- serialisation (2)


@pytest.mark.parametrize("nkeys, blank, nblocks", [
    (35, False, 1),          # 35 cards and END fill one block
    (35, True, 1),           # a trailing blank card is padding, not a card
    (36, False, 2),          # END does not fit after 36 cards
])
def test_serialized_header_takes_the_fewest_blocks_that_hold_cards_and_end(nkeys, blank, nblocks):
    h = fits.Header([(f"K{i:02d}", i) for i in range(nkeys)])
    if blank:
        h.append(fits.Card("", "", ""), useblanks=False, bottom=True)
    for header in (h, fitsedit.parse_header(h.tostring(endcard=False, padding=False))):
        raw = fitsedit.serialize_header(header)
        assert len(raw) == nblocks * BLOCK
        assert raw[:nkeys * 80] == h.tostring(endcard=False, padding=False).encode()[:nkeys * 80]
        assert raw[-80:] == b"END".ljust(80) and raw[nkeys * 80:-80].strip() == b""


# --------------------------------------------------------------------------- card header (2)


def _astropy_and_card(cards):
    a = fits.Header()
    for c in cards:
        a.append(fits.Card(*c), useblanks=False, bottom=True)
    return a, fitsedit.parse_header(a.tostring(endcard=False, padding=False))


@pytest.mark.parametrize("cards, edit", [
    # HISTORY after the last HISTORY card, before the keyword cards that follow it
    ([("A", 1, "a"), ("HISTORY", "h1"), ("B", 2), ("C", 3), ("D", 4)],
     lambda h: h.add_history("h2")),
    ([("HISTORY", "h1"), ("A", 1)], lambda h: h.add_history("h2")),
    ([], lambda h: h.add_history("first")),
    # item assignment of HISTORY / COMMENT adds a card after the last of its kind
    ([("A", 1, "a"), ("COMMENT", "c1"), ("B", 2), ("HISTORY", "h1"), ("C", 3)],
     lambda h: (h.__setitem__("COMMENT", "c2"), h.__setitem__("HISTORY", "h2"))),
    ([("A", 1, "a"), ("COMMENT", "c1"), ("B", 2)], lambda h: h.__setitem__("comment", "c2")),
    # a keyword card goes before a trailing block of commentary cards
    ([("COMMENT", "c1"), ("COMMENT", "c2")], lambda h: h.append(("KEY", 1))),
    ([("A", 1), ("COMMENT", "c1"), ("HISTORY", "h1")], lambda h: h.append(("KEY", 1, "k"))),
])
def test_card_header_places_commentary_cards_as_astropy_does(cards, edit):
    a, c = _astropy_and_card(cards)
    edit(a)
    edit(c)
    assert fitsedit.serialize_header(c) == fitsedit.serialize_header(a)


def test_card_header_other_edits_as_astropy_does():
    a, c = _astropy_and_card([("A", 1, "first"), ("B", "x", "second"), ("COMMENT", "c")])
    for h in (a, c):
        h["A"] = (7,)                       # a 1-tuple keeps the comment
        h["NEW"] = (5,)
        h.insert(1, ("PAIR", 3))            # (keyword, value): no comment
        h.insert(2, fits.Card("ACARD", 2.5, "an astropy card"))
        h.comments["B"] = "changed"
    assert fitsedit.serialize_header(c) == fitsedit.serialize_header(a)
    assert list(c) == list(a) and c.index("ACARD") == a.index("ACARD") == 2
    assert c.comments["ACARD"] == "an astropy card" and c.comments["PAIR"] == ""
    copy = c.copy()
    assert fitsedit.serialize_header(copy) == fitsedit.serialize_header(a)
    # lookups see every edit
    del c["B"]
    assert "B" not in c and c.get("NEW") == 5 and c.index("NEW") == a.index("NEW") - 1
    c.insert(0, ("FIRST", 1))
    assert c.index("FIRST") == 0 and c["ACARD"] == 2.5 and c.get("A") == 7


def test_card_header_tostring_as_astropy():
    a, c = _astropy_and_card([("A", 1, "a"), ("HISTORY", "h")])
    assert c.tostring() == a.tostring(endcard=False, padding=False)
    assert c.tostring(sep="\n", endcard=True) == a.tostring(sep="\n", endcard=True, padding=False)
    assert c.tostring(endcard=True).endswith("END".ljust(80))


def test_parse_header_takes_whole_cards_up_to_end():
    text = "".join(_card(t).decode() for t in ("A       =                    1",
                                                 "B       =                    2"))
    assert list(fitsedit.parse_header(text + "C       =   ")) == ["A", "B"]   # partial card
    assert list(fitsedit.parse_header(text)) == ["A", "B"]                   # no END card
    h = fits.Header()
    h["HIERARCH ESO DET CHIP"] = 3                      # a HIERARCH card
    parsed = fitsedit.parse_header(h.tostring())
    assert isinstance(parsed, fits.Header) and parsed["ESO DET CHIP"] == 3


# --------------------------------------------------------------------------- checksums (2)


def test_ones_complement_sum_folds_the_carry_back_in():
    assert fitsedit.ones_complement_sum(b"\xff\xff\xff\xff\x00\x00\x00\x01") == 1
    assert fitsedit.ones_complement_sum(b"\x80\x00\x00\x00\x80\x00\x00\x00") == 1
    assert fitsedit.ones_complement_sum(b"\x00\x00\x00\x02", 0xFFFFFFFF) == 2


@pytest.mark.parametrize("chunk", [4, 5, 6, 7, 100, 1 << 24])
def test_datasum_of_a_range_in_any_chunk_size(tmp_path, chunk):
    import numpy as np

    data = np.random.default_rng(3).integers(0, 256, 4 * BLOCK, dtype=np.uint8).tobytes()
    path = tmp_path / "d.bin"
    path.write_bytes(data)
    want = fitsedit.ones_complement_sum(data[BLOCK:3 * BLOCK])
    assert fitsedit.datasum_of_range(path, BLOCK, 2 * BLOCK, chunk=chunk) == want


def test_checksum_without_datasum_is_not_trusted():
    h = fits.Header([("SIMPLE", True), ("CHECKSUM", "0" * 16)])
    raw = fitsedit.serialize_header(h)
    assert fitsedit.header_checksum_ok(raw, h) is None
    assert fitsedit.header_checksum_ok(raw, fitsedit.parse_header(raw.decode())) is None


def test_checksum_cards_carry_their_comments_and_a_quoted_card_is_left_alone(tmp_path):
    h = fits.Header([("SIMPLE", True), ("BITPIX", 8), ("NAXIS", 0),
                     ("HISTORY", "CHECKSUM= '0000000000000000' was the old value"), ("K", 1)])
    raw = fitsedit.checksummed_header_bytes(h, 0)
    assert b"HISTORY CHECKSUM= '0000000000000000' was the old value" in raw
    assert h.comments["DATASUM"] == "data unit checksum"
    assert h.comments["CHECKSUM"] == "HDU checksum"
    assert fitsedit.header_checksum_ok(raw, h) == 0
    (tmp_path / "c.fits").write_bytes(raw)
    with fits.open(tmp_path / "c.fits", checksum=True) as hdul:   # warns on a bad sum
        assert hdul[0].header["CHECKSUM"] == h["CHECKSUM"]


# --------------------------------------------------------------------------- journal (2)


def test_journal_header_names_the_file_as_it_was(tmp_path):
    # what a person inspecting a left-over journal needs: which file, and its state then
    path = tmp_path / "a.fits"
    path.write_bytes(_fits_bytes())
    st = path.stat()
    jpath = fitsedit._write_journal(path, _patches(path))
    meta = json.loads(jpath.read_bytes()[len(fitsedit._JOURNAL_MAGIC):].split(b"\n", 1)[0])
    assert meta["file"] == "a.fits" and meta["size"] == st.st_size
    assert (meta["dev"], meta["ino"], meta["mtime_ns"]) == (st.st_dev, st.st_ino, st.st_mtime_ns)


def _rewrite_meta(raw, edit):
    magic = fitsedit._JOURNAL_MAGIC
    line, _, blob = raw[len(magic):].partition(b"\n")
    meta = json.loads(line)
    edit(meta)
    return magic + json.dumps(meta).encode() + b"\n" + blob


@pytest.mark.parametrize("edit", [
    lambda m: m.update(size=True),
    lambda m: m.update(size=None),
    lambda m: m["patches"].__setitem__(0, [-1, 40]),
    lambda m: m["patches"].__setitem__(0, [100, 40, 1]),
    lambda m: m["patches"].__setitem__(0, ["100", 40]),
    lambda m: m["patches"].__setitem__(0, [True, 40]),
    lambda m: m["patches"].__setitem__(0, {"offset": 100}),
], ids=["size-bool", "size-missing", "negative", "three", "string", "bool", "not-a-pair"])
def test_journal_with_a_malformed_patch_list_is_refused_and_kept(tmp_path, edit):
    path = tmp_path / "a.fits"
    path.write_bytes(_fits_bytes())
    _interrupted(path, _patches(path), written=1)
    jpath = fitsedit.journal_path(path)
    jpath.write_bytes(_rewrite_meta(jpath.read_bytes(), edit))
    before = path.read_bytes()
    with pytest.raises(ProductError, match="lacks the file size or the patch list") as exc:
        fitsedit.recover(path)
    assert "a journal is the repair data of an interrupted update: inspect it (or restore the " \
           "file from a copy) before removing it" in str(exc.value)
    assert path.read_bytes() == before and jpath.exists()


def test_patch_at_the_first_byte_is_journaled_and_rolled_back(tmp_path):
    path = tmp_path / "a.fits"
    path.write_bytes(_fits_bytes())
    old = path.read_bytes()
    patches = [fitsedit.Patch(0, old[:8], b"XIMPLE  "), fitsedit.Patch(200, old[200:204], b"abcd")]
    _interrupted(path, patches, written=1)
    assert fitsedit.recover(path) == "interrupted update rolled back to the old version"
    assert path.read_bytes() == old


def test_recover_notes_a_file_moved_since_and_refusal_says_what_to_do(tmp_path):
    path = tmp_path / "a.fits"
    path.write_bytes(_fits_bytes())
    old = path.read_bytes()
    _interrupted(path, _patches(path), written=1)
    jpath = fitsedit.journal_path(path)
    meta = json.loads(jpath.read_bytes()[len(fitsedit._JOURNAL_MAGIC):].split(b"\n", 1)[0])
    copy = tmp_path / "copy"                  # restored from a copy: a new inode
    copy.write_bytes(path.read_bytes())
    os.replace(copy, path)
    st = path.stat()
    assert st.st_ino != meta["ino"]
    assert fitsedit.recover(path) == (
        "interrupted update rolled back to the old version (the file's device/inode "
        f"{st.st_dev}/{st.st_ino} differ from the journal's {meta['dev']}/{meta['ino']}: taken "
        "as the same file moved, copied or remounted, its bytes matching the journal)")
    assert path.read_bytes() == old
    _interrupted(path, _patches(path), written=1)
    with open(path, "ab") as fh:
        fh.write(b"\0" * BLOCK)
    with pytest.raises(ProductError) as exc:
        fitsedit.recover(path)
    assert str(exc.value).endswith(
        "the file was changed since; neither rolled back nor touched - inspect the file and the "
        "journal (it holds the old and new bytes of every patched range) before deciding what to "
        "keep")


# --------------------------------------------------------------------------- patching (2)


def test_short_writes_are_continued_until_each_patch_is_written(tmp_path, monkeypatch):
    path = tmp_path / "a.fits"
    path.write_bytes(_fits_bytes())
    want = bytearray(path.read_bytes())
    patches = _patches(path)
    for p in patches:
        want[p.offset:p.offset + len(p.new)] = p.new
    real = os.pwrite
    monkeypatch.setattr(os, "pwrite", lambda fd, data, offset: real(fd, bytes(data[:7]), offset))
    fitsedit.patch_in_place(path, patches)
    assert path.read_bytes() == bytes(want)


def test_patch_without_journal_writes_none_and_skips_the_fault_hook(tmp_path, monkeypatch):
    import time

    path = tmp_path / "a.fits"
    path.write_bytes(_fits_bytes())
    rec = Recorder(monkeypatch)
    slept = []
    monkeypatch.setattr(time, "sleep", slept.append)
    monkeypatch.setenv(fitsedit.FAULT_ENV, "journal:0")
    fitsedit.patch_in_place(path, _patches(path), journal=False)
    assert not [c for c in rec.calls if c[0] in ("replace", "unlink")], rec.calls
    assert slept == [] and path.read_bytes()[100:140] == b"Z" * 40


def test_fault_hook_runs_inside_the_journal_window(tmp_path, monkeypatch):
    import time

    path = tmp_path / "a.fits"
    path.write_bytes(_fits_bytes())
    old = path.read_bytes()
    seen = []
    monkeypatch.setattr(time, "sleep", lambda s: seen.append(
        (s, fitsedit.journal_path(path).exists(), path.read_bytes())))
    monkeypatch.setenv(fitsedit.FAULT_ENV, "patch:0")
    fitsedit.patch_in_place(path, _patches(path))
    [(secs, journal, mid)] = seen
    assert secs == 0.0 and journal
    assert mid[100:140] == b"Z" * 40 and mid[BLOCK + 7:BLOCK + 17] == old[BLOCK + 7:BLOCK + 17]
    assert path.read_bytes()[BLOCK + 7:BLOCK + 17] == b"Y" * 10


def test_failed_patch_keeps_the_journal_and_says_the_next_run_rolls_back(tmp_path, monkeypatch):
    import errno

    from stk_astrometry.errors import OutputError

    path = tmp_path / "a.fits"
    path.write_bytes(_fits_bytes())
    old = path.read_bytes()

    def full(*_a):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(OutputError) as exc:
        fitsedit.patch_in_place(path, _patches(path))
    jpath = fitsedit.journal_path(path)
    assert str(exc.value) == (f"cannot write {path}: No space left on device; its journal "
                              f"{jpath.name} is kept: the next run on this file rolls the "
                              "partial update back")
    monkeypatch.undo()
    assert jpath.exists()
    assert fitsedit.recover(path) == "interrupted update rolled back to the old version"
    assert path.read_bytes() == old


def test_failed_read_before_the_journal_is_one_output_error(tmp_path, monkeypatch):
    import errno

    from stk_astrometry.errors import OutputError

    path = tmp_path / "a.fits"
    path.write_bytes(_fits_bytes())
    old = path.read_bytes()

    def eio(*_a):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "pread", eio)
    with pytest.raises(OutputError, match=rf"^cannot write {path}: Input/output error$"):
        fitsedit.patch_in_place(path, _patches(path))
    assert path.read_bytes() == old and not fitsedit.journal_path(path).exists()


# --------------------------------------------------------------------------- copies (2)


def _spy_copy_calls(monkeypatch):
    calls = {"cfr": [], "fadvise": []}
    real_cfr, real_fadv = os.copy_file_range, os.posix_fadvise

    def cfr(src, dst, count, offset_src=None, offset_dst=None):
        calls["cfr"].append((count, offset_src))
        return real_cfr(src, dst, count, offset_src, offset_dst)

    def fadvise(fd, offset, length, advice):
        calls["fadvise"].append((offset, length, advice))
        return real_fadv(fd, offset, length, advice)

    monkeypatch.setattr(os, "copy_file_range", cfr)
    monkeypatch.setattr(os, "posix_fadvise", fadvise)
    return calls


def test_ranges_are_copied_in_kernel_from_their_offsets(tmp_path, monkeypatch):
    src = tmp_path / "a.fits"
    src.write_bytes(_fits_bytes(nblocks=10))
    want = src.read_bytes()
    calls = _spy_copy_calls(monkeypatch)
    monkeypatch.setattr(fitsedit, "_COPY_CHUNK", BLOCK * 3)
    dest = tmp_path / "b.fits"
    fitsedit.rewrite_file(src, dest, [(BLOCK * 5, BLOCK * 5), b"Q" * 10, (BLOCK, BLOCK * 2)])
    assert dest.read_bytes() == want[BLOCK * 5:] + b"Q" * 10 + want[BLOCK:BLOCK * 3]
    assert calls["cfr"] == [(BLOCK * 3, BLOCK * 5), (BLOCK * 2, BLOCK * 8), (BLOCK * 2, BLOCK)]


@pytest.mark.parametrize("cfr", [True, False])
def test_write_back_of_every_copied_chunk_is_started_at_once(tmp_path, monkeypatch, cfr):
    src = tmp_path / "a.fits"
    src.write_bytes(_fits_bytes(nblocks=8))
    calls = _spy_copy_calls(monkeypatch)
    if not cfr:
        monkeypatch.delattr(os, "copy_file_range")
    monkeypatch.setattr(fitsedit, "_COPY_CHUNK", BLOCK * 3)
    fitsedit.rewrite_file(src, tmp_path / "b.fits", [b"H" * 100, (0, BLOCK * 8)])
    assert calls["fadvise"] == [(100, BLOCK * 3, os.POSIX_FADV_DONTNEED),
                                (100 + BLOCK * 3, BLOCK * 3, os.POSIX_FADV_DONTNEED),
                                (100 + BLOCK * 6, BLOCK * 2, os.POSIX_FADV_DONTNEED)]
    calls["fadvise"].clear()
    monkeypatch.setattr(fitsedit, "_START_WRITEBACK", False)
    fitsedit.rewrite_file(src, tmp_path / "c.fits", [(0, BLOCK * 8)])
    assert calls["fadvise"] == []


@pytest.mark.parametrize("how", ["copy_file_range", "missing", "failing"])
def test_range_beyond_the_source_end_is_refused(tmp_path, monkeypatch, how):
    from stk_astrometry.errors import FormatError

    src = tmp_path / "a.fits"
    src.write_bytes(_fits_bytes(nblocks=2))
    if how == "missing":
        monkeypatch.delattr(os, "copy_file_range")
    elif how == "failing":
        def exdev(*_a, **_k):
            raise OSError(18, "Invalid cross-device link")
        monkeypatch.setattr(os, "copy_file_range", exdev)
    with pytest.raises(FormatError, match=f"source file shorter than expected at byte {2 * BLOCK}"):
        fitsedit.rewrite_file(src, tmp_path / "b.fits", [(BLOCK, 2 * BLOCK)])
    assert not (tmp_path / "b.fits").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["a.fits"]


def test_rewrite_compressed_names_an_upper_case_product_and_copies_every_byte(tmp_path):
    import gzip

    src = tmp_path / "src.bin"
    src.write_bytes(bytes(range(256)))
    dest = tmp_path / "P_EVT3.FITS.GZ"
    fitsedit.rewrite_file(src, dest, [(7, 1), b"-", (0, 3)], compress=True)
    raw = dest.read_bytes()
    assert raw[10:raw.index(b"\0", 10)] == b"P_EVT3.FITS"
    assert gzip.decompress(raw) == b"\x07-\x00\x01\x02"


def test_rewrite_compressed_is_gzip_level_6_on_text_like_data(tmp_path):
    import zlib

    import numpy as np

    data = " ".join(str(x) for x in np.random.default_rng(1).poisson(30, 20000)).encode()
    c6, c9 = (zlib.compressobj(level, zlib.DEFLATED, -15) for level in (6, 9))
    level6, level9 = c6.compress(data) + c6.flush(), c9.compress(data) + c9.flush()
    assert level6 != level9                    # the data tells the levels apart
    src = tmp_path / "src.txt"
    src.write_bytes(data)
    dest = tmp_path / "t.fits.gz"
    fitsedit.rewrite_file(src, dest, [(0, len(data))], compress=True)
    assert dest.read_bytes()[10 + len(b"t.fits") + 1:-8] == level6


def _open_fds():
    return len(os.listdir("/proc/self/fd"))


def _locked(path):
    import fcntl

    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def test_temporary_copies_are_locked_until_committed_or_discarded_then_released(tmp_path):
    import gzip

    src = tmp_path / "a.fits"
    src.write_bytes(_fits_bytes())
    n0 = _open_fds()
    tmp = fitsedit.copy_file(src, tmp_path / "sub" / "dir" / "b.fits")   # folders made
    assert _locked(tmp)
    fitsedit.commit_temp(tmp, tmp_path / "sub" / "dir" / "b.fits")
    assert not _locked(tmp_path / "sub" / "dir" / "b.fits") and _open_fds() == n0
    tmp = fitsedit.copy_file(src, tmp_path / "c.fits")
    fitsedit.discard_temp(tmp)
    fitsedit.discard_temp(tmp)                 # twice: harmless
    assert not tmp.exists() and _open_fds() == n0
    gz = tmp_path / "d.fits.gz"
    gz.write_bytes(gzip.compress(src.read_bytes()))
    tmp = fitsedit.gunzip_to_temp(gz, gz)
    assert _locked(tmp)
    fitsedit.discard_temp(tmp)
    assert not tmp.exists() and _open_fds() == n0


def test_copy_of_a_missing_source_leaves_nothing(tmp_path):
    from stk_astrometry.errors import OutputError

    n0 = _open_fds()
    with pytest.raises(OutputError, match=r"^cannot copy .*nope\.fits to .*: No such file"):
        fitsedit.copy_file(tmp_path / "nope.fits", tmp_path / "b.fits")
    assert list(tmp_path.iterdir()) == [] and _open_fds() == n0


@pytest.mark.parametrize("exc, raised", [
    (OSError(28, "No space left on device"), "OutputError"),
    (KeyboardInterrupt(), "KeyboardInterrupt"),
])
def test_gunzip_interrupted_leaves_no_temporary_file(tmp_path, monkeypatch, exc, raised):
    import gzip
    import shutil

    gz = tmp_path / "d.fits.gz"
    gz.write_bytes(gzip.compress(_fits_bytes()))
    n0 = _open_fds()

    def fail(*_a, **_k):
        raise exc

    monkeypatch.setattr(shutil, "copyfileobj", fail)
    with pytest.raises(BaseException) as info:
        fitsedit.gunzip_to_temp(gz, gz)
    assert type(info.value).__name__ == raised
    if raised == "OutputError":
        assert str(info.value) == f"cannot decompress {gz} into {tmp_path}: No space left on device"
    assert [p.name for p in tmp_path.iterdir()] == ["d.fits.gz"] and _open_fds() == n0


def test_checksum_sums_and_encoding_are_the_conventions():
    """The ones' complement sum and its ASCII encoding, against astropy's own (the byte writer
    of formats._fits stamps every per-stack file with them)."""
    hdu = fits.PrimaryHDU()
    rng = np.random.default_rng(3)
    values = [0, 1, 0xFFFFFFFF, 0xFFFFFFFE, 0x3A3A3A3A, 0x40404040, 0x5B5C5D5E, 0x60606060,
              0xE8E8E8E8, 0x7F7F7F7F] + [int(v) for v in rng.integers(0, 2**32, 300)]
    for value in values:
        assert fitsedit.encode_checksum(value) == hdu._char_encode(value), hex(value)
    for raw in (b"", bytes(2880), b"\xff" * 5760, rng.integers(0, 256, 2880 * 3, np.uint8).tobytes()):
        for start in (0, 1, 0xFFFFFFFF, 123456789):
            want = int(hdu._compute_checksum(np.frombuffer(raw, np.uint8), start))
            assert fitsedit.ones_complement_sum(raw, start) == want
    assert fitsedit.ones_complement_sum(b"\x00\x00\x00\x05") == 5
    assert fitsedit.ones_complement_sum(b"\xff\xff\xff\xff" * 2) == 0xFFFFFFFF


def test_checksum_encoding_avoids_punctuation_and_decodes_to_its_value():
    """FITS Std App. J: a value encodes as 16 characters without the punctuation between the
    digits and the letters, whose ones' complement sum (less 0x30 each, rotated back) is the
    value; 0 encodes as all '0' (the CHECKSUM of an HDU whose sum is negative zero)."""
    avoid = set(b":;<=>?@[\\]^_`")
    assert fitsedit.encode_checksum(0) == "0" * 16
    rng = np.random.default_rng(20261205)
    for value in [0xFFFFFFFF, 1, 0x80000000, 0xFFFFFFFE, *rng.integers(0, 2**32, 50).tolist()]:
        text = fitsedit.encode_checksum(value).encode("ascii")
        assert len(text) == 16 and not set(text) & avoid and text.isalnum()
        words = bytes(c - 0x30 for c in text[1:] + text[:1])
        assert fitsedit.ones_complement_sum(words) == value


def test_checksum_encoding_of_every_byte_in_every_place():
    """encode_checksum makes each byte's characters once (_byte_chars, remembered): every byte
    value in each of the four places, made afresh and remembered, is astropy's encoding."""
    hdu = fits.PrimaryHDU()
    for _ in range(2):
        fitsedit._BYTE_CHARS.clear()
        for shift in (24, 16, 8, 0):
            for byte in range(256):
                value = (byte << shift) | (0x5A << ((shift + 8) % 32))
                assert fitsedit.encode_checksum(value) == hdu._char_encode(value), hex(value)
    assert len(fitsedit._BYTE_CHARS) == 256
    assert fitsedit.encode_checksum(-1) == hdu._char_encode(0xFFFFFFFF)
    assert fitsedit.encode_checksum(2**40 + 7) == hdu._char_encode(7)


def test_checksum_encoding_uses_the_characters_it_remembers(monkeypatch):
    # a byte's characters are made once: encodings of bytes seen before need no _byte_chars
    hdu = fits.PrimaryHDU()
    fitsedit._BYTE_CHARS.clear()
    assert fitsedit.encode_checksum(0x01020304) == hdu._char_encode(0x01020304)

    def made_again(byte):
        raise AssertionError(f"byte {byte} made again")

    monkeypatch.setattr(fitsedit, "_byte_chars", made_again)
    assert fitsedit.encode_checksum(0x04030201) == hdu._char_encode(0x04030201)
    assert fitsedit.encode_checksum(0x01010101) == hdu._char_encode(0x01010101)
