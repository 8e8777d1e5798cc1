"""The in-process API (stk_astrometry.api): the same outputs as the tools, results, warnings.

The tools' outputs on the bundled sample are pinned by the golden files (test_golden.py runs
the tools and compares them); here the API runs the same chain and its files must equal those
golden files, keyword for keyword and value for value (only the run stamps DATE, CREATOR,
CHECKSUM and HISTORY differ: the API's HISTORY names the call's keywords, not a par file).
"""

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from stk_astrometry import api
from stk_astrometry.errors import ParameterError, StkError
from stk_astrometry.parameters import read_par

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "test" / "golden"
sys.path.insert(0, str(GOLDEN))
import chain  # noqa: E402  (test/golden/chain.py)

STACK = chain.STACK


def _without_history(path):
    hdul = fits.open(path)
    for hdu in hdul:
        for key in ("HISTORY", "HISTNUM"):
            while key in hdu.header:
                del hdu.header[key]
    return hdul


def _same_as_golden(path, golden):
    """FITSDiff as the golden test does it, HISTORY set aside (it names how the run was made)."""
    with _without_history(path) as a, _without_history(golden) as b:
        diff = fits.FITSDiff(a, b, ignore_keywords=chain.IGNORE_KEYWORDS, rtol=chain.RTOL,
                             atol=chain.ATOL)
        assert diff.identical, diff.report()


@pytest.fixture(scope="module")
def api_chain(tmp_path_factory):
    """match -> fit (spec, with outdet and diag) -> fit (mixture) -> update, by the API."""
    work = tmp_path_factory.mktemp("api_chain")
    sample = work / "sample"
    shutil.copytree(REPO / "share" / "sample", sample, ignore=shutil.ignore_patterns("products"))
    shutil.copytree(REPO / "share" / "sample" / "products", work / "products")
    s = sample / STACK
    m = api.match_stack(f"{s}_det.fits", f"{s}_gaia.fits", work / "pairs.fits",
                        wisefile=f"{s}_allwise.fits", bestnbfile=f"{s}_bestnb.fits")
    f = api.fit_stack(work / "pairs.fits", work / "xfm.fits",
                      outdetfile=work / "det_corrected.fits", diagfile=work / "diag.fits")
    fm = api.fit_stack(work / "pairs.fits", work / "xfm_mixture.fits", estimator="mixture")
    u = api.update_products(work / "products", work / "xfm.fits", outdir="")
    return work, m, f, fm, u


@pytest.mark.parametrize("name", ["pairs.fits", "xfm.fits", "det_corrected.fits", "diag.fits",
                                  "xfm_mixture.fits"])
def test_api_files_equal_the_tools_golden_files(api_chain, name):
    work = api_chain[0]
    _same_as_golden(work / name, GOLDEN / name)


def test_api_updated_products_equal_the_golden_products(api_chain):
    work, *_, u = api_chain
    golden = sorted(p.relative_to(GOLDEN) for p in (GOLDEN / "products").rglob("*.fits"))
    assert golden
    for rel in golden:
        _same_as_golden(work / rel, GOLDEN / rel)
    assert u.n_errors == 0 and u.n_updated + u.n_unchanged == len(u.files)
    updated = {Path(f.path).relative_to(work) for f in u.files if f.status == "updated"}
    assert updated and updated <= set(golden)
    assert all(f.category in ("inherit", "needs nothing") for f in u.files
               if f.status == "unchanged")
    assert u.xfm_id == fits.getval(GOLDEN / "products" / _first_aspsol(golden), "STKXFMID",
                                   extname="STKXFM")


def _first_aspsol(paths):
    return next(str(p.relative_to("products")) for p in paths if "asol" in p.name.lower())


def test_api_history_names_the_call_keywords_in_par_order(api_chain):
    work = api_chain[0]
    hist = [str(v) for v in fits.getheader(work / "xfm.fits", 1)["HISTORY"]]
    assert hist[0].split(":")[1].startswith("stk_xfm")
    names = [h.split(":", 1)[1].split("=")[0] for h in hist[1:] if h.startswith(" PARM")]
    par = [p.name for p in read_par(REPO / "param" / "stk_xfm.par").params]
    assert names == [n for n in par if n not in ("verbose", "mode")]
    assert fits.getval(work / "xfm.fits", "CREATOR").startswith("stk_xfm - stk_astrometry")


