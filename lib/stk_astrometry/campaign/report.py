"""The campaign report: PNG plots (matplotlib, Agg) and a static ``index.html`` showing them.

Plots, written into the campaign folder from the results table (done stacks only):

``shifts.png``
    The distribution of fitted shifts in xi and eta -- the specification's Figure 3 (§6.1):
    a histogram per axis with the mean and the 2-sigma range marked, and the shifts in the
    (xi, eta) plane.
``shift_vs_nmatch.png``
    Total shift against the number of matched detections, QA stacks marked.
``sigma_vs_n.png``
    Reported 1-sigma uncertainty against the pairs used, with the 1/sqrt(n) slope for scale.
``qa_reasons.png``
    Stacks per QA reason, and failed stacks.

``index.html`` is one static page (no script, no server, no external resource) with the
summary tables and the plots; it opens from the file system in any browser.
"""

from __future__ import annotations

import html
import math
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np

from .. import __version__
from ..fitsutil import atomic_path

__all__ = ["write_report", "PLOTS", "qa_reason_counts", "compact", "REPORT_COLUMNS"]

#: file -> caption
PLOTS = {
    "shifts.png": "Fitted shifts in xi and eta (the specification's Figure 3): histograms with "
                  "the mean (solid) and mean +/- 2 sigma (dashed), and the shifts in the plane.",
    "shift_vs_nmatch.png": "Total shift against the number of matched detections; stacks "
                           "flagged for QA in orange.",
    "sigma_vs_n.png": "Reported 1-sigma uncertainty of the shift (mean of the xi and eta "
                      "sigmas) against the pairs used; the dotted line has slope -1/2.",
    "qa_reasons.png": "Done stacks per QA flag (a stack may have several) and failed stacks.",
}

_QA_BITS = ((1, "NOMATCH"), (2, "DENSE"), (4, "BIGSHIFT"), (8, "FEWMATCH"), (16, "DISAGREE"))


#: the campaign table's columns the report and the closing summary read
REPORT_COLUMNS = ("stackid", "status", "failed_step", "error", "method", "qa_reason", "qa_flags",
                  "needs_qa", "d_xi", "d_eta", "d_xi_err", "d_eta_err", "shift", "n_match",
                  "n_used")
#: string columns kept only for failed stacks (the list of failures)
_FAILURE_ONLY = ("stackid", "failed_step", "error")


def compact(records: np.ndarray, interned: dict | None = None) -> np.ndarray:
    """The :data:`REPORT_COLUMNS` of campaign ``records``, small enough to keep for every stack.

    Strings become Python objects shared between rows (the status, method and QA reason take
    a few values over a whole campaign); the stack id, failed step and error are kept for
    failed stacks only.  A 10,000-stack campaign's report then holds ~1 MB, where the full
    rows take ~60 MB.  Pass the same dict as ``interned`` for every chunk of one campaign.
    """
    interned = {} if interned is None else interned
    dt = [(n, object if records.dtype[n].kind == "U" else records.dtype[n]) for n in REPORT_COLUMNS]
    out = np.zeros(len(records), dtype=dt)
    failed = records["status"] == "failed"
    for name in REPORT_COLUMNS:
        col = records[name]
        if col.dtype.kind != "U":
            out[name] = col
            continue
        values = col.tolist()
        if name in _FAILURE_ONLY:
            values = [v if f else "" for v, f in zip(values, failed.tolist(), strict=True)]
        out[name] = [interned.setdefault(v, v) for v in values]
    return out


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path):
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    fig.clf()


def _finite(*arrays):
    ok = np.ones(len(arrays[0]), dtype=bool)
    for a in arrays:
        ok &= np.isfinite(a)
    return ok


