"""CIAO HISTORY records, long keywords, atomic writes and table input."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from stk_astrometry import __version__
from stk_astrometry.errors import CatalogError, FormatError, InputError, OutputError, ParameterError
from stk_astrometry.fitsutil import (
    add_history,
    atomic_path,
    check_clobber,
    delete_keyword,
    get_keyword,
    history_records,
    set_keyword,
    write_fits,
)
from stk_astrometry.tableio import parse_virtual_filename, read_table, require_columns


class FakeParams:
    tool = "stk_demo"

    def history_items(self):
        return [("infile", "in.fits"), ("outfile", "/a/very/long/path/" + "x" * 60 + "/out.fits"), ("clobber", "yes")]


# ----------------------------------------------------------------- HISTORY


def test_history_record_layout_matches_ciao():
    recs = history_records("dmcopy", [("kernel", "default")], start=21, when="2008-09-18T04:12:21")
    # the real card from a CSC product (ciao-conventions §2.4), value part = cols 9-80
    real_tool = "HISTORY  TOOL  :dmcopy   2008-09-18T04:12:21                            ASC00021"
    real_parm = "HISTORY  PARM  :kernel=default                                          ASC00022"
    assert "HISTORY " + recs[0] == real_tool
    assert "HISTORY " + recs[1] == real_parm
    assert all(len(r) == 72 for r in recs)


def test_long_parameter_continues_on_cont_records():
    value = "/state/partition1/tmp.ascdsl3/L3ASRC____337991216n402/output/acisf01575_001N001_r0085_pha3.fits"
    recs = history_records("dmcopy", [("outfile", value)], start=1, when="2008-09-18T04:12:21")
    assert recs[1][1:5] == "PARM" and recs[2][1:5] == "CONT"
    payload = "".join(r[8:64] for r in recs[1:]).rstrip()
    assert payload == "outfile=" + value
    assert [r[-8:] for r in recs] == ["ASC00001", "ASC00002", "ASC00003"]


def test_stack_parameter_is_expanded_as_stck_records(tmp_path):
    lis = tmp_path / "in.lis"
    lis.write_text("# products\na_evt3.fits\n\nb_evt3.fits\n")
    h = fits.Header()
    add_history(h, "stk_demo", [("infile", f"@{lis}"), ("clobber", "no")], when="2026-01-01T00:00:00")
    records = [str(v) for v in h["HISTORY"] if str(v)[1:5] != "CONT"]  # long paths continue
    assert [r[1:5] for r in records] == ["TOOL", "PARM", "STCK", "STCK", "PARM"]
    assert records[2][8:64].rstrip() == "a_evt3.fits"
    assert records[3][8:64].rstrip() == "b_evt3.fits"


def test_history_counter_continues_and_histnum_tracks_it():
    h = fits.Header()
    h.add_history(" TOOL  :dmcopy   2008-09-18T04:12:21" + " " * 28 + "ASC00035")
    h["HISTNUM"] = 35
    add_history(h, "stk_demo", [("a", "1")], when="2026-01-01T00:00:00")
    vals = [str(c.value) for c in h.cards if c.keyword == "HISTORY"]
    assert vals[1].endswith("ASC00036") and vals[2].endswith("ASC00037")
    assert h["HISTNUM"] == 37


def test_histnum_is_placed_before_the_history_block():
    h = fits.Header()
    h["OBJECT"] = "x"
    add_history(h, "stk_demo", [("a", "1")])
    keys = [c.keyword for c in h.cards]
    assert keys.index("HISTNUM") < keys.index("HISTORY")


# ----------------------------------------------------------------- long keywords


def test_long_keyword_written_as_dtype_dval_and_read_back():
    h = fits.Header()
    h["RA_STACK"] = 150.1
    set_keyword(h, "DEC_STACK", 2.25, "tangent point Dec")
    assert h["DTYPE1"] == "DEC_STACK" and h["DVAL1"] == 2.25
    assert get_keyword(h, "dec_stack") == 2.25
    assert get_keyword(h, "RA_STACK") == 150.1
    set_keyword(h, "DEC_STACK", -3.5)
    assert h["DVAL1"] == -3.5 and "DTYPE2" not in h
    set_keyword(h, "SRC_SIGNIFICANCE", 5.1)
    assert h["DTYPE2"] == "SRC_SIGNIFICANCE"
    assert delete_keyword(h, "DEC_STACK") and get_keyword(h, "DEC_STACK") is None
    assert get_keyword(h, "NOPE_NOT_THERE", "dflt") == "dflt"


def test_long_keyword_read_from_hierarch():
    h = fits.Header()
    h.append(fits.Card("HIERARCH DEC_STACK", 12.5))
    assert get_keyword(h, "DEC_STACK") == 12.5


# ----------------------------------------------------------------- writing


def _hdul():
    t = fits.BinTableHDU.from_columns([fits.Column(name="x", format="D", array=np.arange(5.0))], name="DATA")
    return fits.HDUList([fits.PrimaryHDU(), t])


def test_write_fits_stamps_and_checksums(tmp_path):
    out = tmp_path / "o.fits"
    write_fits(_hdul(), out, FakeParams(), clobber=False)
    with fits.open(out, checksum=True) as hd:  # raises/warns on a bad checksum
        for h in hd:
            assert h.header["CREATOR"] == f"stk_demo - stk_astrometry {__version__}"
            assert "DATE" in h.header and "CHECKSUM" in h.header and "DATASUM" in h.header
            assert h.header["HISTNUM"] == 5  # TOOL + 3 PARM + 1 CONT
            assert str(h.header["HISTORY"][0]).startswith(" TOOL  :stk_demo   ")
    assert not [p for p in tmp_path.iterdir() if p.name != "o.fits"]  # no temp file left


def test_clobber_refused_before_writing(tmp_path):
    out = tmp_path / "o.fits"
    out.write_bytes(b"old")
    with pytest.raises(OutputError, match="Clobber set to no"):
        write_fits(_hdul(), out, FakeParams(), clobber=False)
    assert out.read_bytes() == b"old"
    write_fits(_hdul(), out, FakeParams(), clobber=True)
    assert out.read_bytes()[:6] == b"SIMPLE"


def test_check_clobber_messages(tmp_path):
    check_clobber("", False)
    check_clobber(None, False)
    with pytest.raises(OutputError, match="does not exist"):
        check_clobber(tmp_path / "nodir" / "x.fits", True)
    with pytest.raises(OutputError, match="is a directory"):
        check_clobber(tmp_path, True)


def test_atomic_path_failure_keeps_old_file(tmp_path):
    out = tmp_path / "o.txt"
    out.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(out) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert out.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["o.txt"]


def test_commit_group_syncs_the_data_before_any_rename(tmp_path, monkeypatch):
    """Several outputs of one step (issue 11): each written in full to its temporary, nothing
    renamed inside the block; at its end one syncfs for the data, then the renames, then each
    folder fsynced once -- two journal commits in all, never a rename before the data."""
    from stk_astrometry import fitsutil

    log = _SyncLog(monkeypatch)
    (tmp_path / "b").mkdir()
    outs = [tmp_path / "x.txt", tmp_path / "y.txt", tmp_path / "b" / "z.txt"]
    outs[0].write_text("old")
    with fitsutil.commit_group():
        for i, out in enumerate(outs):
            with atomic_path(out) as tmp:
                tmp.write_text(f"new {i}")
        with fitsutil.commit_group():                      # nested: joins the outer block
            pass
        assert log.calls == [] and outs[0].read_text() == "old" and not outs[1].exists()
        assert len([p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]) == 2
    assert log.names() == ["syncfs", "replace", "replace", "replace", "fsync", "fsync"], log.calls
    assert sorted(c[1] for c in log.calls[4:]) == sorted([str(tmp_path), str(tmp_path / "b")])
    assert [o.read_text() for o in outs] == ["new 0", "new 1", "new 2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "x.txt", "y.txt"]


def test_commit_group_of_one_file_fsyncs_it(tmp_path, monkeypatch):
    from stk_astrometry import fitsutil

    log = _SyncLog(monkeypatch)
    out = tmp_path / "o.txt"
    with fitsutil.commit_group():
        with atomic_path(out) as tmp:
            tmp.write_text("x")
    assert log.names() == ["fsync", "replace", "fsync"]
    assert log.calls[0][1].startswith(str(tmp_path / ".o.txt.")) and log.calls[2][1] == str(tmp_path)


def test_commit_group_that_raises_replaces_nothing(tmp_path, monkeypatch):
    from stk_astrometry import fitsutil

    log = _SyncLog(monkeypatch)
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("old a")
    with pytest.raises(RuntimeError):
        with fitsutil.commit_group():
            with atomic_path(a) as tmp:
                tmp.write_text("new a")
            with atomic_path(b) as tmp:
                tmp.write_text("new b")
            raise RuntimeError("boom")
    assert log.calls == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"] and a.read_text() == "old a"


def test_commit_group_failing_sync_is_an_output_error(tmp_path, monkeypatch):
    from stk_astrometry import fitsutil

    def broken(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(fitsutil, "_syncfs", broken)
    outs = [tmp_path / "a.txt", tmp_path / "b.txt"]
    with pytest.raises(OutputError, match=rf"^cannot write {outs[0]}: Input/output error$"):
        with fitsutil.commit_group():
            for out in outs:
                with atomic_path(out) as tmp:
                    tmp.write_text("x")
    assert list(tmp_path.iterdir()) == []      # nothing renamed, no temporaries left


def test_commit_group_inside_deferred_durability_renames_at_once(tmp_path, monkeypatch):
    from stk_astrometry import fitsutil

    log = _SyncLog(monkeypatch)
    out = tmp_path / "o.txt"
    with fitsutil.deferred_durability(sync=False) as pending:
        with fitsutil.commit_group():
            with atomic_path(out) as tmp:
                tmp.write_text("x")
            assert out.read_text() == "x"
    assert log.names() == ["replace"] and pending.paths == [str(out)]


class _SyncLog:
    """Record, in order, the fsyncs, syncfs calls and renames of the code under test."""

    def __init__(self, monkeypatch):
        from stk_astrometry import fitsutil

        self.calls = []
        real_fsync, real_replace, real_syncfs = os.fsync, os.replace, fitsutil._syncfs

        def fsync(fd):
            self.calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
            return real_fsync(fd)

        def replace(a, b, **kw):
            self.calls.append(("replace", str(b)))
            return real_replace(a, b, **kw)

        def syncfs(fd):
            self.calls.append(("syncfs", os.readlink(f"/proc/self/fd/{fd}")))
            return real_syncfs(fd)

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "replace", replace)
        monkeypatch.setattr(fitsutil, "_syncfs", syncfs)

    def names(self):
        return [c[0] for c in self.calls]


def test_deferred_durability_renames_at_once_and_syncs_once_at_the_end(tmp_path, monkeypatch):
    """Group commit (issue 11): inside the block each output is renamed into place complete,
    with no fsync; the block's end makes all of them durable with one syncfs and one fsync per
    folder -- never before the renames it covers."""
    from stk_astrometry import fitsutil

    log = _SyncLog(monkeypatch)
    (tmp_path / "b").mkdir()
    outs = [tmp_path / "x.txt", tmp_path / "y.txt", tmp_path / "b" / "z.txt"]
    with fitsutil.deferred_durability() as pending:
        for i, out in enumerate(outs):
            with atomic_path(out) as tmp:
                tmp.write_text(f"new {i}")
            assert out.read_text() == f"new {i}"          # in place at once, complete
        with fitsutil.deferred_durability() as inner:      # nested: joins the outer block
            assert inner is pending
            with atomic_path(outs[0]) as tmp:
                tmp.write_text("again")
        assert log.names() == ["replace"] * 4              # nothing synced yet
        assert pending.paths == [str(o) for o in outs] + [str(outs[0])]
    n = len(log.calls)
    assert log.names()[4:] == ["syncfs", "fsync", "fsync"], log.calls   # one fs, two folders
    assert sorted(c[1] for c in log.calls[5:n]) == sorted([str(tmp_path), str(tmp_path / "b")])
    assert pending.paths == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "x.txt", "y.txt"]   # no temps


def test_deferred_durability_syncs_also_when_the_block_raises(tmp_path, monkeypatch):
    from stk_astrometry import fitsutil

    log = _SyncLog(monkeypatch)
    out = tmp_path / "o.txt"
    with pytest.raises(RuntimeError):
        with fitsutil.deferred_durability():
            with atomic_path(out) as tmp:
                tmp.write_text("done before the error")
            raise RuntimeError("boom")
    assert log.names() == ["replace", "syncfs", "fsync"]
    assert out.read_text() == "done before the error"


def test_deferred_durability_without_sync_leaves_it_to_the_caller(tmp_path, monkeypatch):
    from stk_astrometry import fitsutil

    log = _SyncLog(monkeypatch)
    out = tmp_path / "o.txt"
    with fitsutil.deferred_durability(sync=False) as pending:
        with atomic_path(out) as tmp:
            tmp.write_text("x")
    assert log.names() == ["replace"] and pending.paths == [str(out)]
    pending.sync()
    assert log.names() == ["replace", "syncfs", "fsync"] and pending.paths == []


def test_replace_durably_and_immediate_durability_stay_durable_in_a_block(tmp_path, monkeypatch):
    """The journaled editor calls replace_durably directly (its journal must be on disk before
    a header is patched): a deferred block does not change that; immediate_durability makes
    atomic_path durable again inside a block (update_products runs so)."""
    from stk_astrometry import fitsutil

    log = _SyncLog(monkeypatch)
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    with fitsutil.deferred_durability(sync=False) as pending:
        tmp = tmp_path / ".a.txt.tmp"
        tmp.write_text("a")
        fitsutil.replace_durably(tmp, a)
        with fitsutil.immediate_durability():
            with atomic_path(b) as t:
                t.write_text("b")
    assert log.names() == ["fsync", "replace", "fsync"] * 2, log.calls
    assert pending.paths == []


def test_make_durable_falls_back_to_fsync_each_file(tmp_path, monkeypatch):
    """Where syncfs is missing each file is fsynced, then each folder; a file gone since is
    skipped; a write-back error is raised (the caller must not record the files finished)."""
    from stk_astrometry import fitsutil

    log = _SyncLog(monkeypatch)
    monkeypatch.setattr(fitsutil, "_syncfs", lambda fd: False)
    files = [tmp_path / "a.txt", tmp_path / "b.txt"]
    for f in files:
        f.write_text("x")
    fitsutil.make_durable([*files, files[0], tmp_path / "gone.txt"])
    assert log.calls == [("fsync", str(files[0])), ("fsync", str(files[1])),
                         ("fsync", str(tmp_path))]

    def broken(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(fitsutil, "_syncfs", broken)
    with pytest.raises(OSError):
        fitsutil.make_durable(files)
    fitsutil.make_durable([])       # nothing to do, no error


def test_syncfs_is_real_here(tmp_path):
    """On Linux the group commit really calls syncfs(2) (not the per-file fallback)."""
    from stk_astrometry import fitsutil

    if not sys.platform.startswith("linux"):
        pytest.skip("syncfs(2) is Linux's")
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        assert fitsutil._syncfs(fd) is True
    finally:
        os.close(fd)


def test_writer_killed_midway_leaves_old_file_intact(tmp_path):
    """SIGKILL a process while it writes a large FITS file through write_fits."""
    out = tmp_path / "big.fits"
    out.write_bytes(b"old contents")
    script = textwrap.dedent(
        f"""
        import sys, numpy as np
        from astropy.io import fits
        from stk_astrometry.fitsutil import write_fits
        class P:
            tool = "stk_demo"
            def history_items(self): return []
        col = fits.Column(name="x", format="D", array=np.zeros(40_000_000))
        hdul = fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns([col])])
        print("writing", flush=True)
        write_fits(hdul, {str(out)!r}, P(), clobber=True)
        print("done", flush=True)
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env) as proc:
        assert proc.stdout.readline().strip() == b"writing"
        # wait until the temporary file exists and is growing, then kill
        deadline = time.time() + 60
        grown = False
        while time.time() < deadline and not grown:
            tmps = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
            grown = bool(tmps) and tmps[0].stat().st_size > 1_000_000
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert grown, "the writer never got going; the test did not exercise a kill mid-write"
    assert out.read_bytes() == b"old contents"


