"""A corpus of bad inputs across the five tools: each ends in CIAO error lines and nothing else.

For every case: exit status 1; every line on stderr is a CIAO ``# tool (stk_astrometry
X.Y.Z): ERROR ...`` line (one line per bad input: a run-level error is exactly one line);
no traceback, no raw library warning; nothing written and no input changed (every file
under the test's folder keeps its bytes, and no file or folder appears).

Runs each tool's ``main()`` in-process (a run is ~10-100 ms); the runner is the same one the
executables use.
"""

import hashlib
import shutil
import warnings
from pathlib import Path

import pytest
from astropy.io import fits

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "share" / "sample"
GOLDEN = REPO / "test" / "golden"
STACK = "acisfJ1236480p621200_001"


def _main(tool):
    import importlib

    return importlib.import_module(f"stk_astrometry.tools.{tool}").main


def _snapshot(folder: Path):
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


# --------------------------------------------------------------------------- inputs

def _world(tmp: Path):
    """Good inputs to spoil: catalogs, a pairs file, a transform, a product."""
    w = {}
    for kind in ("det", "gaia", "allwise", "bestnb"):
        w[kind] = tmp / f"{kind}.fits"
        shutil.copy(SAMPLE / f"{STACK}_{kind}.fits", w[kind])
    w["pairs"] = tmp / "pairs.fits"
    shutil.copy(GOLDEN / "pairs.fits", w["pairs"])
    w["xfm"] = tmp / "xfm.fits"
    shutil.copy(GOLDEN / "xfm.fits", w["xfm"])
    prod = tmp / "products"
    prod.mkdir()
    evt = next((SAMPLE / "products").rglob("*N001_evt3.fits"))
    w["evt"] = prod / evt.name
    shutil.copy(evt, w["evt"])
    return w


def _truncate(path: Path, keep=0.5):
    raw = path.read_bytes()
    path.write_bytes(raw[:int(len(raw) * keep)])
    return path


def _text(path: Path, content, *, raw=False):
    if raw:
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def _string_ra(w, tmp):
    """The detection catalog with its RA column stored as text."""
    with fits.open(w["det"]) as hdul:
        t = hdul[1]
        cols = []
        for c in t.columns:
            if c.name.lower() == "ra":
                cols.append(fits.Column(c.name, "20A", array=[f"{v:.6f}" for v in t.data[c.name]]))
            else:
                cols.append(fits.Column(c.name, c.format, unit=c.unit, array=t.data[c.name]))
        new = fits.BinTableHDU.from_columns(cols, header=t.header, name=t.name)
        out = tmp / "det_strra.fits"
        fits.HDUList([hdul[0].copy(), new]).writeto(out)
    return out


def _drop_column(w, tmp, key, name):
    with fits.open(w[key]) as hdul:
        t = hdul[1]
        keep = [c for c in t.columns if c.name.lower() != name]
        new = fits.BinTableHDU.from_columns(fits.ColDefs(keep), header=t.header, name=t.name)
        out = tmp / f"{key}_no_{name}.fits"
        fits.HDUList([hdul[0].copy(), new]).writeto(out)
    return out


def _xfm_nan(w, tmp):
    out = tmp / "xfm_nan.fits"
    shutil.copy(w["xfm"], out)
    with fits.open(out, mode="update") as hdul:
        hdul["STKXFM"].data["d_xi"][:] = float("nan")
    return out


def _journal(w, tmp):
    from stk_astrometry import fitsedit

    fitsedit.journal_path(w["evt"]).write_bytes(b"STKJOURNAL 1\n{not json\n")
    return w["evt"]


NOT_UTF8 = b"\xff\xfe1\n"
M, X, U, S, P = "stk_match", "stk_xfm", "stk_update_wcs", "stk_simulate", "stk_param"