def _no_data(ax, text="no done stack with a fitted shift"):
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_shifts(plt, records, path):
    d_xi, d_eta = records["d_xi"], records["d_eta"]
    # a NOMATCH stack's identity transform is not a measured shift
    ok = _finite(d_xi, d_eta) & ((records["qa_flags"] & 1) == 0) & (records["status"] == "done")
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    if not ok.any():
        for ax in axes:
            _no_data(ax)
    else:
        x, y = d_xi[ok], d_eta[ok]
        lim = max(1.0, float(np.percentile(np.abs(np.concatenate([x, y])), 99.5)) * 1.1)
        bins = np.linspace(-lim, lim, 41)
        for ax, v, name in ((axes[0], x, "xi"), (axes[1], y, "eta")):
            ax.hist(np.clip(v, -lim, lim), bins=bins, color="#4878a8", edgecolor="white")
            mean, sd = float(np.mean(v)), float(np.std(v))
            ax.axvline(mean, color="k")
            for s in (-2, 2):
                ax.axvline(mean + s * sd, color="k", ls="--", lw=0.8)
            ax.set_xlabel(f"d_{name} (arcsec)")
            ax.set_ylabel("stacks")
            ax.set_title(f"{name}: mean {mean:+.3f}\", std {sd:.3f}\" (N={v.size})")
        ax = axes[2]
        ax.scatter(x, y, s=8, alpha=0.6, color="#4878a8", edgecolors="none")
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.axhline(0, color="0.6", lw=0.6)
        ax.axvline(0, color="0.6", lw=0.6)
        ax.set_xlabel("d_xi (arcsec)")
        ax.set_ylabel("d_eta (arcsec)")
        ax.set_title("shifts in the tangent plane")
    fig.suptitle("Distribution of fitted shifts")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_shift_vs_nmatch(plt, records, path):
    shift, n = records["shift"], records["n_match"].astype(float)
    ok = _finite(shift) & (n > 0)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    if not ok.any():
        _no_data(ax)
    else:
        qa = records["needs_qa"] & ok
        clean = ok & ~qa
        ax.scatter(n[clean], shift[clean], s=5, alpha=0.5, label=f"accepted ({clean.sum()})",
                   color="#4878a8", edgecolors="none")
        ax.scatter(n[qa], shift[qa], s=8, alpha=0.8, label=f"QA ({qa.sum()})",
                   color="#e8833a", edgecolors="none")
        ax.set_xscale("log")
        ax.set_xlabel("matched detections n_match")
        ax.set_ylabel("total shift (arcsec)")
        ax.legend(loc="upper right")
    ax.set_title("Shift against number of matches")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_sigma_vs_n(plt, records, path):
    sig = 0.5 * (records["d_xi_err"] + records["d_eta_err"])
    n = records["n_used"].astype(float)
    ok = _finite(sig) & (sig > 0) & (n > 0)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    if not ok.any():
        _no_data(ax, "no done stack with a reported sigma")
    else:
        ax.scatter(n[ok], sig[ok], s=5, alpha=0.5, color="#4878a8", edgecolors="none")
        ax.set_xscale("log")
        ax.set_yscale("log")
        nn = np.geomspace(n[ok].min(), n[ok].max(), 20)
        ref = float(np.median(sig[ok] * np.sqrt(n[ok])))
        ax.plot(nn, ref / np.sqrt(nn), ":", color="k", label="median x 1/sqrt(n)")
        ax.legend(loc="upper right")
        ax.set_xlabel("pairs used n_used")
        ax.set_ylabel("reported 1-sigma (arcsec)")
    ax.set_title("Reported uncertainty against pairs used")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def qa_reason_counts(records) -> list[tuple[str, int]]:
    """(label, count) per QA bit over done stacks, then 'accepted' and 'failed'."""
    done = records["status"] == "done"
    flags = records["qa_flags"]
    out = [(name, int(((flags & bit) != 0)[done].sum())) for bit, name in _QA_BITS]
    out.append(("accepted", int((done & (flags == 0)).sum())))
    out.append(("failed", int((records["status"] == "failed").sum())))
    return out