# ----------------------------------------------------------------- table input


@pytest.mark.parametrize(
    "spec,expected",
    [
        ("det.fits", ("det.fits", None)),
        ("det.fits[DETECTIONS]", ("det.fits", "DETECTIONS")),
        ("dir/det.fits[2]", ("dir/det.fits", 2)),
        ("det.fits[]", ("det.fits", None)),
    ],
)
def test_parse_virtual_filename(spec, expected):
    assert parse_virtual_filename(spec) == expected


@pytest.mark.parametrize("spec", ["", "det.fits[cols ra,dec]", "det.fits[1][x>2]", "det.fits[0]", "[EVENTS]"])
def test_parse_virtual_filename_rejects(spec):
    with pytest.raises(ParameterError):
        parse_virtual_filename(spec)


def _write_cat(tmp_path):
    t = Table({"RA": [1.0, 2.0], "Dec": [3.0, 4.0]})
    path = tmp_path / "cat.fits"
    hdul = fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU(t, name="FIRST"), fits.BinTableHDU(t[:1], name="SECOND")])
    hdul.writeto(path)
    return path


def test_read_table_fits_blocks(tmp_path):
    path = _write_cat(tmp_path)
    tin = read_table(str(path), param="gaiafile")
    assert tin.table.colnames == ["ra", "dec"] and len(tin.table) == 2 and tin.hdu.endswith("[FIRST]")
    assert len(read_table(f"{path}[second]", param="g").table) == 1
    assert len(read_table(f"{path}[3]", param="g").table) == 1
    with pytest.raises(FormatError, match="not a table"):
        read_table(f"{path}[1]", param="g")
    with pytest.raises(InputError, match="no HDU named NOPE"):
        read_table(f"{path}[NOPE]", param="g")
    with pytest.raises(InputError, match="no block"):
        read_table(f"{path}[9]", param="g")


