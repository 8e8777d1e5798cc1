"""Pure pieces of stk_qa: pair roles, region marks, centroids, HISTORY lines, queue order."""

import numpy as np
import pytest
from regions import Regions
from stk_astrometry.formats.regions import PairMarks, format_regions, pair_regions
from stk_astrometry.qa import queue, record
from stk_astrometry.qa.review import pair_status
from stk_astrometry.qa.stamps import centroid


def test_pair_status_rules():
    rid = np.array([1, 1, 2, 3, 4])
    group = np.array([1, 2, 1, 1, 2])
    assert pair_status(rid, group, fit_group=1).tolist() == [
        "used", "unused", "used", "used", "unused"]
    assert pair_status(rid, group, fit_group=0).tolist() == ["used"] * 5
    assert pair_status(rid, group, fit_group=1, include=[1, 4]).tolist() == [
        "used", "unused", "excluded", "excluded", "unused"]
    used = np.array([False, True, False, True, False])
    assert pair_status(rid, group, fit_group=1, used=used, exclude=[3]).tolist() == [
        "unused", "used", "unused", "excluded", "unused"]


def test_region_marks_without_errors_and_shared_counterparts():
    one = np.array([10.0, 10.0])
    marks = PairMarks(
        region_id=np.array([5, 6]), ref_id=np.array([99, 99]), det_ra=one, det_dec=one,
        det_ra_corr=one + 1e-4, det_dec_corr=one, ref_ra=one + 1e-4, ref_dec=one,
        err_r0=np.array([np.nan, 1.2]), err_r1=np.array([np.nan, np.nan]),
        err_ang=np.array([np.nan, 30.0]), status=np.array(["used", "excluded"]))
    text = format_regions(pair_regions(marks), title="t")
    back = Regions.parse(text, format="ds9")
    kinds = [type(r).__name__ for r in back]
    assert kinds.count("PointSkyRegion") == 1            # one crosshair for a shared Gaia source
    ellipses = [r for r in back if type(r).__name__ == "EllipseSkyRegion"]
    assert ellipses[0].width.to_value("arcsec") == pytest.approx(1.0, abs=1e-5)  # NaN: 0.5"
    assert ellipses[2].height.to_value("arcsec") == pytest.approx(2.4, abs=1e-5)  # r1 NaN: r0
    assert ellipses[2].angle.to_value("deg") == pytest.approx(120.0)
    assert "color=red" in text and "# t" in text


def test_centroid_finds_a_source_off_its_start():
    rng = np.random.default_rng(4)
    img = rng.poisson(0.05, (60, 60)).astype(float)
    x = 30.3 + rng.normal(0, 1.2, 400)
    y = 27.6 + rng.normal(0, 1.2, 400)
    np.add.at(img, (np.floor(y + 0.5).astype(int), np.floor(x + 0.5).astype(int)), 1)
    cx, cy = centroid(img, 31.5, 28.5, 3.0)
    assert abs(cx - 30.3) < 0.15 and abs(cy - 27.6) < 0.15
    assert np.isnan(centroid(np.zeros((20, 20)), 10, 10, 2.0)[0])


def test_history_lines_fit_a_card_and_keywords():
    rec = record.QARecord("acisfJ1236480p621200_001", 3, "refit", "a.very.long.operator.name",
                          "2026-12-05T10:00:00", "reason " * 20, 0.3, -0.2, 0.29, -0.25, 12, 4,
                          "0123456789abcdef", "/x/y.fits")
    lines = record.history_lines(rec)
    assert all(len(line) <= 72 for line in lines)
    assert lines[0].startswith("stk_qa iteration 3 ") and all(
        line.startswith("  ") for line in lines[1:] if "operator=" not in line
        and "decision=" not in line)
    assert dict((k, v) for k, v, _ in record.qa_keywords(rec))["QADECIS"] == "refit"


def test_queue_severity_order():
    def entry(sid, flags, shift, decision=""):
        return queue.QueueEntry(stackid=sid, qa_flags=flags, qa_reason="", d_xi=shift,
                                d_eta=0.0, decision=decision)

    entries = [entry("a", 0, 0.1), entry("b", 4, 1.2), entry("c", 16, 0.2), entry("d", 4, 2.0),
               entry("e", 16 | 4, 3.0, "accept"), entry("f", 8, 0.6)]
    order = [e.stackid for e in sorted(entries, key=queue.severity)]
    assert order == ["c", "d", "b", "f", "a", "e"]
    html = queue.render_queue(entries)
    assert html.startswith("<!DOCTYPE html>") and html.count("<tr") == 7
