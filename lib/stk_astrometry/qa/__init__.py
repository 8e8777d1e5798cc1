"""The manual QA procedure of the specification (§5.7.1, §5.7.2) for one stack.

:func:`review_stack` makes what an operator looks at — DS9 region file, postage stamps
(PNG contact sheet and FITS cutouts), residual plot, an editable selection file, a corrected
copy of the image and a DS9 script — optionally drives DS9 through XPA, records a decision
(accept / refit / reject; a refit re-fits through :func:`stk_astrometry.api.fit_stack` with the
operator's selection) in the transform file and the campaign database, and adds the stack to
the QA queue page.  Modules:

=================  ==========================================================
:mod:`.review`     what is reviewed: pairs, transform, each pair's role
:mod:`.stamps`     stamp choice, cutouts, centroid offsets, contact sheet
:mod:`.plots`      residual plot
:mod:`.ds9`        the DS9/XPA driver and the reopen script
:mod:`.record`     the decision in the transform and the database
:mod:`.queue`      the campaign QA queue page
=================  ==========================================================

The products themselves are never modified; the transform file is, when a decision is
recorded (its keywords and HISTORY only, rewritten atomically).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stk_astrometry.errors import ParameterError

logger = logging.getLogger(__name__)

__all__ = ["QAResult", "output_names", "review_stack"]


@dataclass(frozen=True)
class QAResult:
    """What :func:`review_stack` did.

    Attributes
    ----------
    stackid : str
    transform : str
        The transform reviewed (for ``decision='refit'``: the re-fitted one).
    files : dict
        Name (``regions``, ``selection``, ``sheet``, ``stamps``, ``residuals``, ``image_corr``,
        ``ds9_script``, ``ds9_backup``, ``queue``) -> path written.
    n_stamps : int
    median_before, median_after : float
        Median image-measured offset of the stamps' sources from their Gaia crosshair, arcsec.
    n_closer : int
        Stamps whose source is closer after the correction.
    catalog_median_before, catalog_median_after : float
        The same for the catalogued detection positions.
    d_xi, d_eta : float
        The reviewed transform's shift, arcsec.
    decision : str
        Recorded decision ('' for none).
    iteration : int
        Its iteration number (0: none recorded).
    database : str or None
        The campaign database it was recorded in.
    fit : object
        The :class:`stk_astrometry.api.FitResult` of a refit, else None.
    """

    stackid: str
    transform: str
    files: dict = field(default_factory=dict)
    n_stamps: int = 0
    median_before: float = float("nan")
    median_after: float = float("nan")
    n_closer: int = 0
    catalog_median_before: float = float("nan")
    catalog_median_after: float = float("nan")
    d_xi: float = float("nan")
    d_eta: float = float("nan")
    decision: str = ""
    iteration: int = 0
    database: str | None = None
    fit: object = None


def output_names(outdir, stackid) -> dict:
    """The review files of a stack in ``outdir``."""
    root = Path(outdir) / (stackid or "stack")
    return {"regions": f"{root}_qa.reg", "selection": f"{root}_qa_selection.txt",
            "sheet": f"{root}_qa_stamps.png", "stamps": f"{root}_qa_stamps.fits",
            "residuals": f"{root}_qa_residuals.png", "image_corr": f"{root}_qa_img_corr.fits",
            "ds9_script": f"{root}_qa_ds9.sh", "ds9_backup": f"{root}_qa_ds9.bck"}


def _median(values):
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    return float(np.median(values)) if values.size else float("nan")


def _refit(pairsfile, transformfile, selection, outfile, diagfile, review, *, clobber):
    """Re-fit with the operator's selection through the in-process API (spec §5.7.1)."""
    from stk_astrometry.api import fit_stack
    from stk_astrometry.formats.selection import selected_ids

    ids, notes = selected_ids(selection, which="include")
    for note in notes:
        logger.warning("%s", note)
    if ids.size == 0:
        raise ParameterError("selection: no pair is marked use=yes; nothing to re-fit with")
    keys = review.keywords
    options = {}
    if str(keys.get("ESTIMATR", "")).strip() in ("spec", "mixture"):
        options["estimator"] = str(keys["ESTIMATR"]).strip()
    if str(keys.get("LOSS", "")).strip():
        options["loss"] = str(keys["LOSS"]).strip()
    if isinstance(keys.get("FSCALE"), (int, float)):
        options["f_scale"] = float(keys["FSCALE"])
    fit = fit_stack(str(pairsfile), str(outfile), diagfile=str(diagfile), include=ids,
                    clobber=clobber, **options)
    logger.info("Re-fit (%s) with %d selected detection(s): d_xi = %+.4f\", d_eta = %+.4f\" "
                "(was %+.4f\", %+.4f\"); QA flags %d", fit.estimator, ids.size, fit.d_xi,
                fit.d_eta, review.d_xi, review.d_eta, fit.qa_flags)
    return fit