def test_read_table_other_formats(tmp_path):
    t = Table({"SOURCE_ID": np.array([1, 2], dtype=np.int64), "RA": [1.0, 2.0]})
    for name, fmt in [("c.csv", "ascii.csv"), ("c.ecsv", "ascii.ecsv"), ("c.xml", "votable")]:
        t.write(tmp_path / name, format=fmt)
        tin = read_table(str(tmp_path / name), param="gaiafile")
        assert tin.table.colnames == ["source_id", "ra"]
        assert list(tin.table["source_id"]) == [1, 2]


def test_read_table_errors(tmp_path):
    with pytest.raises(InputError, match="gaiafile=.*does not exist"):
        read_table(str(tmp_path / "missing.fits"), param="gaiafile")
    junk = tmp_path / "junk.dat"
    junk.write_bytes(b"\x00\x01\x02 not a table \xff\xfe")
    with pytest.raises(InputError, match="neither FITS nor a table"):
        read_table(str(junk), param="detfile")
    with pytest.raises(InputError, match="is not a FITS file"):
        read_table(f"{junk}[2]", param="detfile")
    empty = tmp_path / "empty.fits"
    empty.write_bytes(b"")
    with pytest.raises(InputError) as exc:
        read_table(str(empty), param="detfile")
    assert "the file is empty" in str(exc.value) and "\n" not in str(exc.value)  # one line, not a dump


def test_require_columns(tmp_path):
    tin = read_table(str(_write_cat(tmp_path)), param="gaiafile")
    cols = require_columns(tin, ["ra", "dec"], aliases={"ra": ["ra_icrs"]}, optional=["pmra"])
    assert cols == {"ra": "ra", "dec": "dec", "pmra": None}
    with pytest.raises(CatalogError, match=r"cat.fits\[FIRST\]: required column 'source_id' is missing"):
        require_columns(tin, ["source_id"])


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to chown")
def test_replace_durably_keeps_owner_group_and_mode(tmp_path):
    from stk_astrometry.fitsutil import replace_durably

    dest = tmp_path / "product.fits"
    dest.write_bytes(b"old")
    os.chown(dest, 65534, 100)
    os.chmod(dest, 0o664)
    tmp = tmp_path / "new.tmp"
    tmp.write_bytes(b"new")  # created by root
    replace_durably(tmp, dest)
    st = dest.stat()
    assert dest.read_bytes() == b"new"
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (65534, 100, 0o664)


# ----------------------------------------------------------------- clobber, same file, temporaries


def test_utc_now_is_cias_time_stamp():
    import datetime
    import re

    from stk_astrometry.fitsutil import utc_now

    now = utc_now()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", now)
    t = datetime.datetime.strptime(now, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.timezone.utc)
    assert abs((datetime.datetime.now(datetime.timezone.utc) - t).total_seconds()) < 5


def test_check_clobber_refusals_name_the_parameter(tmp_path, monkeypatch):
    out = tmp_path / "o.fits"
    out.write_text("x")
    with pytest.raises(OutputError, match=rf"^Clobber set to no, and output file {out} exists "
                                          r"\(outfile\)\.$"):
        check_clobber(out, False)
    with pytest.raises(OutputError, match=r"\(diagfile\)\.$"):
        check_clobber(out, False, param="diagfile")
    check_clobber(out, True)
    check_clobber("   ", False)
    with pytest.raises(OutputError, match=rf"^outdetfile={tmp_path} is a directory, not a file$"):
        check_clobber(tmp_path, True, param="outdetfile")
    with pytest.raises(OutputError, match=r"^outfile=.*nodir/x\.fits: folder .*nodir does not "
                                          r"exist$"):
        check_clobber(tmp_path / "nodir" / "x.fits", False)
    monkeypatch.chdir(tmp_path)
    check_clobber("new.fits", False)          # a bare name: the current folder
    with pytest.raises(OutputError, match="exists"):
        check_clobber("o.fits", False)


def test_check_clobber_refuses_a_folder_it_cannot_write(tmp_path, monkeypatch):
    import stk_astrometry.fitsutil as fu

    monkeypatch.setattr(fu.os, "access", lambda p, mode: mode != os.W_OK)
    with pytest.raises(OutputError, match=r"^outfile=.*o\.fits: folder .* is not writable$"):
        check_clobber(tmp_path / "o.fits", True)


def test_same_file_by_path_link_and_inode(tmp_path, monkeypatch):
    from stk_astrometry.fitsutil import same_file

    a = tmp_path / "a.fits"
    a.write_text("x")
    (tmp_path / "b.fits").write_text("x")
    os.link(a, tmp_path / "hard.fits")
    os.symlink(a, tmp_path / "soft.fits")
    monkeypatch.chdir(tmp_path)
    assert same_file("a.fits", str(a)) and same_file(a, tmp_path / "sub" / ".." / "a.fits")
    assert same_file(a, tmp_path / "hard.fits") and same_file(a, tmp_path / "soft.fits")
    assert not same_file(a, tmp_path / "b.fits")
    assert not same_file(a, tmp_path / "missing.fits")
    assert same_file(tmp_path / "missing.fits", "missing.fits")


def test_make_temp_is_a_locked_hidden_file_beside_the_destination(tmp_path, monkeypatch):
    import fcntl

    from stk_astrometry.fitsutil import make_temp, temp_owner

    fd, tmp = make_temp(tmp_path / "evt.fits")
    try:
        assert tmp.parent == tmp_path and temp_owner(tmp.name) == "evt.fits"
        assert tmp.name.startswith(".evt.fits.") and tmp.name.endswith(".tmp")
        other = os.open(tmp, os.O_RDONLY)
        try:
            with pytest.raises(OSError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(other)
        os.write(fd, b"abc")
        assert tmp.read_bytes() == b"abc"
    finally:
        os.close(fd)
    monkeypatch.chdir(tmp_path)
    fd, tmp = make_temp("bare.fits")
    os.close(fd)
    assert tmp.parent.resolve() == tmp_path.resolve() and (tmp_path / tmp.name).exists()


@pytest.mark.parametrize("name, owner", [
    (".evt.fits.ab12CD_9.tmp", "evt.fits"),
    ("..evt.fits.stkjournal.ab12cd34.tmp", "evt.fits"),
    (".a.b.c.12345678.tmp", "a.b.c"),
    (".evt.fits.ab12cd3.tmp", None),          # 7 characters
    (".evt.fits.ab12cd345.tmp", None),
    ("evt.fits.ab12cd34.tmp", None),          # not hidden
    (".evt.fits.ab12cd34.tmpx", None),
    (".evt.fits.ab-2cd34.tmp", None),
    ("..evt.fits.ab12cd34.tmp", ".evt.fits"),  # a hidden product's temporary, not a journal
])
def test_temp_owner_names_the_file_a_temporary_belongs_to(name, owner):
    from stk_astrometry.fitsutil import temp_owner

    assert temp_owner(name) == owner


def test_remove_orphan_temps_removes_only_dead_writers_temporaries(tmp_path):
    from stk_astrometry.fitsutil import make_temp, remove_orphan_temps

    dead = [tmp_path / ".evt.fits.aaaaaaaa.tmp", tmp_path / "..evt.fits.stkjournal.bbbbbbbb.tmp"]
    for p in dead:
        p.write_text("left by a kill")
    keep = [tmp_path / ".img.fits.cccccccc.tmp", tmp_path / "evt.fits"]
    for p in keep:
        p.write_text("x")
    (tmp_path / ".evt.fits.dddddddd.tmp").mkdir()
    os.symlink(tmp_path / "evt.fits", tmp_path / ".evt.fits.eeeeeeee.tmp")
    fd, live = make_temp(tmp_path / "evt.fits")
    try:
        removed = remove_orphan_temps(tmp_path, "evt.fits")
        assert sorted(removed) == sorted(p.name for p in dead)
        assert not any(p.exists() for p in dead)
        assert all(p.exists() for p in keep) and live.exists()
        assert (tmp_path / ".evt.fits.dddddddd.tmp").is_dir()
        assert os.path.islink(tmp_path / ".evt.fits.eeeeeeee.tmp")
    finally:
        os.close(fd)
    assert remove_orphan_temps(tmp_path, "evt.fits") == [live.name]
    assert remove_orphan_temps(tmp_path / "nowhere", "evt.fits") == []


def test_remove_orphan_temps_without_a_name_removes_every_dead_writers_temporary(tmp_path):
    from stk_astrometry.fitsutil import make_temp, remove_orphan_temps

    dead = [tmp_path / ".a.fits.aaaaaaaa.tmp", tmp_path / ".b.csv.bbbbbbbb.tmp",
            tmp_path / "..c.fits.stkjournal.cccccccc.tmp"]
    for p in dead:
        p.write_text("left by a kill")
    keep = [tmp_path / "a.fits", tmp_path / "notes.tmp", tmp_path / ".a.fits.tmp"]
    for p in keep:
        p.write_text("x")
    fd, live = make_temp(tmp_path / "d.fits")
    try:
        assert sorted(remove_orphan_temps(tmp_path)) == sorted(p.name for p in dead)
        assert all(p.exists() for p in keep) and live.exists()
    finally:
        os.close(fd)


def test_fitsio_on_temp_writes_into_the_locked_temporary_itself(tmp_path, monkeypatch):
    # fitsio's clobber=True would unlink atomic_path's locked temporary and write a new,
    # unlocked file of the same name, which remove_orphan_temps takes for a dead writer's
    import fitsio
    from astropy.io import fits

    from stk_astrometry.fitsutil import atomic_path, fitsio_on_temp, remove_orphan_temps

    monkeypatch.chdir(tmp_path)
    dest = tmp_path / "t.fits"
    data = np.zeros(3, dtype=[("A", "f8")])
    data["A"] = [1.0, 2.0, 3.0]
    with atomic_path(dest) as tmp:
        inode = os.stat(tmp).st_ino
        with fitsio_on_temp(tmp, [{"name": "CONTENT", "value": "TEST", "comment": "what"}]) as f:
            f.write(data, extname="T")
            f[0].write_checksum()
            f[1].write_checksum()
            assert os.stat(tmp).st_ino == inode
            assert remove_orphan_temps(tmp_path) == [] and tmp.exists()
        assert os.stat(tmp).st_ino == inode
    assert os.listdir(tmp_path) == ["t.fits"]      # nothing else written on the way
    with fits.open(dest, checksum=True) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "T"]
        assert hdul[0].header["CONTENT"] == "TEST" and hdul[0].header.comments["CONTENT"] == "what"
        assert hdul[1].data["A"].tolist() == [1.0, 2.0, 3.0]
    assert fitsio.read(str(dest), ext="T")["A"].tolist() == [1.0, 2.0, 3.0]


