"""QA flags of a fitted stack (stk_astrometry.xfmfit.decide_qa): which rule raises which bit.

Every threshold is tested on both sides of its boundary, with the comparison the help page
states (``>`` or ``<``, never ``>=``): a value exactly at a threshold does not raise the flag.
"""

import numpy as np
import pytest
from stk_astrometry.xfmfit import QA_BITS, QAThresholds, decide_qa

T = QAThresholds()


def above(x):
    return float(np.nextafter(x, np.inf))


def below(x):
    return float(np.nextafter(x, -np.inf))


def qa(**kwargs):
    base = {"method": "direct", "n_match": 20, "total_shift_arcsec": 0.2, "density": 1.0,
                "det_theta_arcmin": [1.0, 7.0], "det_src_cnts": [50.0, 5.0]}
    base.update(kwargs)
    return decide_qa(**base)


def test_qa_clean():
    result = qa()
    assert result.flags == 0 and result.reason == "" and result.names == ()


def test_qa_nomatch():
    result = qa(method="none", n_match=0, total_shift_arcsec=0.0)
    assert result.flags == 1 and result.names == ("NOMATCH",)
    assert result.reason.startswith("NOMATCH:")


def test_qa_dense():
    assert qa(n_match=9, density=150.0).flags == 2
    assert qa(n_match=10, density=150.0).flags == 0
    assert qa(n_match=9, density=100.0).flags == 0
    # the §5.7 reading (density alone) through a large qa_dense_nmatch
    assert qa(density=150.0, thresholds=QAThresholds(dense_nmatch=10**9)).flags == 2


def test_qa_bigshift():
    result = qa(total_shift_arcsec=1.42)
    assert result.flags == 4
    assert result.reason == 'BIGSHIFT: total shift 1.42" > 1"'


@pytest.mark.parametrize("theta, cnts, shift, why", [
    ([6.0, 7.0], [50.0], 0.2, "no detection within 5'"),
    ([1.0], [10.0, 15.0], 0.2, "no detection above 15 counts"),
    ([1.0], [50.0], 0.6, 'total shift 0.60" > 0.5"'),
])
def test_qa_fewmatch_each_condition(theta, cnts, shift, why):
    result = qa(n_match=2, det_theta_arcmin=theta, det_src_cnts=cnts, total_shift_arcsec=shift)
    assert result.flags == 8
    assert result.reason == f"FEWMATCH: 2 matches < 3 and {why}"


def test_qa_fewmatch_needs_a_condition():
    assert qa(n_match=2).flags == 0


def test_qa_combined_reason_in_bit_order():
    result = qa(n_match=2, det_theta_arcmin=[6.0], total_shift_arcsec=1.42,
                disagree_reason="they differ")
    assert result.flags == 4 | 8 | 16
    assert result.names == ("BIGSHIFT", "FEWMATCH", "DISAGREE")
    assert result.reason.startswith('BIGSHIFT: total shift 1.42" > 1"; FEWMATCH: 2 matches < 3 '
                                    "and no detection within 5'")


def test_qa_says_identity_only_for_a_zero_shift():
    assert "identity" in qa(n_match=0, total_shift_arcsec=0.0).reason
    result = qa(n_match=0, total_shift_arcsec=0.4)
    assert result.flags & 1 and "identity" not in result.reason


def test_qa_extra_nomatch():
    result = qa(extra_nomatch="no ALLWISE-Gaia pairs")
    assert result.flags == 1 and "no ALLWISE-Gaia pairs" in result.reason


# ------------------------------------------------------------------------------ boundaries


def test_defaults_are_the_documented_thresholds():
    assert (T.density, T.dense_nmatch, T.max_shift, T.few_matches, T.theta, T.counts,
            T.few_shift) == (100.0, 10, 1.0, 3, 5.0, 15.0, 0.5)
    assert QA_BITS == {"NOMATCH": 1, "DENSE": 2, "BIGSHIFT": 4, "FEWMATCH": 8, "DISAGREE": 16}


def test_bigshift_only_beyond_max_shift():
    assert qa(total_shift_arcsec=T.max_shift).flags == 0
    assert qa(total_shift_arcsec=above(T.max_shift)).flags == QA_BITS["BIGSHIFT"]
    # the threshold is the parameter, not a constant
    assert qa(total_shift_arcsec=1.2, thresholds=QAThresholds(max_shift=1.25)).flags == 0
    assert qa(total_shift_arcsec=1.3, thresholds=QAThresholds(max_shift=1.25)).flags == 4


