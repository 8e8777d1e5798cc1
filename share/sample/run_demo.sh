#!/bin/sh
# The main job on the bundled sample stack:
#     stk_match -> stk_xfm -> stk_update_wcs
# chained through files (each tool's output is the next one's input) and through one
# YAML parameter set (share/sample/chain.yaml, read with @@), then the fitted shift is
# printed beside the simulated truth.  Run from anywhere:
#
#   sh share/sample/run_demo.sh            # outputs in ./demo-output (STK_DEMO_DIR overrides)
#
# The products are updated in a copy, so the sample itself is never modified and the demo
# can be rerun.
set -e
cd "$(dirname "$0")/../.."
. share/scripts/ensure_venv.sh
PATH="$STK_VENV/bin:$PATH"

S=share/sample
STACK=acisfJ1236480p621200_001
W=${STK_DEMO_DIR:-demo-output}
rm -rf "$W"
mkdir -p "$W/pfiles"
cp -R "$S/products" "$W/products"
# A private parameter directory, so the demo learns nothing into ~/cxcds_param4.
export PFILES="$W/pfiles;$STK_ROOT/param"

echo "== stk_match: cross-match the detections with Gaia and ALLWISE"
stk_match "$S/${STACK}_det.fits" "$S/${STACK}_gaia.fits" "$W/pairs.fits" \
    wisefile="$S/${STACK}_allwise.fits" bestnbfile="$S/${STACK}_bestnb.fits" \
    @@"$S/chain.yaml" clobber=yes verbose=0

echo "== stk_xfm: fit the translation, decide the QA flags, write the STKXFM transform"
stk_xfm "$W/pairs.fits" "$W/xfm.fits" outdetfile="$W/det_corrected.fits" \
    @@"$S/chain.yaml" clobber=yes verbose=1

echo "== stk_update_wcs: rewrite the WCS of every product (in place, in the copy)"
stk_update_wcs "$W/products" "$W/xfm.fits" outdir="" @@"$S/chain.yaml" verbose=1

echo "== stk_update_wcs again: idempotent, nothing to do"
stk_update_wcs "$W/products" "$W/xfm.fits" outdir="" @@"$S/chain.yaml" verbose=0

echo "== fitted shift beside the truth"
"$STK_PY" - "$W/xfm.fits" "$S/${STACK}_truth.fits" <<'PY'
import sys
from astropy.io import fits
from astropy.table import Table
xfm = Table.read(sys.argv[1], hdu="STKXFM")
hdr = fits.getheader(sys.argv[1], "STKXFM")
truth = fits.getheader(sys.argv[2], 0)
row = xfm[xfm["component"] == "TOTAL"][0]
print(f"{'':8s}{'fitted':>10s}{'1-sigma':>10s}{'truth':>10s}{'(fit-truth)/sigma':>20s}")
for axis, true, crb in (("xi", truth["D_XI"], truth["CRB_XI"]), ("eta", truth["D_ETA"], truth["CRB_ETA"])):
    fit, err = row[f"d_{axis}"], row[f"d_{axis}_err"]
    print(f"d_{axis:5s}{fit:+10.3f}{err:10.3f}{true:+10.3f}{(fit - true) / err:+20.2f}   arcsec")
print(f"Cramer-Rao bound: {truth['CRB_XI']:.3f}\" (xi), {truth['CRB_ETA']:.3f}\" (eta); "
      f"method {hdr['METHOD']}, group {hdr['GROUP']}, {hdr['NUSED']} pairs used, "
      f"QAFLAGS {hdr['QAFLAGS']} {hdr.get('QAREASON', '')}")
PY
echo "Outputs are in $W/ (pairs.fits, xfm.fits, det_corrected.fits, products/)."