def plot_qa_reasons(plt, records, path):
    counts = qa_reason_counts(records)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    labels = [c[0] for c in counts]
    values = [c[1] for c in counts]
    colors = ["#e8833a"] * 5 + ["#4878a8", "#b03a2e"]
    bars = ax.bar(labels, values, color=colors)
    for b, v in zip(bars, values, strict=True):
        ax.annotate(str(v), (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom",
                    fontsize=9)
    ax.set_ylabel("stacks")
    ax.set_ylim(0, max(values + [1]) * 1.15)
    ax.set_title(f"QA flags over {int((records['status'] == 'done').sum())} done stacks")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


# ---------------------------------------------------------------------- HTML

_CSS = """
body { font-family: sans-serif; margin: 1.5em auto; max-width: 70em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #bbb; padding: 0.2em 0.6em; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1em 0; } figcaption { font-size: 0.9em; color: #555; max-width: 60em; }
img { max-width: 100%; height: auto; border: 1px solid #ddd; }
"""


def _table(headers, rows, numeric=()):
    out = ["<table>", "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in headers) + "</tr>"]
    for row in rows:
        cells = []
        for i, v in enumerate(row):
            cls = ' class="n"' if i in numeric else ""
            cells.append(f"<td{cls}>{html.escape(str(v))}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _fmt(x, digits=3):
    return "-" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def format_html(records, *, title, failures, n_warnings=0, max_failures=200) -> str:
    """The ``index.html`` text (pure)."""
    status = records["status"]
    done = status == "done"
    n = len(records)
    n_done, n_failed = int(done.sum()), int((status == "failed").sum())
    n_qa = int((records["needs_qa"] & done).sum())
    shift_ok = (done & np.isfinite(records["d_xi"]) & np.isfinite(records["d_eta"])
                & ((records["qa_flags"] & 1) == 0))
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<link rel="icon" href="data:,">',
        f"<title>{html.escape(title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>stk_batch (stk_astrometry {html.escape(__version__)}), written "
        f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}. Results: "
        '<a href="campaign.fits">campaign.fits</a> (TOPCAT), '
        '<a href="campaign.csv">campaign.csv</a>; run database <code>campaign.sqlite</code>; '
        "warnings <code>stk_batch.log</code>.</p>",
        "<h2>Summary</h2>",
        _table(["", "stacks", "fraction"], [
            ["in the campaign", n, "1.000" if n else "-"],
            ["done", n_done, _fmt(n_done / n) if n else "-"],
            ["done, need QA", n_qa, _fmt(n_qa / n) if n else "-"],
            ["failed", n_failed, _fmt(n_failed / n) if n else "-"],
            ["not run yet", int((status == "pending").sum()), "-"],
            ["warnings recorded", n_warnings, "-"],
        ], numeric=(1, 2)),
    ]
    if shift_ok.any():
        rows = []
        for name in ("d_xi", "d_eta", "shift"):
            v = records[name][shift_ok]
            rows.append([name, _fmt(float(np.mean(v))), _fmt(float(np.median(v))),
                         _fmt(float(np.std(v))), _fmt(float(np.percentile(np.abs(v), 90))),
                         int(v.size)])
        parts += ["<h2>Fitted shifts (arcsec; NOMATCH stacks left out)</h2>",
                  _table(["", "mean", "median", "std", "90% of |value| below", "N"], rows,
                         numeric=(1, 2, 3, 4, 5))]
    methods = Counter(m for m, d in zip(records["method"].tolist(), done, strict=True) if d)
    parts += ["<h2>Methods</h2>",
              _table(["method", "stacks"], [[k or "-", v] for k, v in methods.most_common()],
                     numeric=(1,))]
    reasons = Counter(r for r, d in zip(records["qa_reason"].tolist(), done, strict=True) if d)
    parts += ["<h2>QA reasons</h2>",
              _table(["reason", "stacks"],
                     [[k or "(none: accepted)", v] for k, v in reasons.most_common()],
                     numeric=(1,))]
    parts.append("<h2>Plots</h2>")
    for name, caption in PLOTS.items():
        parts.append(f'<figure><img src="{name}" alt="{html.escape(caption)}">'
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    if failures:
        parts.append(f"<h2>Failed stacks ({len(failures)})</h2>")
        parts.append(_table(["stack", "step", "error"], failures[:max_failures]))
        if len(failures) > max_failures:
            parts.append(f"<p>... and {len(failures) - max_failures} more: see campaign.fits.</p>")
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def write_report(folder, records, *, db=None, title=None) -> Path:
    """Write the plots and ``index.html`` into ``folder``; return the page's path."""
    folder = Path(folder)
    plt = _pyplot()
    plot_shifts(plt, records, folder / "shifts.png")
    plot_shift_vs_nmatch(plt, records, folder / "shift_vs_nmatch.png")
    plot_sigma_vs_n(plt, records, folder / "sigma_vs_n.png")
    plot_qa_reasons(plt, records, folder / "qa_reasons.png")
    failures = [(s, st, e) for s, st, e, x in
                zip(records["stackid"].tolist(), records["failed_step"].tolist(),
                    records["error"].tolist(), records["status"] == "failed", strict=True) if x]
    text = format_html(records, title=title or f"Campaign {folder.name}", failures=failures,
                       n_warnings=db.n_warnings() if db is not None else 0)
    page = folder / "index.html"
    with atomic_path(page) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
    return page