def test_replace_durably_gives_a_new_file_the_umask_mode(tmp_path):
    from stk_astrometry.fitsutil import replace_durably

    old = os.umask(0o027)
    try:
        tmp = tmp_path / ".n.fits.aaaaaaaa.tmp"
        tmp.write_text("new")
        os.chmod(tmp, 0o600)
        replace_durably(tmp, tmp_path / "n.fits")
    finally:
        os.umask(old)
    assert (tmp_path / "n.fits").read_text() == "new" and not tmp.exists()
    assert (tmp_path / "n.fits").stat().st_mode & 0o7777 == 0o640


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another owner needs root")
def test_replace_durably_gives_the_new_file_the_old_owner_and_group(tmp_path):
    from stk_astrometry.fitsutil import replace_durably

    dest = tmp_path / "p.fits"
    dest.write_text("old")
    os.chown(dest, 1234, 5678)
    os.chmod(dest, 0o2640)
    tmp = tmp_path / ".p.fits.aaaaaaaa.tmp"
    tmp.write_text("new")
    replace_durably(tmp, dest)
    st = dest.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (1234, 5678, 0o2640)
    assert dest.read_text() == "new"


def test_replace_durably_keeps_the_group_when_the_owner_cannot_be_given(tmp_path, monkeypatch):
    import stk_astrometry.fitsutil as fu

    dest = tmp_path / "p.fits"
    dest.write_text("old")
    tmp = tmp_path / ".p.fits.aaaaaaaa.tmp"
    tmp.write_text("new")
    real_stat = os.stat
    calls = []

    class St:
        def __init__(self, st, uid, gid):
            self._st, self.st_uid, self.st_gid = st, uid, gid
            self.st_mode = st.st_mode

    def fake_stat(p, *a, **k):
        st = real_stat(p, *a, **k)
        return St(st, 1, 2) if str(p) == str(dest) else St(st, 3, 4)

    def fake_chown(p, uid, gid):
        calls.append((str(p), uid, gid))
        if uid != -1:
            raise PermissionError("not allowed")

    monkeypatch.setattr(fu.Path, "stat", lambda self: fake_stat(self))
    monkeypatch.setattr(fu.os, "stat", fake_stat)
    monkeypatch.setattr(fu.os, "chown", fake_chown)
    fu.replace_durably(tmp, dest)
    assert calls == [(str(tmp), 1, 2), (str(tmp), -1, 2)]
    assert dest.read_text() == "new"


# ----------------------------------------------------------------- HISTORY and stacks


def test_read_stacks_reads_at_lists_only(tmp_path):
    from stk_astrometry.fitsutil import read_stacks

    lis = tmp_path / "in.lis"
    lis.write_text("  a.fits  \n# comment\n\n b.fits\n")
    items = [("infile", f" @{lis} "), ("pfile", f"@@{lis}"), ("x", "@"), ("y", "plain"),
             ("z", f"@{tmp_path / 'missing.lis'}"), ("w", f"@ {lis}")]
    assert read_stacks(items) == {"infile": ["a.fits", "b.fits"], "w": ["a.fits", "b.fits"]}


def test_history_counter_starts_after_the_largest_record_or_histnum():
    from stk_astrometry.fitsutil import _last_history_number

    h = fits.Header()
    assert _last_history_number(h) == 0
    h["HISTNUM"] = "junk"
    assert _last_history_number(h) == 0
    h["HISTNUM"] = 7
    assert _last_history_number(h) == 7
    h.add_history(" TOOL  :dmcopy   2008-09-18T04:12:21" + " " * 28 + "ASC00012")
    h.add_history(" PARM  :a=1" + " " * 53 + "ASC00003  ")
    h.add_history("free text mentioning ASC00099 in passing")    # not a counter: not at the end
    h["COMMENT"] = "ASC00500"
    assert _last_history_number(h) == 12
    h["HISTNUM"] = 200
    assert _last_history_number(h) == 200


def test_add_history_appends_histnum_when_there_is_no_history():
    h = fits.Header()
    add_history(h, "stk_demo", [("a", "1"), ("b", "2")], when="2026-01-01T00:00:00")
    assert h["HISTNUM"] == 3 and h.comments["HISTNUM"] == "Number of HISTORY records"
    keys = [c.keyword for c in h.cards]
    assert keys == ["HISTNUM", "HISTORY", "HISTORY", "HISTORY"]
    vals = [str(c.value) for c in h.cards if c.keyword == "HISTORY"]
    assert vals[0] == f" TOOL  :{'stk_demo   2026-01-01T00:00:00':<56}ASC00001"
    assert vals[2].startswith(" PARM  :b=2") and vals[2].endswith("ASC00003")


def test_add_history_inserts_histnum_before_existing_history():
    h = fits.Header()
    h["OBJECT"] = "x"
    h.add_history("older record without a counter")
    h.append(("LATER", 1), bottom=True)
    add_history(h, "stk_demo", [("a", "1")], when="2026-01-01T00:00:00")
    keys = [c.keyword for c in h.cards]
    assert keys[:3] == ["OBJECT", "HISTNUM", "HISTORY"] and keys.count("HISTORY") == 3
    assert h["HISTNUM"] == 2


def test_add_history_reads_at_lists_itself_when_not_given(tmp_path):
    lis = tmp_path / "l.lis"
    lis.write_text("one.fits\n")
    h = fits.Header()
    add_history(h, "stk_demo", iter([("infile", f"@{lis}")]), when="2026-01-01T00:00:00")
    recs = [str(c.value) for c in h.cards if c.keyword == "HISTORY"]
    assert [r[1:5] for r in recs if r[1:5] != "CONT"] == ["TOOL", "PARM", "STCK"]
    h2 = fits.Header()
    add_history(h2, "stk_demo", [("infile", f"@{lis}")], stacks={}, when="2026-01-01T00:00:00")
    assert [str(c.value)[1:5] for c in h2.cards if c.keyword == "HISTORY"
            if str(c.value)[1:5] != "CONT"] == ["TOOL", "PARM"]


def test_history_records_replace_non_ascii_and_wrap_the_counter():
    recs = history_records("t", [("name", "caf\u00e9\tx")], start=99999, when="W")
    assert recs[0].endswith("ASC99999") and recs[1].endswith("ASC00000")
    assert recs[1][8:64].rstrip() == "name=caf??x"
    assert history_records("t", [], when="W") == [f" TOOL  :{'t   W':<56}ASC00001"]
    # an empty payload still makes its record
    assert len(history_records("t", [("e", "")], when="W")) == 2


def test_stamp_header_sets_creator_date_and_history():
    from stk_astrometry.fitsutil import stamp_header

    h = fits.Header()
    stamp_header(h, FakeParams(), when="2026-02-03T04:05:06")
    assert h["CREATOR"] == f"stk_demo - stk_astrometry {__version__}"
    assert h.comments["CREATOR"] == "tool that created this output"
    assert h["DATE"] == "2026-02-03T04:05:06"
    assert h.comments["DATE"] == "Date and time of file creation"
    assert str(h["HISTORY"][0]).startswith(" TOOL  :stk_demo   2026-02-03T04:05:06")
    h2 = fits.Header()
    stamp_header(h2, FakeParams())
    assert h2["DATE"][:4].isdigit() and str(h2["HISTORY"][0])[19:38] == h2["DATE"]


