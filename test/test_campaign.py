"""The campaign modules one by one, without Dask: stack lists, step settings, the run database,
the results table format, progress lines and the report page."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np
import pytest

from stk_astrometry.campaign import database, progress, report, settings, stacks
from stk_astrometry.errors import FormatError, InputError, OutputError, ParameterError
from stk_astrometry.formats import campaign as fmt


def _stack_dir(root, sid, *, wise=True):
    d = root / sid
    d.mkdir(parents=True)
    for suffix in ("_det.fits", "_gaia.fits") + (("_allwise.fits", "_bestnb.fits") if wise else ()):
        (d / f"{sid}{suffix}").write_bytes(b"x")
    return d


def test_stack_list_and_table(tmp_path):
    _stack_dir(tmp_path, "stackA")
    _stack_dir(tmp_path, "stackB", wise=False)
    (tmp_path / "stackB" / "products").mkdir()
    lst = tmp_path / "s.lis"
    lst.write_text("# campaign\nstackA\n\n  stackB   # sparse\n")
    got = stacks.read_stack_list(f"@{lst}")
    assert [s.stackid for s in got] == ["stackA", "stackB"]
    assert got[0].wisefile.endswith("stackA_allwise.fits") and got[1].wisefile is None
    assert got[1].products.endswith("products") and got[0].products is None
    table = tmp_path / "t.csv"
    table.write_text("stackid,detfile,gaiafile\nA,stackA/stackA_det.fits,stackA/stackA_gaia.fits\n"
                     "B,stackA/stackA_det.fits,stackB/stackB_gaia.fits\n")
    got = stacks.read_stack_list(str(table))
    assert [s.stackid for s in got] == ["A", "B"]
    assert all(s.select for s in got)  # one detections file for two stacks: select by id
    assert os.path.isabs(got[0].detfile)


def _stack(sid, folder, **kw):
    paths = {"detfile": f"{folder}/{sid}_det.fits", "gaiafile": f"{folder}/{sid}_gaia.fits"}
    paths.update(kw)
    return stacks.StackInput(stackid=sid, **paths)


@pytest.mark.parametrize("stack", [
    _stack("acisfJ0001_001", "/data/s1", wisefile="/data/s1/acisfJ0001_001_allwise.fits",
           bestnbfile="/data/s1/acisfJ0001_001_bestnb.fits", products="/data/s1/products"),
    _stack("A", "/data/s2"),                                     # optional files missing
    _stack("A", "/data/A", wisefile="/elsewhere/A/A_w.fits"),    # a resolved link elsewhere
    _stack("A", "/data/s3", products="/data/s3/AxA/A"),          # the id twice in a name
    _stack("s", "/data/s4", select=True),
    _stack("1", "/data/s5", gaiafile="/data/s5/1_gaia.fits[GAIA][cols ra,dec]"),
    _stack("sp ace", "/data/\u00e9t\u00e9 dir", wisefile=""),  # spaces, non-ASCII, empty path
    _stack("undecodable", "/data/\udcff", products="/data/\udcff/p"),
    _stack("", "/data/s6"),                                      # blank id: kept as it is
    _stack("A\x01", "/data/s7"),                                # the packing's characters
    _stack("A", "/data/s8", wisefile="/data/s8/\x02"),
    _stack("A", "/a//b"),                                        # split drops a slash
    _stack("A", "/"), _stack("A", "//"),
    stacks.StackInput(stackid="A", detfile="A_det.fits", gaiafile="/g.fits"),  # no folder
])
def test_stack_list_gives_each_stack_back_exactly(stack):
    neighbours = [_stack("B", "/data/x"), _stack("C", "/other/y")]
    got = stacks.StackList([neighbours[0], stack, neighbours[1]])
    assert len(got) == 3
    assert got[1] == stack and got[-2] == stack
    assert got[0] == neighbours[0] and got[2] == neighbours[1]
    assert list(got) == [neighbours[0], stack, neighbours[1]]
    assert got[1:] == [stack, neighbours[1]] and got[::-2] == [neighbours[1], neighbours[0]]
    for bad in (3, -4):
        with pytest.raises(IndexError):
            got[bad]


def test_stack_list_is_packed(tmp_path):
    """The driver holds the stack list for the whole campaign: ~100 bytes a stack, not the
    ~660 of StackInput objects (issue 12, memory flat in the number of stacks)."""
    import tracemalloc

    src = [_stack(f"acisfJ{i:07d}p000000_001", f"/tmp/stk_bench_batch/s{i:05d}",
                  wisefile=f"/tmp/stk_bench_batch/s{i:05d}/acisfJ{i:07d}p000000_001_allwise.fits",
                  bestnbfile=f"/tmp/stk_bench_batch/s{i:05d}/acisfJ{i:07d}p000000_001_bestnb.fits")
           for i in range(2000)]
    tracemalloc.start()
    try:
        packed = stacks.StackList(src)
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert held < 150 * len(src)
    assert not packed._plain
    assert packed[1234] == src[1234]


def test_stack_list_resolves_links(tmp_path):
    """A listed folder or file that is a symbolic link is recorded by its resolved path, as
    Path.resolve() gives it (the list is read with one scandir per folder)."""
    real = _stack_dir(tmp_path / "disk", "stackA")
    elsewhere = tmp_path / "other" / "g.fits"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(b"x")
    (real / "stackA_gaia.fits").unlink()
    (real / "stackA_gaia.fits").symlink_to(elsewhere)
    (tmp_path / "prod").mkdir()
    (real / "products").symlink_to(tmp_path / "prod")
    (tmp_path / "link").symlink_to(tmp_path / "disk")
    lst = tmp_path / "s.lis"
    lst.write_text("link/stackA\n")
    (s,) = stacks.read_stack_list(f"@{lst}")
    root = tmp_path.resolve()
    assert s.detfile == str(root / "disk" / "stackA" / "stackA_det.fits")
    assert s.gaiafile == str(root / "other" / "g.fits")
    assert s.products == str(root / "prod")
    for p in (s.detfile, s.gaiafile, s.wisefile, s.bestnbfile, s.products):
        assert p == str(Path(p).resolve())
    lst.write_text("link/stackA\ndisk/stackA/\n")
    with pytest.raises(InputError, match="appears twice"):
        stacks.read_stack_list(f"@{lst}")
    (tmp_path / "afile").write_text("")
    lst.write_text("afile\n")
    with pytest.raises(InputError, match="does not exist"):
        stacks.read_stack_list(f"@{lst}")


def test_stack_list_errors(tmp_path):
    _stack_dir(tmp_path, "stackA")
    lst = tmp_path / "s.lis"
    lst.write_text("stackA\nstackA\n")
    with pytest.raises(InputError, match="appears twice"):
        stacks.read_stack_list(f"@{lst}")
    lst.write_text("stackA\nnowhere\n")
    with pytest.raises(InputError, match="line 2"):
        stacks.read_stack_list(f"@{lst}")
    with pytest.raises(ParameterError):
        stacks.read_stack_list("  ")
    table = tmp_path / "t.csv"
    table.write_text("stackid,detfile\nA,x.fits\n")
    with pytest.raises(InputError, match="gaiafile"):
        stacks.read_stack_list(str(table))


def test_inputs_digest_follows_the_files(tmp_path):
    _stack_dir(tmp_path, "stackA")
    (s,) = stacks.read_stack_list(f"@{_write(tmp_path / 'l', 'stackA')}")
    d0 = stacks.inputs_digest(s)
    assert stacks.inputs_digest(s) == d0
    os.utime(s.gaiafile, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert stacks.inputs_digest(s) != d0
    os.unlink(s.wisefile)
    assert stacks.inputs_digest(s) != d0


def _write(path, text):
    path.write_text(text + "\n")
    return path


def test_safe_name():
    assert stacks.safe_name("acisfJ1236480p621200_001") == "acisfJ1236480p621200_001"
    assert stacks.safe_name("a/b c") == "a_b_c"
    assert stacks.safe_name("..") == "_.."


def test_step_settings_from_yaml(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("stk_match:\n  match_radius: 2.5\nstk_xfm:\n  est: mix\nstk_batch:\n  nworkers: 3\n")
    got = settings.load_step_settings([y])
    assert got.match["match_radius"] == 2.5 and got.fit["estimator"] == "mixture"
    assert "detfile" not in got.match and "clobber" not in got.fit and "mode" not in got.update
    assert settings.load_step_settings([]).fit["estimator"] == "spec"
    y.write_text("stk_xfm:\n  outdetfile: x.fits\n")
    with pytest.raises(ParameterError, match="outdetfile"):
        settings.load_step_settings([y])
    y.write_text("stk_xfm:\n  loss: nonsense\n")
    with pytest.raises(ParameterError):
        settings.load_step_settings([y])


def test_params_digest_ignores_key_order():
    assert settings.params_digest({"a": 1, "b": 2.0}) == settings.params_digest({"b": 2.0, "a": 1})
    assert settings.params_digest({"a": 1}) != settings.params_digest({"a": 2})


def _outcome(sid, status="done", d_xi=0.1, warnings=()):
    row = {"stackid": sid, "status": status, "d_xi": d_xi, "d_eta": -0.2, "qa_flags": 0,
           "needs_qa": False, "method": "direct", "n_match": 12, "group": 1,
           "n_match_gaia_group": (5, 9, 12), "n_match_wise_group": (1, 2, 2),
           "failed_step": "" if status == "done" else "match",
           "error": "" if status == "done" else "boom\nsecond line"}
    return {"stackid": sid, "inputs_digest": "i", "params_digest": "p", "elapsed_s": 0.5,
            "worker": "h:1", "steps": [{"step": "match", "status": status, "result": {"x": 1}}],
            "warnings": list(warnings), "row": row}


def test_database_record_and_rows(tmp_path):
    st = [stacks.StackInput(f"s{i}", f"/d{i}", f"/g{i}") for i in range(3)]
    with database.RunDatabase(tmp_path / "c.sqlite") as db:
        db.sync_stacks(st)
        run = db.start_run(host="h", version="v", command="c", scheduler="s")
        db.mark_submitted(["s0", "s1"], run)
        db.record([_outcome("s0", warnings=[("fit", "watch out")]), _outcome("s1", "failed")])
        rows = db.result_rows()
        assert [r["status"] for r in rows] == ["done", "failed", "pending"]
        assert rows[0]["n_match_gaia_group"] == (5, 9, 12) and rows[0]["d_xi"] == 0.1
        assert rows[0]["attempts"] == 1 and rows[2]["attempts"] == 0
        assert db.warnings_of("s0") == [("fit", "watch out")]
        # a rerun replaces the stack's rows: nothing is doubled
        db.record([_outcome("s0", d_xi=0.3)])
        assert db.result_rows()[0]["d_xi"] == 0.3
        assert db.warnings_of("s0") == []
        assert db.counts() == {"done": 1, "failed": 1, "pending": 1}
        # a stack dropped from the list leaves the table but keeps its rows
        db.sync_stacks(st[1:])
        assert [r["stackid"] for r in db.result_rows()] == ["s1", "s2"]
    # reopened: the state is there
    with database.RunDatabase(tmp_path / "c.sqlite") as db:
        assert db.states()["s0"].status == "done"


def test_database_transaction_is_all_or_nothing(tmp_path):
    st = [stacks.StackInput("s0", "/d", "/g")]
    with database.RunDatabase(tmp_path / "c.sqlite") as db:
        db.sync_stacks(st)
        bad = _outcome("s0")
        del bad["row"]
        with pytest.raises(KeyError):
            db.record([_outcome("s0"), bad])
        assert db.states()["s0"].status == "pending"


def test_table_roundtrip(tmp_path):
    rows = [{"stackid": "a", "status": "done", "d_xi": 0.25, "n_match_gaia_g1": 3,
             "qa_reason": "FEWMATCH: only\n2", "needs_qa": True},
            {"stackid": "b", "status": "failed", "error": "x"}]
    rec = fmt.to_records(rows, 2)
    assert rec["d_xi"][1] != rec["d_xi"][1] and rec["n_det"][0] == -1
    assert rec["qa_reason"][0] == "FEWMATCH: only 2"
    fmt.write_campaign_table(rec, tmp_path / "c.fits", header={"NSTACKS": 2})
    back = fmt.read_campaign_table(tmp_path / "c.fits")
    assert back.dtype.names == rec.dtype.names
    assert back["stackid"].tolist() == ["a", "b"] and back["d_xi"][0] == 0.25
    assert back["needs_qa"].tolist() == [True, False]
    text = fmt.format_csv(rec)
    header, first, second = text.splitlines()
    assert header.split(",")[:2] == ["stackid", "status"]
    assert ",0.25," in first and ",true," in first
    assert math.isnan(float(back["d_eta"][0]))
    with pytest.raises(InputError):
        fmt.read_campaign_table(tmp_path / "nothing.fits")


def test_table_values_by_kind():
    # every kind's conversions, the missing values, and the text rule (one line, the width)
    rows = [{"stackid": "  a\tb\n c ", "status": "done", "d_xi": 1, "n_det": 3.0, "needs_qa": 0,
             "qa_reason": "x" * 300, "n_match_gaia_g1": True},
            {"stackid": None, "d_xi": "0.5", "n_det": None, "needs_qa": "no"},
            {}]
    rec = fmt.to_records(rows, 1)
    width = rec.dtype["qa_reason"].itemsize // 4
    assert rec["stackid"].tolist() == ["a b c", "", ""]
    assert rec["d_xi"][0] == 1.0 and rec["d_xi"][1] == 0.5 and math.isnan(rec["d_xi"][2])
    assert rec["n_det"].tolist() == [3, -1, -1]
    assert rec["needs_qa"].tolist() == [False, True, False]     # bool("no") is True
    assert rec["qa_reason"][0] == "x" * width and rec["qa_reason"][1] == ""
    assert rec["n_match_gaia_g1"].tolist() == [1, -1, -1]
    lines = fmt.format_csv(rec).splitlines()
    assert len(lines) == 4
    names = lines[0].split(",")
    first = dict(zip(names, lines[1].split(","), strict=True))
    last = dict(zip(names, lines[3].split(","), strict=True))
    assert first["d_xi"] == "1.0" and first["needs_qa"] == "false" and first["n_det"] == "3"
    assert last["d_xi"] == "" and last["n_det"] == "-1" and last["stackid"] == ""
    assert fmt.format_csv(fmt.to_records([], 1)).splitlines() == [lines[0]]
    with pytest.raises(ValueError):
        fmt.to_records([{"n_det": "three"}], 1)


def _db_with_stacks(path, n):
    st = [stacks.StackInput(f"s{i:03d}", f"/d{i}", f"/g{i}") for i in range(n)]
    db = database.RunDatabase(path)
    db.sync_stacks(st)
    run = db.start_run(host="h", version="v", command="c", scheduler="s")
    db.mark_submitted([s.stackid for s in st], run)
    outs = [_outcome(s.stackid, "failed" if i % 7 == 3 else "done", d_xi=0.01 * i)
            for i, s in enumerate(st[:-2])]          # the last two stay pending
    outs[5]["row"]["n_match_gaia_group"] = (1, 2, 3, 4)  # one stack with a fourth group
    db.record(outs)
    return db


def test_rows_read_in_chunks_equal_the_whole(tmp_path):
    with _db_with_stacks(tmp_path / "c.sqlite", 23) as db:
        chunks = list(db.iter_result_rows(5))
        assert [len(c) for c in chunks] == [5, 5, 5, 5, 3]
        assert [r for c in chunks for r in c] == db.result_rows()
        assert db.max_groups() == 4
    with database.RunDatabase(tmp_path / "empty.sqlite") as db:
        assert db.max_groups() == 0 and list(db.iter_result_rows(5)) == []


def test_outputs_written_in_chunks_equal_one_pass(tmp_path):
    from astropy.io import fits

    from stk_astrometry.campaign import driver

    with _db_with_stacks(tmp_path / "c.sqlite", 23) as db:
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        small, *_ = driver.write_outputs(tmp_path / "a", db, plots=False, chunk=4)
        whole, *_ = driver.write_outputs(tmp_path / "b", db, plots=False, chunk=1000)
        rows = db.result_rows()
    a = fmt.read_campaign_table(tmp_path / "a" / driver.TABLE_NAME)
    b = fmt.read_campaign_table(tmp_path / "b" / driver.TABLE_NAME)
    assert len(a) == 23 and a.dtype.names == b.dtype.names
    assert "n_match_gaia_g4" in a.dtype.names
    for name in a.dtype.names:
        assert np.array_equal(a[name], b[name], equal_nan=a[name].dtype.kind == "f"), name
    assert a["stackid"].tolist() == [r["stackid"] for r in rows]
    assert (tmp_path / "a" / driver.CSV_NAME).read_text() == (tmp_path / "b" / driver.CSV_NAME).read_text()
    with fits.open(tmp_path / "a" / driver.TABLE_NAME, checksum=True) as hdul:
        h = hdul["CAMPAIGN"].header
        assert (h["NSTACKS"], h["NDONE"], h["NFAILED"], h["NPENDING"]) == (23, 18, 3, 2)
        assert h["TCOMM1"] == "Stack id (detect_stack_id)" and "CHECKSUM" in h
    # what the report keeps for every stack: the summary's columns, failures named
    assert small.dtype.names == report.REPORT_COLUMNS
    assert np.array_equal(small["d_xi"], whole["d_xi"], equal_nan=True)
    assert [s for s in small["stackid"].tolist() if s] == ["s003", "s010", "s017"]
    assert small["error"][3] == "boom second line" and small["error"][0] == ""
    assert sorted(os.listdir(tmp_path / "a")) == [driver.CSV_NAME, driver.TABLE_NAME]


def test_campaign_writer_leaves_nothing_when_interrupted(tmp_path):
    rec = fmt.to_records([{"stackid": "a", "status": "done", "d_xi": 0.5}], 2)
    table, csv = tmp_path / "c.fits", tmp_path / "c.csv"
    fmt.write_campaign_table(rec, table, header={"NSTACKS": 1})
    csv.write_text("old\n")
    before = table.read_bytes()
    with pytest.raises(RuntimeError):
        with fmt.CampaignWriter(table, csv, 2) as w:
            w.append(rec)
            raise RuntimeError("killed midway")
    assert table.read_bytes() == before and csv.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.csv", "c.fits"]
    with pytest.raises(FormatError):
        with fmt.CampaignWriter(table, csv, 3) as w:
            w.append(rec)                    # the columns of 2 groups, not 3
    assert table.read_bytes() == before
    with pytest.raises(OutputError, match="cannot write the campaign table"):
        with fmt.CampaignWriter(tmp_path / "gone" / "c.fits", csv, 2) as w:
            w.append(rec)
    assert csv.read_text() == "old\n" and not (tmp_path / "gone").exists()
    # no row at all: a table with every column and no row
    with fmt.CampaignWriter(table, None, 1) as w:
        pass
    back = fmt.read_campaign_table(table)
    assert len(back) == 0 and "n_match_wise_g1" in back.dtype.names


def test_progress_lines():
    import logging

    p = progress.Progress(10, log=logging.getLogger("x"), live=False, interval=1e9)
    p.update(done=3)
    p.update(failed=1, qa=0)
    line = p.line()
    assert line.startswith("4/10 stacks (40.0%): 3 done, 1 failed, 0 need QA;") and "ETA" in line


def test_report_page_is_self_contained(tmp_path):
    rows = [{"stackid": f"s{i}", "status": "done", "d_xi": 0.1 * i, "d_eta": -0.05 * i,
             "shift": 0.1 * i, "d_xi_err": 0.02, "d_eta_err": 0.03, "n_used": 10 + i,
             "n_match": 10 + i, "qa_flags": 4 if i == 3 else 0, "method": "direct"}
            for i in range(6)]
    rows.append({"stackid": "bad<1>", "status": "failed", "failed_step": "match",
                 "error": "no <table>"})
    rec = fmt.to_records(rows, 3)
    page = report.write_report(tmp_path, rec)
    text = page.read_text()
    assert "bad&lt;1&gt;" in text and "no &lt;table&gt;" in text  # escaped
    assert "http" not in text.replace('href="campaign', "")  # nothing external
    for name in report.PLOTS:
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    assert dict(report.qa_reason_counts(rec))["BIGSHIFT"] == 1
    # an empty campaign still gives the four plots
    empty = fmt.to_records([{"stackid": "x", "status": "failed"}], 3)
    (tmp_path / "e").mkdir()
    report.write_report(tmp_path / "e", empty)
    assert all((tmp_path / "e" / n).stat().st_size > 1000 for n in report.PLOTS)
    assert np.all(rec["status"][:6] == "done")
