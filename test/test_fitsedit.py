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