# ----------------------------------------------------------------- long keywords


def test_short_keyword_set_with_and_without_a_comment():
    h = fits.Header()
    set_keyword(h, " stackid ", "s1", "detect_stack_id")
    assert h["STACKID"] == "s1" and h.comments["STACKID"] == "detect_stack_id"
    set_keyword(h, "STACKID", "s2")
    assert h["STACKID"] == "s2" and h.comments["STACKID"] == "detect_stack_id"
    assert get_keyword(h, " stackid ") == "s2" and get_keyword(h, "NONE", 5) == 5
    assert delete_keyword(h, "stackid") and "STACKID" not in h
    assert not delete_keyword(h, "STACKID")


def test_long_keyword_pair_updated_in_place_with_its_comment():
    h = fits.Header()
    h["DTYPE3"] = "OTHER_NAME"
    set_keyword(h, "dec_stack", 1.0, "first")
    assert h["DTYPE4"] == "DEC_STACK" and h["DVAL4"] == 1.0 and h.comments["DVAL4"] == "first"
    assert h.comments["DTYPE4"] == "Long key name - value in DVALn"
    set_keyword(h, "DEC_STACK", 2.0, "second")
    assert h["DVAL4"] == 2.0 and h.comments["DVAL4"] == "second" and "DTYPE5" not in h
    set_keyword(h, "DEC_STACK", 3.0)
    assert h["DVAL4"] == 3.0 and h.comments["DVAL4"] == "second"


def test_long_keyword_missing_dval_is_inserted_after_its_dtype():
    h = fits.Header()
    h["DTYPE2"] = "dec_stack"
    h["NEXT"] = 1
    assert get_keyword(h, "DEC_STACK", "absent") == "absent"
    set_keyword(h, "DEC_STACK", 4.5, "c")
    assert [c.keyword for c in h.cards] == ["DTYPE2", "DVAL2", "NEXT"]
    assert h["DVAL2"] == 4.5 and h.comments["DVAL2"] == "c"


def test_long_keyword_existing_hierarch_card_updated_not_duplicated():
    h = fits.Header()
    h.append(fits.Card("HIERARCH DEC_STACK", 1.5))
    set_keyword(h, "DEC_STACK", 2.5)
    assert "DTYPE1" not in h and get_keyword(h, "DEC_STACK") == 2.5
    assert len([c for c in h.cards if c.keyword.upper() == "DEC_STACK"]) == 1
    assert delete_keyword(h, "DEC_STACK") and get_keyword(h, "DEC_STACK") is None
    assert not delete_keyword(h, "DEC_STACK")


def test_long_keyword_delete_removes_dval_and_dunit():
    h = fits.Header()
    h["DTYPE1"] = "RA_TARGETS"
    h["DVAL1"] = 3.0
    h["DUNIT1"] = "deg"
    h["DTYPE2"] = "DEC_STACK"
    h["DVAL2"] = 4.0
    assert delete_keyword(h, "ra_targets")
    assert [c.keyword for c in h.cards] == ["DTYPE2", "DVAL2"]
    h["DTYPE5"] = "LONELY_NAME"
    assert delete_keyword(h, "LONELY_NAME") and "DTYPE5" not in h


def test_write_fits_reports_a_write_failure_as_one_output_error(tmp_path, monkeypatch, caplog):
    out = tmp_path / "o.fits"

    def fail(self, *a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(fits.HDUList, "writeto", fail)
    with pytest.raises(OutputError, match=rf"^cannot write {out}: No space left on device$"):
        write_fits(_hdul(), out, FakeParams(), clobber=False)
    assert list(tmp_path.iterdir()) == []


def test_write_fits_logs_the_name_shown(tmp_path, caplog):
    with caplog.at_level("INFO", logger="stk_astrometry.fitsutil"):
        write_fits(_hdul(), tmp_path / "a.fits", FakeParams(), clobber=False)
        write_fits(_hdul(), tmp_path / "b.fits", FakeParams(), clobber=False, shown_as="final.fits")
    msgs = [r.getMessage() for r in caplog.records]
    assert f"Wrote {tmp_path / 'a.fits'}" in msgs and "Wrote final.fits" in msgs
    with fits.open(tmp_path / "a.fits") as h:
        assert h[0].header["DATE"] == h[1].header["DATE"]


def test_utc_now_is_utc_whatever_the_local_zone(monkeypatch):
    import datetime
    import time

    from stk_astrometry.fitsutil import utc_now

    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        t = datetime.datetime.strptime(utc_now(), "%Y-%m-%dT%H:%M:%S")
        now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
        assert abs((now - t).total_seconds()) < 5
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_write_fits_stamps_every_hdu_with_one_time(tmp_path, monkeypatch):
    import itertools

    import stk_astrometry.fitsutil as fu

    ticks = itertools.count()
    monkeypatch.setattr(fu, "utc_now", lambda: f"2026-01-01T00:00:{next(ticks):02d}")
    write_fits(_hdul(), tmp_path / "o.fits", FakeParams(), clobber=False)
    with fits.open(tmp_path / "o.fits") as h:
        assert h[0].header["DATE"] == h[1].header["DATE"] == "2026-01-01T00:00:00"
        assert str(h[1].header["HISTORY"][0])[19:38] == "2026-01-01T00:00:00"


def test_read_stacks_relative_names_and_undecodable_bytes(tmp_path, monkeypatch):
    from stk_astrometry.fitsutil import read_stacks

    monkeypatch.chdir(tmp_path)
    (tmp_path / "x").write_text("one.fits\n")
    (tmp_path / "@x.lis").write_text("two.fits\n")
    (tmp_path / "u.lis").write_bytes("caf\u00e9.fits\n".encode() + b"bad\xff.fits\n")
    got = read_stacks([("a", "@x"), ("b", "@@x.lis"), ("c", "@u.lis"), ("d", "@"), ("e", "yx")])
    assert got == {"a": ["one.fits"], "c": ["caf\u00e9.fits", "bad\ufffd.fits"]}


def test_history_records_keep_blanks_and_replace_other_non_printables():
    recs = history_records("t", [("a", "caf\u00e9"), ("b", "x y\tz\x7f")], when="W")
    assert recs[1][8:64].rstrip() == "a=caf?"
    assert recs[2][8:64].rstrip() == "b=x y?z?"


def test_eight_character_names_are_plain_keywords():
    h = fits.Header()
    set_keyword(h, "EIGHTCHR", 1.5, "c")
    assert h["EIGHTCHR"] == 1.5 and "DTYPE1" not in h
    assert get_keyword(h, "EIGHTCHR") == 1.5


def test_missing_dval_is_inserted_right_after_its_dtype_among_other_cards():
    h = fits.Header()
    h["A"] = 1
    h["DTYPE2"] = "DEC_STACK"
    h["B"] = 2
    h["C"] = 3
    set_keyword(h, "DEC_STACK", 4.5, "c")
    assert [c.keyword for c in h.cards] == ["A", "DTYPE2", "DVAL2", "B", "C"]


# ----------------------------------------------------------------- durability, the details


def test_commit_group_without_syncfs_fsyncs_each_temporary_before_any_rename(tmp_path,
                                                                             monkeypatch):
    from stk_astrometry import fitsutil

    log = _SyncLog(monkeypatch)
    monkeypatch.setattr(fitsutil, "_syncfs", lambda fd: False)
    outs = [tmp_path / "a.txt", tmp_path / "b.txt"]
    with fitsutil.commit_group():
        for out in outs:
            with atomic_path(out) as tmp:
                tmp.write_text(out.name)
    assert log.names() == ["fsync", "fsync", "replace", "replace", "fsync"], log.calls
    assert all(c[1].startswith(str(tmp_path / ".")) for c in log.calls[:2])   # the temporaries
    assert log.calls[-1] == ("fsync", str(tmp_path))
    assert [o.read_text() for o in outs] == ["a.txt", "b.txt"]


def test_syncfs_loads_libc_once_and_tells_unsupported_from_failed(tmp_path, monkeypatch):
    import ctypes
    import errno

    from stk_astrometry import fitsutil

    if not sys.platform.startswith("linux"):
        pytest.skip("syncfs(2) is Linux's")
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        monkeypatch.setattr(fitsutil, "_LIBC", None)         # load libc here, in this test
        assert fitsutil._syncfs(fd) is True
        assert fitsutil._syncfs(fd) is True                  # from the cached handle
    finally:
        os.close(fd)
    ctypes.set_errno(0)                  # ctypes' own copy of errno: set only by use_errno
    with pytest.raises(OSError) as exc:                      # a real error is raised, with
        fitsutil._syncfs(-1)                                 # the system's errno
    assert exc.value.errno == errno.EBADF

    class Errno:                                             # syncfs answering ENOSYS/EINVAL
        value = None

        @classmethod
        def get_errno(cls):
            return cls.value

    monkeypatch.setattr(fitsutil, "_LIBC", (lambda fd: -1, Errno))
    for Errno.value in (errno.ENOSYS, errno.EINVAL):
        assert fitsutil._syncfs(0) is False                  # not supported: fall back
    Errno.value = errno.EIO
    with pytest.raises(OSError, match="Input/output error"):
        fitsutil._syncfs(0)

    def no_libc(*_a, **_k):
        raise OSError("no C library")

    monkeypatch.setattr(fitsutil, "_LIBC", None)
    monkeypatch.setattr(ctypes, "CDLL", no_libc)
    assert fitsutil._syncfs(0) is False and fitsutil._syncfs(0) is False


def test_replace_durably_fsyncs_the_destination_folder_not_the_current_one(tmp_path,
                                                                          monkeypatch):
    from stk_astrometry.fitsutil import replace_durably

    (tmp_path / "cwd").mkdir()
    (tmp_path / "out").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    tmp = tmp_path / "out" / ".p.fits.aaaaaaaa.tmp"
    tmp.write_text("new")
    log = _SyncLog(monkeypatch)
    replace_durably(tmp, tmp_path / "out" / "p.fits")
    assert log.calls == [("fsync", str(tmp)), ("replace", str(tmp_path / "out" / "p.fits")),
                         ("fsync", str(tmp_path / "out"))]


def test_make_durable_syncs_bare_names_extra_folders_and_skips_missing_ones(tmp_path,
                                                                           monkeypatch):
    from stk_astrometry import fitsutil

    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "sub").mkdir()
    log = _SyncLog(monkeypatch)
    fitsutil.make_durable(["a.txt"], folders=[tmp_path / "sub"])   # a name in the current folder
    assert log.calls == [("syncfs", str(tmp_path)), ("fsync", str(tmp_path)),
                         ("fsync", str(tmp_path / "sub"))]
    log.calls.clear()
    fitsutil.make_durable([tmp_path / "gone" / "x.txt", tmp_path / "a.txt"])   # folder removed
    assert log.calls == [("syncfs", str(tmp_path)), ("fsync", str(tmp_path))]