def test_results_carry_what_the_files_hold(api_chain):
    work, m, f, fm, _ = api_chain
    pri = fits.getheader(work / "pairs.fits")
    assert (m.stackid, m.method, m.instrument) == (STACK, pri["METHOD"], pri["INSTRUME"])
    assert m.n_det == pri["NDET"] and m.n_gaia == pri["NGAIA"] and m.n_wise == pri["NWISE"]
    assert m.density_gaia == pri["DENSGAIA"] and m.density_wise == pri["DENSWISE"]
    assert m.n_match_gaia_group == tuple(pri[f"NMGAIA{i}"] for i in range(1, pri["NGROUPS"] + 1))
    assert m.n_match_wise_group == tuple(pri[f"NMWISE{i}"] for i in range(1, pri["NGROUPS"] + 1))
    assert m.outfile == str(work / "pairs.fits")
    for res, name in ((f, "xfm.fits"), (fm, "xfm_mixture.fits")):
        with fits.open(work / name) as hdul:
            h, row = hdul["STKXFM"].header, hdul["STKXFM"].data[0]
            assert (res.d_xi, res.d_eta) == (h["DXI"], h["DETA"])
            assert (res.d_xi_err, res.d_eta_err) == (row["d_xi_err"], row["d_eta_err"])
            assert res.cov[0, 1] == row["cov_xi_eta"]
            assert (res.qa_flags, res.qa_reason, res.estimator) == (
                h["QAFLAGS"], h["QAREASON"], h["ESTIMATR"])
            assert (res.alt_estimator, res.alt_d_xi) == (h["ALTEST"], h["ALTDXI"])
            assert len(res.components) == len(hdul["STKXFM"].data)
    assert fm.estimator == "mixture" and f.estimator == "spec"
    assert np.isfinite(f.n_eff) and f.n_eff == fm.n_eff
    assert f.xfm_id == fits.getval(work / "products" / _first_aspsol(
        sorted(p.relative_to(work) for p in (work / "products").rglob("*.fits"))),
        "STKXFMID", extname="STKXFM")


def test_fit_in_memory_equals_fit_from_the_file(api_chain, tmp_path):
    work, m, f, _, _ = api_chain
    g = api.fit_stack(m)                       # the MatchResult itself
    h = api.fit_stack(m.pairs, tmp_path / "xfm.fits")
    for res in (g, h):
        assert (res.d_xi, res.d_eta, res.qa_flags, res.xfm_id) == (
            f.d_xi, f.d_eta, f.qa_flags, f.xfm_id)
        assert np.array_equal(res.cov, f.cov)
    assert g.outfile is None and h.outfile == str(tmp_path / "xfm.fits")
    _same_as_golden(tmp_path / "xfm.fits", GOLDEN / "xfm.fits")


def test_fit_of_a_match_result_names_the_pairs_file_it_wrote(api_chain, tmp_path):
    """The pairs handed on in memory are the file match_stack wrote (stk_batch, bench_speed):
    the transform equals the one fitted from that file, HISTORY included, and no output may
    replace the file."""
    work, m, *_ = api_chain
    api.fit_stack(m, tmp_path / "xfm.fits", outdetfile=tmp_path / "det.fits", clobber=True)
    api.fit_stack(work / "pairs.fits", tmp_path / "xfm_file.fits",
                  outdetfile=tmp_path / "det.fits", clobber=True)

    def parameters(name):
        text = ""
        for h in fits.getheader(tmp_path / name, "STKXFM")["HISTORY"]:
            h = str(h)[:-8].rstrip()     # without the ASCnnnnn counter
            text += h[len(" CONT  :"):] if h.startswith(" CONT") else "\n" + h
        return dict(line.split(":", 1)[1].split("=", 1) for line in text.split("\n")
                    if line.startswith(" PARM"))

    a, b = parameters("xfm.fits"), parameters("xfm_file.fits")
    assert a["infile"] == m.outfile == b["infile"]
    assert a.pop("outfile").endswith("xfm.fits") and b.pop("outfile").endswith("xfm_file.fits")
    assert a == b and len(a) > 10
    with fits.open(tmp_path / "xfm.fits") as a, fits.open(tmp_path / "xfm_file.fits") as b:
        assert a["STKXFM"].data.tobytes() == b["STKXFM"].data.tobytes()
    for name in ("outfile", "outdetfile", "diagfile"):
        with pytest.raises(ParameterError, match=f"{name}=.* is the input file"):
            api.fit_stack(m, **{name: m.outfile}, clobber=True)
    api.fit_stack(m.pairs, tmp_path / "xfm_pairs.fits")     # its .pairs: no file named
    assert fits.getheader(tmp_path / "xfm_pairs.fits", "STKXFM")["HISTORY"][1].startswith(
        " PARM  :infile= ")


