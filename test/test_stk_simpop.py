"""End-to-end tests of stk_simpop: files on disk, stk_match reads them, truth is consistent."""

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from stk_astrometry.tools.stk_simpop import main


def _run(outdir, *extra):
    return main([str(outdir), "verbose=0", *extra])


@pytest.fixture(scope="module")
def camp(tmp_path_factory):
    out = tmp_path_factory.mktemp("pop") / "camp"
    assert _run(out, "nstacks=12", "seed=3", "overlap_frac=0.6") == 0
    return out


def test_layout_list_table_and_truth(camp):
    lines = (camp / "stacks.lis").read_text().split()
    assert len(lines) == 12
    for line in lines:
        sid = Path(line).name
        for suffix in ("_det.fits", "_gaia.fits", "_allwise.fits", "_bestnb.fits"):
            assert (camp / line / f"{sid}{suffix}").is_file()
    tab = Table.read(camp / "stacks.fits")
    assert list(tab.colnames) == ["stackid", "detfile", "gaiafile", "wisefile", "bestnbfile"]
    assert all((camp / p).is_file() for p in tab["detfile"])
    with fits.open(camp / "truth.fits") as hdul:
        assert hdul[0].header["CONTENT"] == "STKPOPTRUTH"
        stacks = Table(hdul["STACKS"].data)
        dets = Table(hdul["DETECTIONS"].data)
        assert hdul["STACKS"].header["TUNIT12"] == "arcsec"  # d_xi
    assert len(stacks) == 12 and set(stacks["stackid"]) == {Path(p).name for p in lines}
    # One truth row per detection, and the detection files agree.
    total = 0
    for sid in stacks["stackid"]:
        det = Table.read(camp / "stacks" / sid / f"{sid}_det.fits")
        total += len(det)
        assert np.all(det["region_id"] == np.arange(1, len(det) + 1))
    assert total == len(dets)
    # Overlapping fields share sources: some msid appear in two stacks.
    msid = np.asarray(dets["msid"])
    _, counts = np.unique(msid[msid >= 0], return_counts=True)
    assert np.any(counts >= 2)


def test_stk_match_reads_a_stack_and_recovers_its_shift(camp, tmp_path):
    from stk_astrometry.tools import stk_match, stk_xfm

    with fits.open(camp / "truth.fits") as hdul:
        stacks = Table(hdul["STACKS"].data)
    best = stacks[np.argmax(stacks["n_crb"])]
    sid = best["stackid"]
    d = camp / "stacks" / sid
    pairs = tmp_path / "pairs.fits"
    xfm = tmp_path / "xfm.fits"
    assert stk_match.main([str(d / f"{sid}_det.fits"), str(d / f"{sid}_gaia.fits"), str(pairs),
                           f"wisefile={d / f'{sid}_allwise.fits'}",
                           f"bestnbfile={d / f'{sid}_bestnb.fits'}", "verbose=0"]) == 0
    assert stk_xfm.main([str(pairs), str(xfm), "estimator=mixture", "verbose=0"]) == 0
    with fits.open(xfm) as hdul:
        row = hdul["STKXFM"].data[-1]
        fit = np.array([row["d_xi"], row["d_eta"]])
    truth = np.array([best["d_xi"], best["d_eta"]])
    # Within 0.3" of the truth (the stack has the most usable pairs of the population).
    assert np.hypot(*(fit - truth)) < 0.3, (fit, truth, best["n_crb"])


def test_same_seed_same_files(camp, tmp_path):
    again = tmp_path / "again"
    assert _run(again, "nstacks=12", "seed=3", "overlap_frac=0.6") == 0
    a = Table.read(camp / "truth.fits", hdu="DETECTIONS")
    b = Table.read(again / "truth.fits", hdu="DETECTIONS")
    assert np.array_equal(np.asarray(a["ra_true"]), np.asarray(b["ra_true"]))


def test_refuses_a_non_empty_outdir_and_bad_regimes(camp, tmp_path, capsys):
    assert _run(camp, "nstacks=2") == 1
    assert "Clobber set to no" in capsys.readouterr().err
    assert _run(tmp_path / "x", "regimes=1,2") == 1
    err = capsys.readouterr().err
    assert "regime_weights" in err and "ERROR" in err
    assert not (tmp_path / "x").exists()
    assert not list(tmp_path.glob(".x.*"))


def test_the_tree_is_made_durable_before_it_is_published(tmp_path, monkeypatch):
    """Every file of the population is made durable (one make_durable: a syncfs) in the
    temporary tree, and only then is the tree renamed into place; clobber=yes replaces an
    existing population the same way, leaving no temporary or old tree behind."""
    from stk_astrometry.tools import stk_simpop

    events = []
    real_make, real_install = stk_simpop.make_durable, stk_simpop.install_tree

    def make_durable(paths, **kw):
        paths = [str(q) for q in paths]
        events.append(("durable", paths, [str(f) for f in kw.get("folders", ())]))
        return real_make(paths, **kw)

    def install_tree(tmp, outdir):
        events.append(("install", str(tmp)))
        return real_install(tmp, outdir)

    monkeypatch.setattr(stk_simpop, "make_durable", make_durable)
    monkeypatch.setattr(stk_simpop, "install_tree", install_tree)
    out = tmp_path / "pop"
    for extra in ((), ("clobber=yes",)):
        events.clear()
        assert _run(out, "nstacks=3", "seed=5", *extra) == 0
        assert [e[0] for e in events] == ["durable", "install"]
        _, synced, folders = events[0]
        tmp = events[1][1]
        assert all(q.startswith(tmp) for q in synced)
        published = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
        assert sorted(str(Path(q).relative_to(tmp)) for q in synced) == published
        assert tmp in folders and str(Path(tmp) / "stacks") in folders
        assert sorted(p.name for p in tmp_path.iterdir()) == ["pop"]
