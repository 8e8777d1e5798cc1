"""The QA queue page in real headless Chromium: it loads with no console error, every
thumbnail decodes.  Marker ``slow`` (needs Debian's chromium): .ci/run installs it and sets
STK_REQUIRE_BROWSER=1, which turns a missing browser into a failure."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from stk_astrometry.qa import queue

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def _png(path, seed):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3, 2), dpi=50)
    fig.subplots().imshow(np.random.default_rng(seed).random((8, 8)))
    fig.savefig(path)


def test_queue_page_in_headless_chromium(tmp_path):
    from browser_check import check_page, find_chromium

    if find_chromium() is None:
        if os.environ.get("STK_REQUIRE_BROWSER"):
            pytest.fail("chromium not installed (Debian: apt-get install chromium)")
        pytest.skip("chromium not installed (Debian: apt-get install chromium)")
    page = tmp_path / "qa" / "queue.html"
    entries = [("acisfJ0000001p000001_001", 4, "BIGSHIFT: total shift 1.80\" > 1\"", 1.5, -1.0,
                ""), ("acisfJ0000002p000002_001", 16 | 8, "DISAGREE & FEWMATCH <tag> & \"q\"",
                      0.2, 0.1, "accept"), ("acisfJ0000003p000003_001", 0, "", 0.1, 0.0, "")]
    for k, (sid, flags, reason, dx, dy, decision) in enumerate(entries):
        folder = tmp_path / sid
        folder.mkdir()
        _png(folder / "sheet.png", k)
        _png(folder / "res.png", k + 10)
        (folder / "ds9.sh").write_text("#!/bin/sh\n")
        queue.update_queue(page, queue.QueueEntry(
            stackid=sid, qa_flags=flags, qa_reason=reason, d_xi=dx, d_eta=dy,
            decision=decision, iteration=1 if decision else 0, operator="op" if decision else "",
            median_before=0.9, median_after=0.3, n_stamps=12, sheet=str(folder / "sheet.png"),
            residuals=str(folder / "res.png"), ds9_script=str(folder / "ds9.sh"),
            transform=str(folder / "xfm.fits")))
    report = check_page(page)
    assert report.errors == [], report.errors
    assert report.title == "stk_qa queue"
    assert len(report.images) == 3
    assert all(w > 0 and h > 0 for _, w, h in report.images), report.images
    # undecided BIGSHIFT first, the clean undecided one, the decided one last
    text = page.read_text()
    assert text.index("acisfJ0000001p000001_001") < text.index("acisfJ0000003p000003_001") \
        < text.index("acisfJ0000002p000002_001")
    assert "&lt;tag&gt;" in text and "<tag>" not in text
    shutil.rmtree(tmp_path / "acisfJ0000003p000003_001")   # a page with a missing thumbnail
    report = check_page(page)
    assert any("load failed" in e or "ERR_FILE_NOT_FOUND" in e for e in report.errors), \
        report.errors