def test_match_without_outfile_writes_nothing(tmp_path):
    s = REPO / "share" / "sample" / STACK
    before = set(tmp_path.iterdir())
    m = api.match_stack(f"{s}_det.fits", f"{s}_gaia.fits")
    assert m.outfile is None and set(tmp_path.iterdir()) == before
    assert m.method == "direct" and m.density_wise is None and m.n_wise == 0
    assert m.n_match_gaia > 0


def test_warnings_are_returned_and_logged(tmp_path, caplog):
    s = REPO / "share" / "sample" / STACK
    with caplog.at_level("WARNING", logger="stk_astrometry"):
        m = api.match_stack(f"{s}_det.fits", f"{s}_gaia.fits", r_stack=1e-4)  # nothing inside
    assert m.method == "none"
    assert any("METHOD = 'none'" in w for w in m.warnings)
    assert all(w in caplog.text for w in m.warnings)
    f = api.fit_stack(m)
    assert f.qa_flags & 1 and any("identity" in w for w in f.warnings)


def test_include_as_a_sequence_equals_include_as_a_file(api_chain, tmp_path):
    work, m, *_ = api_chain
    ids = sorted(set(m.pairs.tables["GAIA_PAIRS"]["region_id"].tolist()))[:8]
    (tmp_path / "inc.lis").write_text("\n".join(map(str, ids)) + "\n")
    a = api.fit_stack(m, include=ids)
    b = api.fit_stack(work / "pairs.fits", include=tmp_path / "inc.lis")
    assert (a.d_xi, a.d_eta, a.n_used) == (b.d_xi, b.d_eta, b.n_used)
    assert a.n_match <= len(ids)


def test_user_errors_raise_stk_errors(tmp_path):
    with pytest.raises(ParameterError, match="detfile is blank"):
        api.match_stack("", "gaia.fits")
    with pytest.raises(ParameterError, match="method"):
        api.match_stack("det.fits", "gaia.fits", method="sideways")
    with pytest.raises(ParameterError, match="f_scale must be > 0"):
        api.fit_stack(tmp_path / "pairs.fits", f_scale=0)
    with pytest.raises(StkError):
        api.fit_stack(tmp_path / "missing.fits")
    with pytest.raises(ParameterError, match="unknown parameter"):
        api.simulate_stack(tmp_path / "sim", ndetections=5)


@pytest.mark.parametrize("tool, defaults", [
    ("stk_match", api.MATCH_DEFAULTS), ("stk_xfm", api.FIT_DEFAULTS),
    ("stk_update_wcs", api.UPDATE_DEFAULTS), ("stk_simulate", api.SIMULATE_DEFAULTS)])
def test_defaults_are_the_par_files(tool, defaults):
    from stk_astrometry.parameters import _convert

    params = [p for p in read_par(REPO / "param" / f"{tool}.par").params
              if p.name not in ("verbose", "mode")]
    assert list(defaults) == [p.name for p in params]
    for p in params:
        value = _convert(p, p.value, tool)[0]
        if value is None and p.base_type in "fs":
            value = ""
        assert defaults[p.name] == value, p.name


def test_signatures_use_the_par_defaults():
    import inspect

    for func, defaults in ((api.match_stack, api.MATCH_DEFAULTS),
                           (api.fit_stack, api.FIT_DEFAULTS),
                           (api.update_products, api.UPDATE_DEFAULTS)):
        sig = inspect.signature(func)
        for name, p in sig.parameters.items():
            if p.kind is p.KEYWORD_ONLY and name in defaults and defaults[name] not in ("",):
                assert p.default == defaults[name], (func.__name__, name)


def test_simulate_stack_matches_the_tool(tmp_path):
    from stk_astrometry.tools.stk_simulate import main

    r = api.simulate_stack(tmp_path / "a", seed=7, ndet=20, products=False)
    assert main([f"outdir={tmp_path / 'b'}", "seed=7", "ndet=20", "products=no", "verbose=0",
                 "mode=h"]) == 0
    assert sorted(Path(p).name for p in r.files.values()) == sorted(
        p.name for p in (tmp_path / "b").iterdir())
    for path in r.files.values():
        _same_as_golden(path, tmp_path / "b" / Path(path).name)
    assert r.products == () and r.seed == 7 and np.isfinite(r.crb_xi)