def test_make_durable_fallback_skips_a_gone_file_and_goes_on(tmp_path, monkeypatch):
    from stk_astrometry import fitsutil

    log = _SyncLog(monkeypatch)
    monkeypatch.setattr(fitsutil, "_syncfs", lambda fd: False)
    files = [tmp_path / "a.txt", tmp_path / "b.txt"]
    for f in files:
        f.write_text("x")
    fitsutil.make_durable([tmp_path / "gone.txt", *files])
    assert log.calls == [("fsync", str(files[0])), ("fsync", str(files[1])),
                         ("fsync", str(tmp_path))]


def test_make_durable_syncs_each_file_system_once(tmp_path, monkeypatch):
    import shutil
    import tempfile

    from stk_astrometry import fitsutil

    if not os.path.isdir("/dev/shm") or os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs a second file system (/dev/shm)")
    other = Path(tempfile.mkdtemp(dir="/dev/shm"))
    try:
        files = [tmp_path / "a.txt", tmp_path / "b.txt", other / "c.txt"]
        for f in files:
            f.write_text("x")
        log = _SyncLog(monkeypatch)
        fitsutil.make_durable(files)
        assert log.calls == [("syncfs", str(tmp_path)), ("syncfs", str(other)),
                             ("fsync", str(tmp_path)), ("fsync", str(other))]
    finally:
        shutil.rmtree(other)


def test_remove_orphan_temps_goes_on_past_a_temporary_it_cannot_open(tmp_path, monkeypatch):
    from stk_astrometry import fitsutil

    names = [f".a.fits.dead000{i}.tmp" for i in range(3)]
    for n in names:
        (tmp_path / n).write_text("x")
    real_open, refused = os.open, []

    def open_(path, *a, **k):
        if str(path).endswith(".tmp") and not refused:
            refused.append(os.path.basename(path))
            raise PermissionError(13, "Permission denied")
        return real_open(path, *a, **k)

    monkeypatch.setattr(os, "open", open_)
    removed = fitsutil.remove_orphan_temps(tmp_path, "a.fits")
    assert sorted(removed) == sorted(set(names) - set(refused)) and len(removed) == 2
    assert [p.name for p in tmp_path.iterdir()] == refused


def test_replace_durably_gives_a_new_file_0666_less_the_umask(tmp_path):
    from stk_astrometry.fitsutil import replace_durably

    old = os.umask(0o022)
    try:
        tmp = tmp_path / ".n.fits.aaaaaaaa.tmp"
        tmp.write_text("new")
        replace_durably(tmp, tmp_path / "n.fits")
    finally:
        os.umask(old)
    assert (tmp_path / "n.fits").stat().st_mode & 0o7777 == 0o644


@pytest.mark.parametrize("refuse", ["chown", "chmod"])
def test_replace_durably_replaces_even_where_owner_group_or_mode_cannot_be_set(tmp_path,
                                                                               monkeypatch,
                                                                               refuse):
    import stk_astrometry.fitsutil as fu

    dest = tmp_path / "p.fits"
    dest.write_text("old")
    tmp = tmp_path / ".p.fits.aaaaaaaa.tmp"
    tmp.write_text("new")

    def refused(*_a, **_k):
        raise PermissionError(1, "Operation not permitted")

    if refuse == "chown":       # neither the owner nor the group may be given
        real_stat = os.stat

        def stat(p, *a, **k):
            st = real_stat(p, *a, **k)
            if str(p) != str(tmp):
                return st
            return os.stat_result((st.st_mode, st.st_ino, st.st_dev, st.st_nlink,
                                   st.st_uid + 1, st.st_gid + 1, st.st_size,
                                   st.st_atime, st.st_mtime, st.st_ctime))

        monkeypatch.setattr(fu.os, "stat", stat)
    monkeypatch.setattr(fu.os, refuse, refused)
    fu.replace_durably(tmp, dest)
    assert dest.read_text() == "new" and not tmp.exists()


def test_read_stacks_reads_utf8_lists_whatever_the_locale(tmp_path):
    from stk_astrometry.fitsutil import read_stacks

    lst = tmp_path / "s.lis"
    lst.write_bytes("caf\u00e9.fits\n".encode())
    assert read_stacks([("s", f"@{lst}")]) == {"s": ["caf\u00e9.fits"]}
    # and where the locale's encoding is ASCII (a C locale without UTF-8 mode):
    code = ("import sys; from stk_astrometry.fitsutil import read_stacks; "
            f"sys.exit(0 if read_stacks([('s', '@{lst}')]) == {{'s': ['caf\\u00e9.fits']}} else 3)")
    env = dict(os.environ, LC_ALL="C", LANG="C", PYTHONUTF8="0", PYTHONCOERCECLOCALE="0",
               PYTHONPATH=str(Path(__import__("stk_astrometry").__file__).parents[1]))
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0


# ----------------------------------------------------------------- write_atomically (issue 11)


def _no_reopen(monkeypatch):
    """write_atomically writes, syncs and sets the mode through the temporary file's own
    descriptor: opening the temporary by path again is the cost it exists to save."""
    from stk_astrometry import fitsutil

    def reopened(*a, **k):
        raise AssertionError(f"temporary reopened by path: {a}")

    monkeypatch.setattr(fitsutil, "open", reopened, raising=False)
    modes = []
    real_chmod = os.chmod

    def chmod(target, mode, **kw):
        modes.append((type(target).__name__, mode))
        return real_chmod(target, mode, **kw)

    monkeypatch.setattr(fitsutil.os, "chmod", chmod)
    return modes


@pytest.mark.parametrize("block", ["none", "deferred", "group"])
def test_write_atomically_renames_complete_bytes_with_atomic_paths_durability(tmp_path,
                                                                                monkeypatch,
                                                                                block):
    from stk_astrometry import fitsutil

    out = tmp_path / "o.fits"
    out.write_bytes(b"old")
    os.chmod(out, 0o664)
    data = bytes(range(256)) * 40
    log = _SyncLog(monkeypatch)
    modes = _no_reopen(monkeypatch)
    old_umask = os.umask(0o027)
    try:
        if block == "none":
            fitsutil.write_atomically(out, data)
            assert log.names() == ["fsync", "replace", "fsync"], log.calls
            assert log.calls[0][1].startswith(str(tmp_path / ".o.fits."))
            assert log.calls[0][1].endswith(".tmp") and log.calls[2][1] == str(tmp_path)
        elif block == "deferred":
            with fitsutil.deferred_durability(sync=False) as pending:
                fitsutil.write_atomically(out, data)
                assert out.read_bytes() == data
            assert log.names() == ["replace"] and pending.paths == [str(out)]
        else:
            with fitsutil.commit_group():
                fitsutil.write_atomically(out, data)
                with atomic_path(tmp_path / "p.fits") as tmp:
                    tmp.write_bytes(b"p")
                assert out.read_bytes() == b"old" and log.calls == []
            assert log.names() == ["syncfs", "replace", "replace", "fsync"], log.calls
    finally:
        os.umask(old_umask)
    assert out.read_bytes() == data
    assert out.stat().st_mode & 0o7777 == 0o664      # the old file's mode kept
    assert modes and modes[0] == ("int" if block != "group" else "PosixPath", 0o664)
    assert sorted(os.listdir(tmp_path)) == ["o.fits"] + (["p.fits"] if block == "group" else [])