def review_stack(image, pairsfile, transformfile, outdir, *, params, diagfile=None,
                 selection=None, decision="none", operator="", reason="", outfile=None,
                 max_stamps=20, stamp_size=12.0, ds9=False, xpaname="ds9", database="",
                 queue=None, clobber=False, when=None) -> QAResult:
    """Review one stack (module docstring); see the stk_qa help page for the parameters.

    ``params`` are the tool's parameters (for the HISTORY records of what is written).

    Raises
    ------
    stk_astrometry.errors.StkError
    """
    from stk_astrometry.fitsutil import atomic_path, check_clobber, utc_now
    from stk_astrometry.formats import regions as regfmt
    from stk_astrometry.formats import selection as selfmt
    from stk_astrometry.qa import plots, record, stamps
    from stk_astrometry.qa.review import load_review, pair_marks, selection_of

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    sel = selfmt.read_selection(selection) if selection else None
    review = load_review(pairsfile, transformfile, diagfile=diagfile)
    names = output_names(outdir, review.stackid)
    when = when or utc_now()
    operator = operator or record.default_operator()
    reviewed = str(transformfile)
    fit = None
    rec = None
    carry = []
    if decision == "refit":
        if sel is None:
            raise ParameterError("decision=refit needs selection= (the edited selection file)")
        iteration = review.qa_iteration + 1
        outfile = outfile or str(outdir / f"{review.stackid}_xfm_qa{iteration}.fits")
        new_diag = str(outdir / f"{review.stackid}_diag_qa{iteration}.fits")
        check_clobber(new_diag, clobber, param="diagfile")
        from astropy.io import fits

        with fits.open(transformfile) as hdul:
            carry = record.earlier_history(hdul["STKXFM"].header)
        fit = _refit(pairsfile, transformfile, sel, outfile, new_diag, review, clobber=clobber)
        rec = record.QARecord(review.stackid, iteration, "refit", operator, when, reason,
                              fit.d_xi, fit.d_eta, review.d_xi, review.d_eta, fit.n_used,
                              fit.qa_flags, fit.xfm_id, str(outfile))
        record.record_in_transform(outfile, rec, params, carry=carry)
        reviewed, diagfile = str(outfile), new_diag
        review = load_review(pairsfile, reviewed, diagfile=diagfile, selection=sel)
    elif decision in ("accept", "reject"):
        iteration = review.qa_iteration + 1
        rec = record.QARecord(review.stackid, iteration, decision, operator, when, reason,
                              review.d_xi, review.d_eta, review.d_xi, review.d_eta,
                              int(review.keywords.get("NUSED", 0) or 0), review.qa_flags,
                              review.xfm_id, reviewed)
        record.record_in_transform(reviewed, rec, params)
    elif decision not in ("none", "", None):
        raise ParameterError(f"decision={decision}: one of none, accept, refit, reject")
    elif sel is not None:
        review = load_review(pairsfile, transformfile, diagfile=diagfile, selection=sel)

    for key in ("regions", "selection", "sheet", "stamps", "residuals", "image_corr",
                "ds9_script"):
        if not (key == "selection" and selection and Path(selection).resolve()
                == Path(names[key]).resolve()):
            check_clobber(names[key], clobber, param=key)
    img = stamps.load_image(image, review)
    files = {}
    title = (f"{review.stackid}  transform {review.xfm_id}  QA flags {review.qa_flags}"
             f"{': ' + str(review.keywords.get('QAREASON', '')) if review.qa_flags else ''}")
    regfmt.write_regions(names["regions"], regfmt.format_regions(
        regfmt.pair_regions(pair_marks(review)), title=title))
    files["regions"] = names["regions"]
    selfmt.write_selection(names["selection"], selection_of(review))
    files["selection"] = names["selection"]
    rows = stamps.choose_stamps(review, img, max_stamps=max_stamps, size_arcsec=stamp_size)
    meas = stamps.measure(review, img, rows)
    decision_text = ""
    if rec is not None:
        decision_text = f"QA iteration {rec.iteration}: {rec.decision} by {rec.operator}"
    stamps.contact_sheet(names["sheet"], review, img, meas, size_arcsec=stamp_size,
                         title_extra=decision_text)
    files["sheet"] = names["sheet"]
    stamps.write_stamps_fits(names["stamps"], review, img, rows, size_arcsec=stamp_size,
                             history=params, clobber=True)
    files["stamps"] = names["stamps"]
    plots.residual_plot(names["residuals"], review)
    files["residuals"] = names["residuals"]
    img.write_corrected(names["image_corr"])
    files["image_corr"] = names["image_corr"]
    from stk_astrometry.qa import ds9 as ds9mod

    if rows.size:
        ra0, dec0 = float(review.gaia["ref_ra"][rows[0]]), float(review.gaia["ref_dec"][rows[0]])
    else:
        ra0, dec0 = review.ra_stack, review.dec_stack
    image_path = str(Path(str(image).split("[")[0]).resolve())
    with atomic_path(names["ds9_script"]) as tmp:
        tmp.write_text(ds9mod.ds9_script(image_path, Path(names["image_corr"]).resolve(),
                                         Path(names["regions"]).resolve(), ra=ra0, dec=dec0,
                                         title=f"stk_qa_{review.stackid}"), encoding="utf-8")
        tmp.chmod(0o755)
    files["ds9_script"] = names["ds9_script"]
    logger.info("Stamps: %d; median offset of the sources from Gaia %.3f\" before -> %.3f\" "
                "after the correction (%d closer); catalogued positions %.3f\" -> %.3f\"",
                rows.size, meas.median_before, meas.median_after, meas.n_closer,
                _median(meas.catalog_before), _median(meas.catalog_after))
    db_used = None
    if rec is not None:
        db = record.find_database(database, reviewed)
        if db is not None and record.record_in_database(db, rec):
            db_used = str(db)
    if queue:
        from stk_astrometry.qa import queue as qmod

        keys = review.keywords
        qmod.update_queue(queue, qmod.QueueEntry(
            stackid=review.stackid, qa_flags=review.qa_flags,
            qa_reason=str(keys.get("QAREASON", "") or ""), d_xi=review.d_xi,
            d_eta=review.d_eta, decision=rec.decision if rec else str(
                keys.get("QADECIS", "") or "").strip(),
            iteration=rec.iteration if rec else review.qa_iteration,
            operator=rec.operator if rec else str(keys.get("QAOPER", "") or ""),
            median_before=meas.median_before, median_after=meas.median_after,
            n_stamps=int(rows.size), sheet=names["sheet"], residuals=names["residuals"],
            ds9_script=names["ds9_script"], transform=reviewed))
        files["queue"] = str(queue)
    if ds9:
        xpa, _ = ds9mod.connect(xpaname)
        ds9mod.open_review(xpa, image_path, Path(names["image_corr"]).resolve(),
                           Path(names["regions"]).resolve(), ra=ra0, dec=dec0,
                           backup=Path(names["ds9_backup"]).resolve())
        files["ds9_backup"] = names["ds9_backup"]
        logger.info("DS9 (XPA %s): frame 1 original WCS, frame 2 corrected, blinking", xpaname)
    for key, path in files.items():
        logger.log(15, "Wrote %s: %s", key, path)
    return QAResult(review.stackid, reviewed, files, int(rows.size), meas.median_before,
                    meas.median_after, meas.n_closer, _median(meas.catalog_before),
                    _median(meas.catalog_after), review.d_xi, review.d_eta,
                    rec.decision if rec else "", rec.iteration if rec else 0, db_used, fit)