def test_simulate_stack_makes_its_tree_durable_before_publishing_it(tmp_path, monkeypatch):
    """Group commit (issue 11): the catalogs and products are written unsynced into the
    temporary tree, made durable together (one make_durable over every file, products
    included), and only then is the tree renamed into place."""
    from stk_astrometry import fitsutil, simfiles

    events = []
    real_make, real_install = fitsutil.make_durable, simfiles.install_tree

    def make_durable(paths, **kw):
        paths = [str(q) for q in paths]
        events.append(("durable", paths, [Path(q).exists() for q in paths]))
        return real_make(paths, **kw)

    def install_tree(tmp, outdir):
        events.append(("install", str(tmp)))
        return real_install(tmp, outdir)

    monkeypatch.setattr(fitsutil, "make_durable", make_durable)
    monkeypatch.setattr(simfiles, "install_tree", install_tree)
    r = api.simulate_stack(tmp_path / "s", seed=3, ndet=10)
    assert [e[0] for e in events] == ["durable", "install"]
    _, synced, existed = events[0]
    tmp = events[1][1]
    assert all(existed) and all(q.startswith(tmp) for q in synced)
    published = sorted(str(Path(q).relative_to(tmp)) for q in synced)
    expected = sorted(str(Path(q).relative_to(r.outdir)) for q in (*r.files.values(), *r.products))
    assert published == expected and len(r.products) > 40


def test_the_library_never_imports_a_tool_front_end():
    """Tools import the library (the API), never the reverse: no module outside tools/
    imports ``stk_astrometry.tools`` (module level or inside a function)."""
    import ast

    pkg = Path(__file__).resolve().parents[1] / "lib" / "stk_astrometry"
    offenders = []
    for path in sorted(pkg.rglob("*.py")):
        rel = path.relative_to(pkg)
        if rel.parts[0] == "tools":
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:              # relative: resolve against the package
                    base = ["stk_astrometry", *rel.parts[:-1]]
                    base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                names = [mod] + [f"{mod}.{alias.name}" for alias in node.names]
            else:
                continue
            if any(n == "stk_astrometry.tools" or n.startswith("stk_astrometry.tools.")
                   for n in names):
                offenders.append(f"{rel}:{node.lineno}")
    assert offenders == [], f"library modules importing a tool: {offenders}"


def test_the_astropy_path_writes_what_fitsio_writes(tmp_path, monkeypatch):
    """The per-stack files through fitsio (FITSIO_IO, _FAST_READ) and through astropy's path
    (the default while fitsio is switched off; a file fitsio cannot read) are the same files,
    and both readers read them the same way."""
    from stk_astrometry import tableio
    from stk_astrometry.formats import _fits

    s = REPO / "share" / "sample" / STACK
    for on in (True, False):
        monkeypatch.setattr(_fits, "FITSIO_IO", on)
        monkeypatch.setattr(tableio, "_FAST_READ", on)
        out = tmp_path / ("fitsio" if on else "astropy")
        out.mkdir()
        api.match_stack(f"{s}_det.fits", f"{s}_gaia.fits", out / "pairs.fits",
                        wisefile=f"{s}_allwise.fits", bestnbfile=f"{s}_bestnb.fits")
        api.fit_stack(out / "pairs.fits", out / "xfm.fits",
                      outdetfile=out / "det_corrected.fits", diagfile=out / "diag.fits")
    for name in ("pairs.fits", "xfm.fits", "det_corrected.fits", "diag.fits"):
        _same_as_golden(tmp_path / "astropy" / name, tmp_path / "fitsio" / name)
    pairs = tmp_path / "fitsio" / "pairs.fits"
    for a, b in zip(_fits._read_fits_astropy(pairs), _fits._read_fits_fitsio(pairs), strict=True):
        assert a[0] == b[0] and a[3] == b[3]
        assert _fits.header_keywords(a[1]) == _fits.header_keywords(b[1])
        assert _fits.extra_cards(a[1]) == _fits.extra_cards(b[1])
        assert (a[2] is None) == (b[2] is None)
        for key in a[2] or {}:
            assert a[2][key].dtype == b[2][key].dtype
            assert np.array_equal(a[2][key], b[2][key], equal_nan=a[2][key].dtype.kind == "f")


def test_sep_bins_accept_commas_and_blanks():
    assert api.parse_sep_bins("1,2,3") == (1.0, 2.0, 3.0)
    assert api.parse_sep_bins(" 0.5 1.5, 3 ") == (0.5, 1.5, 3.0)