def test_write_atomically_gives_a_new_file_0666_less_the_umask_and_keeps_an_owner(tmp_path,
                                                                                  monkeypatch):
    from stk_astrometry import fitsutil

    modes = _no_reopen(monkeypatch)
    old = os.umask(0o027)
    try:
        fitsutil.write_atomically(tmp_path / "n.fits", b"new")
    finally:
        os.umask(old)
    assert (tmp_path / "n.fits").stat().st_mode & 0o7777 == 0o640
    assert modes == [("int", 0o640)]
    if os.geteuid() == 0:
        dest = tmp_path / "p.fits"
        dest.write_bytes(b"old")
        os.chown(dest, 1234, 5678)
        os.chmod(dest, 0o2640)
        fitsutil.write_atomically(dest, b"new")
        st = dest.stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (1234, 5678, 0o2640)
        assert dest.read_bytes() == b"new"


def test_write_atomically_keeps_the_group_when_the_owner_cannot_be_given(tmp_path, monkeypatch):
    """The owner and group set through the descriptor, as replace_durably sets them by path."""
    import stk_astrometry.fitsutil as fu

    dest = tmp_path / "p.fits"
    dest.write_bytes(b"old")
    real_stat = os.stat
    calls = []

    def fake_stat(p, *a, **k):
        st = real_stat(p, *a, **k)
        uid, gid = (1, 2) if str(p) == str(dest) else (3, 4)
        return os.stat_result((st.st_mode, st.st_ino, st.st_dev, st.st_nlink, uid, gid,
                               st.st_size, st.st_atime, st.st_mtime, st.st_ctime))

    def fake_chown(p, uid, gid):
        calls.append((type(p).__name__, uid, gid))
        if uid != -1:
            raise PermissionError("not allowed")

    monkeypatch.setattr(fu.Path, "stat", lambda self: fake_stat(self))
    monkeypatch.setattr(fu.os, "stat", fake_stat)
    monkeypatch.setattr(fu.os, "chown", fake_chown)
    fu.write_atomically(dest, b"new")
    assert calls == [("int", 1, 2), ("int", -1, 2)]
    assert dest.read_bytes() == b"new"


def test_write_atomically_writes_every_byte_of_short_writes(tmp_path, monkeypatch):
    from stk_astrometry import fitsutil

    real_write = os.write
    calls = []

    def short(fd, buffers):
        # at most 1000 bytes a call, ending anywhere: inside a buffer or at its end
        calls.append([len(b) for b in buffers])
        return real_write(fd, b"".join(bytes(b) for b in buffers)[:1000])

    monkeypatch.setattr(fitsutil.os, "writev", short)
    data = os.urandom(4321)
    fitsutil.write_atomically(tmp_path / "s.fits", data)
    assert calls == [[4321], [3321], [2321], [1321], [321]]
    assert (tmp_path / "s.fits").read_bytes() == data
    # a list of buffers: written in order, as many a call as writev takes (16), short writes
    # resumed inside a buffer or at the next one; empty buffers are no trouble
    calls.clear()
    parts = [b"", os.urandom(999), os.urandom(1), b"", os.urandom(1500)] + [b"x"] * 14 + [b"yz"]
    fitsutil.write_atomically(tmp_path / "p.fits", parts)
    monkeypatch.undo()
    assert calls[0] == [0, 999, 1, 0, 1500] + [1] * 11
    assert calls[1] == [1500] + [1] * 14 + [2]
    assert calls[2] == [500] + [1] * 14 + [2]
    assert len(calls) == 3
    assert (tmp_path / "p.fits").read_bytes() == b"".join(parts)


def test_write_atomically_to_a_bare_name_syncs_the_current_folder(tmp_path, monkeypatch):
    """A file named without a folder: its rename is made durable by an fsync of ``.``."""
    from stk_astrometry import fitsutil

    synced = []
    monkeypatch.setattr(fitsutil, "fsync_directory", synced.append)
    monkeypatch.chdir(tmp_path)
    fitsutil.write_atomically("bare.fits", b"new")
    fitsutil.write_atomically(tmp_path / "sub.fits", [b"a", b"b"])
    assert synced == [".", str(tmp_path)]
    assert (tmp_path / "bare.fits").read_bytes() == b"new"
    assert (tmp_path / "sub.fits").read_bytes() == b"ab"


def test_write_atomically_that_fails_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    from stk_astrometry import fitsutil

    out = tmp_path / "o.fits"
    out.write_bytes(b"old")
    real_write = os.write
    calls = []

    def failing(fd, buffers):
        calls.append(fd)
        if len(calls) > 1:
            raise OSError(28, "No space left on device")
        return real_write(fd, bytes(buffers[0][:10]))

    monkeypatch.setattr(fitsutil.os, "writev", failing)
    with pytest.raises(OSError, match="No space left"):
        fitsutil.write_atomically(out, b"x" * 100)
    monkeypatch.undo()
    assert out.read_bytes() == b"old" and os.listdir(tmp_path) == ["o.fits"]
    with pytest.raises(OSError):
        os.fstat(calls[0])                 # the temporary's descriptor closed


def test_atomic_path_syncs_and_sets_the_mode_of_the_file_at_the_temporary_path(tmp_path):
    """atomic_path's caller may replace the temporary file (fitsio clobber=True does): the
    sync and the mode go by path, to the file that is renamed into place."""
    from stk_astrometry import fitsutil

    old = os.umask(0o027)
    try:
        with fitsutil.atomic_path(tmp_path / "r.fits") as tmp:
            tmp.unlink()
            tmp.write_bytes(b"replaced")
            os.chmod(tmp, 0o600)
    finally:
        os.umask(old)
    assert (tmp_path / "r.fits").read_bytes() == b"replaced"
    assert (tmp_path / "r.fits").stat().st_mode & 0o7777 == 0o640