# (id, tool, argv builder taking (world, tmp) -> list of args)
CASES = [
    # ---- stk_match
    ("match-det-missing", M, lambda w, t: [t / "nope.fits", w["gaia"], t / "out.fits"]),
    ("match-det-is-folder", M, lambda w, t: [t / "products", w["gaia"], t / "out.fits"]),
    ("match-det-empty", M, lambda w, t: [_text(t / "e.fits", ""), w["gaia"], t / "out.fits"]),
    ("match-det-truncated", M, lambda w, t: [_truncate(w["det"]), w["gaia"], t / "out.fits"]),
    ("match-det-text", M, lambda w, t: [_text(t / "d.fits", "ra dec\n1 2\n"), w["gaia"],
                                        t / "out.fits"]),
    ("match-det-string-ra", M, lambda w, t: [_string_ra(w, t), w["gaia"], t / "out.fits"]),
    ("match-det-no-ra", M, lambda w, t: [_drop_column(w, t, "det", "ra"), w["gaia"],
                                         t / "out.fits"]),
    ("match-gaia-truncated", M, lambda w, t: [w["det"], _truncate(w["gaia"], 0.3),
                                              t / "out.fits"]),
    ("match-gaia-is-det", M, lambda w, t: [w["det"], w["pairs"], t / "out.fits"]),
    ("match-out-no-folder", M, lambda w, t: [w["det"], w["gaia"], t / "no" / "out.fits"]),
    ("match-out-is-input", M, lambda w, t: [w["det"], w["gaia"], w["det"], "clobber=yes"]),
    ("match-out-exists", M, lambda w, t: [w["det"], w["gaia"], w["pairs"]]),
    ("match-radius-nan", M, lambda w, t: [w["det"], w["gaia"], t / "o.fits", "match_radius=nan"]),
    ("match-radius-inf", M, lambda w, t: [w["det"], w["gaia"], t / "o.fits", "match_radius=inf"]),
    ("match-radius-negative", M, lambda w, t: [w["det"], w["gaia"], t / "o.fits",
                                               "match_radius=-1"]),
    ("match-r-stack-overflow", M, lambda w, t: [w["det"], w["gaia"], t / "o.fits",
                                                "r_stack=1e400"]),
    ("match-sep-bins-text", M, lambda w, t: [w["det"], w["gaia"], t / "o.fits", "sep_bins=a,b"]),
    ("match-sep-bins-decreasing", M, lambda w, t: [w["det"], w["gaia"], t / "o.fits",
                                                   "sep_bins=3,2,1"]),
    ("match-method-bogus", M, lambda w, t: [w["det"], w["gaia"], t / "o.fits", "method=bogus"]),
    ("match-unknown-param", M, lambda w, t: [w["det"], w["gaia"], t / "o.fits", "foo=1"]),
    ("match-ra-stack-400", M, lambda w, t: [w["det"], w["gaia"], t / "o.fits", "ra_stack=400",
                                            "dec_stack=10"]),
    ("match-verbose-huge", M, lambda w, t: [w["det"], w["gaia"], t / "o.fits",
                                            "verbose=" + "9" * 40]),
    ("match-yaml-not-utf8", M, lambda w, t: [
        "@@" + str(_text(t / "c.yaml", b"stk_match:\n  match_radius: \xff\xfe\n", raw=True))]),
    ("match-yaml-nan", M, lambda w, t: [
        w["det"], w["gaia"], t / "o.fits",
        "@@" + str(_text(t / "c.yaml", "stk_match:\n  match_radius: .nan\n"))]),
    ("match-yaml-long-int", M, lambda w, t: [
        w["det"], w["gaia"], t / "o.fits",
        "@@" + str(_text(t / "c.yaml", "stk_match:\n  verbose: " + "7" * 50 + "\n"))]),
    ("match-yaml-not-mapping", M, lambda w, t: [
        w["det"], w["gaia"], t / "o.fits", "@@" + str(_text(t / "c.yaml", "- 1\n- 2\n"))]),
    ("match-yaml-broken", M, lambda w, t: [
        w["det"], w["gaia"], t / "o.fits", "@@" + str(_text(t / "c.yaml", "stk_match: [\n"))]),
    ("match-par-missing", M, lambda w, t: ["@@" + str(t / "nope.par")]),
    ("match-stackid-absent", M, lambda w, t: [w["det"], w["gaia"], t / "o.fits",
                                              "stackid=nosuchstack"]),
    ("match-wise-truncated", M, lambda w, t: [w["det"], w["gaia"], t / "o.fits",
                                              f"wisefile={_truncate(w['allwise'])}",
                                              f"bestnbfile={w['bestnb']}"]),
    # ---- stk_xfm
    ("xfm-pairs-truncated", X, lambda w, t: [_truncate(w["pairs"]), t / "x.fits"]),
    ("xfm-pairs-is-catalog", X, lambda w, t: [w["det"], t / "x.fits"]),
    ("xfm-pairs-missing", X, lambda w, t: [t / "nope.fits", t / "x.fits"]),
    ("xfm-pairs-empty", X, lambda w, t: [_text(t / "p.fits", ""), t / "x.fits"]),
    ("xfm-out-is-input", X, lambda w, t: [w["pairs"], w["pairs"], "clobber=yes"]),
    ("xfm-f-scale-nan", X, lambda w, t: [w["pairs"], t / "x.fits", "f_scale=nan"]),
    ("xfm-max-shift-inf", X, lambda w, t: [w["pairs"], t / "x.fits", "max_shift=inf"]),
    ("xfm-estimator-bogus", X, lambda w, t: [w["pairs"], t / "x.fits", "estimator=bogus"]),
    ("xfm-include-missing", X, lambda w, t: [w["pairs"], t / "x.fits",
                                             f"include={t / 'ids.txt'}"]),
    ("xfm-include-not-utf8", X, lambda w, t: [
        w["pairs"], t / "x.fits", "include=" + str(_text(t / "ids.txt", NOT_UTF8, raw=True))]),
    ("xfm-min-group-zero", X, lambda w, t: [w["pairs"], t / "x.fits", "min_group_matches=0"]),
    ("xfm-outdet-is-input", X, lambda w, t: [w["pairs"], t / "x.fits",
                                             f"outdetfile={w['pairs']}", "clobber=yes"]),
    ("xfm-diag-no-folder", X, lambda w, t: [w["pairs"], t / "x.fits",
                                            f"diagfile={t / 'no' / 'd.fits'}"]),
    ("xfm-sys-floor-negative", X, lambda w, t: [w["pairs"], t / "x.fits", "sys_floor=-1"]),
    ("xfm-overflow", X, lambda w, t: [w["pairs"], t / "x.fits", "max_shift=1e400"]),
    ("xfm-verbose-long-int", X, lambda w, t: [w["pairs"], t / "x.fits",
                                              "verbose=" + "9" * 400]),
    ("xfm-yaml-inf", X, lambda w, t: [
        w["pairs"], t / "x.fits", "@@" + str(_text(t / "c.yaml", "stk_xfm:\n  f_scale: .inf\n"))]),
    # ---- stk_update_wcs
    ("upd-xfm-truncated", U, lambda w, t: [w["evt"], _truncate(w["xfm"]), "outdir="]),
    ("upd-xfm-missing", U, lambda w, t: [w["evt"], t / "nope.fits", "outdir="]),
    ("upd-xfm-is-pairs", U, lambda w, t: [w["evt"], w["pairs"], "outdir="]),
    ("upd-xfm-nan", U, lambda w, t: [w["evt"], _xfm_nan(w, t), "outdir="]),
    ("upd-infile-missing", U, lambda w, t: [t / "nope.fits", w["xfm"], "outdir="]),
    ("upd-infile-empty-folder", U, lambda w, t: [_mkdir(t / "empty"), w["xfm"], "outdir="]),
    ("upd-outdir-is-file", U, lambda w, t: [w["evt"], w["xfm"], f"outdir={w['det']}"]),
    ("upd-outdir-inside-input", U, lambda w, t: [t / "products", w["xfm"],
                                                 f"outdir={t / 'products' / 'out'}"]),
    ("upd-lock-timeout-negative", U, lambda w, t: [w["evt"], w["xfm"], "outdir=",
                                                   "lock_timeout=-1"]),
    ("upd-lock-timeout-nan", U, lambda w, t: [w["evt"], w["xfm"], "outdir=",
                                              "lock_timeout=nan"]),
    ("upd-product-bogus", U, lambda w, t: [w["evt"], w["xfm"], "outdir=", "product=BOGUS"]),
    ("upd-replace-and-force", U, lambda w, t: [w["evt"], w["xfm"], "outdir=", "replace=yes",
                                               "force=yes"]),
    ("upd-journal-malformed", U, lambda w, t: [_journal(w, t), w["xfm"], "outdir="]),
    ("upd-product-truncated", U, lambda w, t: [_truncate(w["evt"], 0.7), w["xfm"], "outdir="]),
    ("upd-list-missing", U, lambda w, t: ["@" + str(t / "nope.lis"), w["xfm"], "outdir="]),
    ("upd-unknown-bogus", U, lambda w, t: [w["evt"], w["xfm"], "outdir=", "unknown=bogus"]),
    ("upd-copy-fails-no-folders", U, lambda w, t: [_truncate(w["evt"], 0.7), w["xfm"],
                                                   f"outdir={t / 'copies' / 'deep'}"]),
    ("upd-yaml-not-utf8", U, lambda w, t: [
        w["evt"], w["xfm"], "outdir=",
        "@@" + str(_text(t / "c.yaml", b"stk_update_wcs:\n  unknown: \xe9\n", raw=True))]),
    # ---- stk_simulate
    ("sim-ndet-negative", S, lambda w, t: [f"outdir={t / 'sim'}", "ndet=-5"]),
    ("sim-seed-overflow", S, lambda w, t: [f"outdir={t / 'sim'}", "seed=1e400"]),
    ("sim-seed-negative", S, lambda w, t: [f"outdir={t / 'sim'}", "seed=-1"]),
    ("sim-seed-nan", S, lambda w, t: [f"outdir={t / 'sim'}", "seed=nan"]),
    ("sim-outdir-is-file", S, lambda w, t: [f"outdir={w['det']}"]),
    ("sim-ra-nan", S, lambda w, t: [f"outdir={t / 'sim'}", "ra_stack=nan"]),
    ("sim-frac-above-one", S, lambda w, t: [f"outdir={t / 'sim'}", "gaia_frac=2"]),
    ("sim-outdir-not-empty", S, lambda w, t: [f"outdir={t / 'products'}"]),
    ("sim-instrument-bogus", S, lambda w, t: [f"outdir={t / 'sim'}", "instrument=XMM"]),
    ("sim-shift-inf", S, lambda w, t: [f"outdir={t / 'sim'}", "shift_xi=inf"]),
    ("sim-yaml-nan", S, lambda w, t: [
        f"outdir={t / 'sim'}", "@@" + str(_text(t / "c.yaml", "stk_simulate:\n  ndet: .nan\n"))]),
    # ---- stk_param
    ("param-no-args", P, lambda w, t: []),
    ("param-tool-bogus", P, lambda w, t: ["get", "stk_nothing", "x"]),
    ("param-name-bogus", P, lambda w, t: ["set", "stk_match", "nosuch=1"]),
    ("param-value-bad-type", P, lambda w, t: ["set", "stk_match", "match_radius=abc"]),
    ("param-value-nan", P, lambda w, t: ["set", "stk_match", "match_radius=nan"]),
    ("param-verb-bogus", P, lambda w, t: ["frobnicate", "stk_match"]),
]


def _mkdir(path: Path):
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 60
    assert {tool for _, tool, _ in CASES} == {M, X, U, S, P}


@pytest.mark.parametrize("tool, build", [(t, b) for _, t, b in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_input_is_one_error_line_and_touches_nothing(tmp_path, capsys, tool, build):
    w = _world(tmp_path)
    args = [str(a) for a in build(w, tmp_path)]
    if tool not in (P,):
        args += ["mode=h"] if not any(a.startswith("mode=") for a in args) else []
    before = _snapshot(tmp_path)
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        status = _main(tool)(args)
    out, err = capsys.readouterr()
    raw = [f"{w.category.__name__}: {w.message}" for w in caught]
    assert status == 1, (status, err)
    assert "Traceback" not in err + out and "internal error" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    prefix = f"# {tool} (stk_astrometry "
    # every message is one CIAO line (a tool may warn about other things first)
    assert all(ln.startswith(prefix) and ("ERROR" in ln or "WARNING" in ln) for ln in lines), err
    assert any("ERROR" in ln for ln in lines), "no error line"
    assert not raw, raw                                    # no raw library warning
    assert _snapshot(tmp_path) == before                   # nothing written, nothing changed