def test_dense_needs_fewer_matches_than_dense_nmatch():
    dense = above(T.density)
    assert qa(n_match=T.dense_nmatch - 1, density=dense).flags == QA_BITS["DENSE"]
    assert qa(n_match=T.dense_nmatch, density=dense).flags == 0


def test_dense_needs_a_density_above_the_threshold():
    n = T.dense_nmatch - 1
    assert qa(n_match=n, density=T.density).flags == 0
    assert qa(n_match=n, density=above(T.density)).flags == QA_BITS["DENSE"]
    assert qa(n_match=n, density=150.0, thresholds=QAThresholds(density=200.0)).flags == 0


def test_dense_is_not_judged_without_a_density_or_a_fit():
    assert qa(n_match=1, density=None).flags & QA_BITS["DENSE"] == 0
    assert qa(n_match=1, density=float("nan")).flags & QA_BITS["DENSE"] == 0
    assert qa(method="none", n_match=0, density=1e6, total_shift_arcsec=0.0).names == ("NOMATCH",)


def test_fewmatch_only_below_few_matches():
    # every sub-condition true: a far, faint, shifted detection set
    far_faint = {"det_theta_arcmin": [9.0], "det_src_cnts": [1.0], "total_shift_arcsec": 0.9}
    assert qa(n_match=T.few_matches - 1, **far_faint).flags & QA_BITS["FEWMATCH"]
    assert qa(n_match=T.few_matches, **far_faint).flags & QA_BITS["FEWMATCH"] == 0
    assert qa(n_match=1, **far_faint).flags & QA_BITS["FEWMATCH"]
    # no fit, no FEWMATCH (NOMATCH says it)
    assert qa(n_match=0, **far_faint).flags & QA_BITS["FEWMATCH"] == 0


def test_fewmatch_theta_condition_boundary():
    # "no detection within theta": a detection exactly at theta is not within it
    assert "within 5'" in qa(n_match=2, det_theta_arcmin=[T.theta]).reason
    assert qa(n_match=2, det_theta_arcmin=[below(T.theta), 9.0]).flags == 0


def test_fewmatch_counts_condition_boundary():
    # "no detection above counts": a detection with exactly `counts` counts is not above it
    assert "above 15 counts" in qa(n_match=2, det_src_cnts=[T.counts, 3.0]).reason
    assert qa(n_match=2, det_src_cnts=[above(T.counts)]).flags == 0


def test_fewmatch_shift_condition_boundary():
    assert qa(n_match=2, total_shift_arcsec=T.few_shift).flags == 0
    result = qa(n_match=2, total_shift_arcsec=above(T.few_shift))
    assert result.flags == QA_BITS["FEWMATCH"] and "total shift" in result.reason


def test_fewmatch_thresholds_are_the_parameters():
    t = QAThresholds(few_matches=5, theta=10.0, counts=100.0, few_shift=0.1)
    result = qa(n_match=4, det_theta_arcmin=[9.0], det_src_cnts=[99.0], total_shift_arcsec=0.2,
                thresholds=t)
    assert result.flags == QA_BITS["FEWMATCH"]
    assert "within 10'" not in result.reason
    assert "above 100 counts" in result.reason and '> 0.1"' in result.reason


# ------------------------------------------------------------------------------ reasons


def test_method_none_is_nomatch_whatever_the_count():
    result = qa(method="none", n_match=5, total_shift_arcsec=0.0)
    assert result.flags & QA_BITS["NOMATCH"]


def test_nomatch_reason_says_identity_only_when_nothing_is_applied():
    assert qa(n_match=0, total_shift_arcsec=0.0).reason == (
        "NOMATCH: no matched detections; identity transform")
    assert qa(n_match=0, total_shift_arcsec=0.3).reason == "NOMATCH: no matched detections"
    assert qa(n_match=0, total_shift_arcsec=0.0, extra_nomatch="no ALLWISE-Gaia pairs").reason == (
        "NOMATCH: no matched detections; identity transform; no ALLWISE-Gaia pairs")


def test_fewmatch_reason_lists_every_failed_condition():
    result = qa(n_match=2, det_theta_arcmin=[6.0], det_src_cnts=[3.0], total_shift_arcsec=0.7)
    assert result.reason == ("FEWMATCH: 2 matches < 3 and no detection within 5' and "
                             'no detection above 15 counts and total shift 0.70" > 0.5"')