def test_a_temporary_name_taken_is_tried_again_and_the_file_is_private(tmp_path, monkeypatch):
    # write_atomically's temporary file, as tempfile.mkstemp made it (issue 11: its own name
    # generator): a new name when one is taken, mode 0600 until the rename gives the mode
    from stk_astrometry import fitsutil

    draws = iter([b"\x00\x01\x02\x03", b"\x00\x01\x02\x03", b"\xab\xcd\xef\x01"])
    monkeypatch.setattr(fitsutil.os, "urandom", lambda n: next(draws)[:n])
    (tmp_path / ".o.fits.00010203.tmp").write_bytes(b"someone else's")
    fd, tmp = fitsutil._temp_file(str(tmp_path / "o.fits"))
    try:
        assert tmp == str(tmp_path / ".o.fits.abcdef01.tmp")
        assert os.fstat(fd).st_mode & 0o777 == 0o600 and os.path.samestat(os.fstat(fd), os.stat(tmp))
    finally:
        os.close(fd)
    assert (tmp_path / ".o.fits.00010203.tmp").read_bytes() == b"someone else's"
    monkeypatch.setattr(fitsutil.os, "urandom", lambda n: b"\x00\x01\x02\x03"[:n])
    monkeypatch.setattr(fitsutil, "_TEMP_TRIES", 3)
    with pytest.raises(FileExistsError, match="o.fits"):
        fitsutil._temp_file(str(tmp_path / "o.fits"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(fitsutil.os, "urandom", lambda n: b"\x11\x22\x33\x44"[:n])
    fd, tmp = fitsutil._temp_file("bare.fits")        # no folder: the current one
    os.close(fd)
    assert tmp == os.path.join(".", ".bare.fits.11223344.tmp") and os.path.exists(tmp)


def test_a_name_compared_with_many_answers_as_same_file(tmp_path, monkeypatch):
    """fitsutil.FileIdentity (a name's status once, its real path only where a file is
    missing; api compares an output with each input through it) answers as same_file's rule
    -- both existing: the same device and inode, else the same real path -- on every kind of
    pair of names."""
    from stk_astrometry.fitsutil import FileIdentity, same_file

    def rule(a, b):
        try:
            return os.path.samestat(os.stat(a), os.stat(b))
        except OSError:
            return os.path.realpath(a) == os.path.realpath(b)

    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.fits").write_text("a")
    (tmp_path / "b.fits").write_text("b")
    os.link(tmp_path / "a.fits", tmp_path / "hard.fits")
    (tmp_path / "sym.fits").symlink_to(tmp_path / "a.fits")
    (tmp_path / "dangling.fits").symlink_to(tmp_path / "gone.fits")
    (tmp_path / "sub").mkdir()
    names = ["a.fits", str(tmp_path / "a.fits"), "./sub/../a.fits", "b.fits", "hard.fits",
             "sym.fits", "missing.fits", "./missing.fits", str(tmp_path / "missing.fits"),
             "dangling.fits", "gone.fits", "sub"]
    answers = set()
    for path in names:
        for target in names:
            got = FileIdentity(target).same_as(path)
            assert got == rule(path, target) == same_file(path, target), (path, target)
            answers.add((got, os.path.exists(path), os.path.exists(target)))
    out = FileIdentity("missing.fits")          # the real path resolved once, kept
    assert not out.same_as("a.fits") and out._real == str(tmp_path / "missing.fits")
    assert out.same_as("./missing.fits") and out._real == str(tmp_path / "missing.fits")
    present = FileIdentity("a.fits")            # both existing: no real path at all
    assert present.same_as("hard.fits") and present._real is None
    # both existing and not, either answer
    assert {(True, True, True), (False, True, True), (True, False, False),
            (False, False, False), (False, True, False)} <= answers


def test_same_file_of_names_that_do_not_all_exist(tmp_path, monkeypatch):
    # by stat when both exist, else by real path (issue 11): dangling links and link loops
    from stk_astrometry.fitsutil import same_file

    a = tmp_path / "a.fits"
    a.write_text("x")
    os.symlink(tmp_path / "later.fits", tmp_path / "dangling.fits")
    os.symlink(tmp_path / "loop1", tmp_path / "loop2")
    os.symlink(tmp_path / "loop2", tmp_path / "loop1")
    monkeypatch.chdir(tmp_path)
    assert same_file("dangling.fits", tmp_path / "later.fits")     # the file it will write
    assert same_file(tmp_path / "later.fits", "dangling.fits")
    assert not same_file("dangling.fits", a) and not same_file(a, "dangling.fits")
    assert same_file("loop1", "loop1")                  # a link loop does not raise
    assert not same_file("loop1", a) and not same_file(a, "loop1")
    assert not same_file("x.fits", "y.fits") and same_file("x.fits", tmp_path / "x.fits")
    with pytest.raises(ValueError):
        same_file("a\0b", a)


def _history_records_by_the_loop(toolname, items, *, start, when, stacks=None):
    """history_records as it was before its one-record fast path (issue 11): every payload cut
    into 56-character chunks, each cleaned of what is not printable ASCII."""
    records, counter = [], start
    for kind, payload in [("TOOL", f"{toolname}   {when}")] + [
            x for name, value in items
            for x in [("PARM", f"{name}={value}")] + [("STCK", e) for e in (stacks or {}).get(name, ())]]:
        first = True
        while first or payload:
            chunk, payload = payload[:56], payload[56:]
            chunk = "".join(c if 32 <= ord(c) < 127 else "?" for c in chunk)
            records.append(f" {kind if first else 'CONT':<4}  :{chunk:<56}ASC{counter % 100000:05d}")
            counter += 1
            first = False
    return records


def test_history_records_equal_the_chunk_loop_on_every_length_and_text():
    import random

    rng = random.Random(11)
    alphabet = "ab=/_~ \t\x7f\u00e9" + "x" * 8
    for trial in range(400):
        items = [(f"p{j}", "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 125))))
                 for j in range(rng.randint(0, 4))]
        for name, value in [("s", "x" * 54), ("s", "x" * 55), ("s", "x" * 56), ("s", "x" * 57)]:
            items.append((name, value))  # payloads of 56 characters and either side
        stacks = {"p0": ["a" * rng.randint(0, 60), "\u00e9"]} if trial % 3 == 0 else None
        start = rng.choice([1, 2, 99_990, 99_999, 100_000, 123_456])
        got = history_records("tool", items, start=start, when="W", stacks=stacks)
        assert got == _history_records_by_the_loop("tool", items, start=start, when="W",
                                                   stacks=stacks)
        assert all(len(r) == 72 for r in got)
    # the one-record path: exactly 56 characters, the counter wrapping
    recs = history_records("t", [("n", "y" * 54)], start=99_999, when="W")
    assert recs[1] == " PARM  :n=" + "y" * 54 + "ASC00000"
    assert recs[0] == " TOOL  :t   W" + " " * 51 + "ASC99999"


def _check_clobber_by_pathlib(path, clobber, *, param="outfile"):
    """check_clobber as it was before its names as text (issue 11), for the comparison below."""
    import stat as st_

    from stk_astrometry.fitsutil import _stat_or_none

    if path is None or str(path).strip() == "":
        return
    p = Path(path)
    st = _stat_or_none(p)
    if st is not None and st_.S_ISDIR(st.st_mode):
        raise OutputError(f"{param}={path} is a directory, not a file")
    if st is not None and not clobber:
        raise OutputError(f"Clobber set to no, and output file {path} exists ({param}).")
    parent = p.parent
    if st is None:
        folder = _stat_or_none(parent)
        if folder is None or not st_.S_ISDIR(folder.st_mode):
            raise OutputError(f"{param}={path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"{param}={path}: folder {parent} is not writable")


def test_check_clobber_names_the_files_pathlib_names(tmp_path, monkeypatch):
    """check_clobber's names as text (issue 11) look at the files Path(path) and its parent
    name: the same verdict and message as pathlib's for every spelling of a name -- dots,
    doubled slashes, trailing slash or dot, '..', relative or absolute, str or Path -- over files,
    folders, missing names, a file where a folder should be, folders it may not write."""
    from pathlib import PurePosixPath

    from stk_astrometry import fitsutil

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f.fits").write_text("x")
    (tmp_path / "d" / "sub").mkdir()
    (tmp_path / "file").write_text("x")
    monkeypatch.chdir(tmp_path)
    names = ["f.fits", "d/f.fits", "d//f.fits", "d/./f.fits", "./d/f.fits", "d/sub/../f.fits",
             "d/sub", "d/sub/", "d/sub/.", "d/sub/..", "d/new.fits", "d/./new.fits",
             "nodir/new.fits", "file/new.fits", "file/./x", "file/.", "file/..", "file/", "file",
             ".", "..", "/", "d", "d/", "d//", "./f", "new.fits", "d/sub/./", "a\x00b",
             "d/a\x00b", f"{tmp_path}/d/f.fits", f"{tmp_path}//d/./new.fits",
             f"{tmp_path}/file/x"]

    def verdict(check, name, clobber, param):
        try:
            check(name, clobber, param=param)
            return "ok"
        except OutputError as exc:
            return str(exc)
        except (ValueError, TypeError) as exc:
            return type(exc).__name__

    writable = [True]
    real_access = os.access
    monkeypatch.setattr(fitsutil.os, "access",
                        lambda p, mode: writable[0] and real_access(p, mode))
    for name in names:
        for given in (name, Path(name), PurePosixPath(name)):
            for clobber in (True, False):
                for writable[0] in (True, False):
                    got = verdict(check_clobber, given, clobber, "outdetfile")
                    want = verdict(_check_clobber_by_pathlib, given, clobber, "outdetfile")
                    assert got == want, (repr(given), clobber, writable[0])
    # the text used: a pathlib path's own, a str's as given, its folder by dirname ('.' for none)
    from stk_astrometry.fitsutil import _name_and_folder

    assert _name_and_folder(Path("a//b/./c.fits")) == ("a/b/c.fits", "a/b")
    for given in ("a/..", ".", "..", "/", "//a", "/a", "a"):   # a pathlib path's folder: its parent's
        assert _name_and_folder(Path(given)) == (str(Path(given)), str(Path(given).parent))
    assert _name_and_folder("a//b/./c.fits") == ("a//b/./c.fits", "a//b/.")
    assert _name_and_folder("c.fits") == ("c.fits", ".")
    assert _name_and_folder("/c.fits") == ("/c.fits", "/")
    for odd in ("a/", "a/.", "a/..", ".", "..", "/", b"a/c.fits", 5):
        if isinstance(odd, str):
            assert _name_and_folder(odd) == (Path(odd), Path(odd).parent)
        else:
            with pytest.raises(TypeError):
                _name_and_folder(odd)


def test_write_atomically_names_the_output_as_pathlib_does(tmp_path):
    """write_atomically takes a str name normalised as pathlib normalises it (doubled slashes,
    '.' parts) and a pathlib path's text as it is: the file written, and the name a deferred
    block lists for its sync."""
    from stk_astrometry.fitsutil import deferred_durability, write_atomically

    with deferred_durability(sync=False) as pending:
        write_atomically(f"{tmp_path}//./a.fits", b"a" * 2880)
        write_atomically(tmp_path / "b.fits", [b"b" * 2880, bytearray(2880)])
        write_atomically(f"{tmp_path}/c.fits", b"c")
    assert pending.paths == [str(tmp_path / "a.fits"), str(tmp_path / "b.fits"),
                             str(tmp_path / "c.fits")]
    assert (tmp_path / "a.fits").read_bytes() == b"a" * 2880
    assert (tmp_path / "b.fits").read_bytes() == b"b" * 2880 + bytes(2880)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.fits", "b.fits", "c.fits"]
