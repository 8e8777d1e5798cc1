#!/bin/sh
# Regenerate the bundled sample stack in share/sample/ (seeded: the same files every time,
# apart from DATE, CHECKSUM and HISTORY time stamps).  Run from the repository root:
#
#   sh share/sample/make_sample.sh
#
# The sample keeps the stack's catalogs and truth file, and one product of each kind of
# update of spec §5.6 (EQPOS image and event WCS, EQSRC regions, ASPSOL3 columns + STKXFM,
# source-list columns, keywords only, nothing to do, header scrub, JPG) -- about 1.6 MB, most
# of it the two counts images (512 x 512 int16, the sources rendered for stk_qa's postage
# stamps).  The test suite covers every product type; stk_simulate writes them all.
set -e
cd "$(dirname "$0")/../.."
. share/scripts/ensure_venv.sh
PATH="$STK_VENV/bin:$PATH"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export PFILES="$WORK/pfiles;$STK_ROOT/param"
mkdir -p "$WORK/pfiles"
stk_simulate "$WORK/sim" seed=2026 shift_xi=0.30 shift_eta=-0.20 verbose=0 mode=h
OUT=share/sample
rm -rf "$OUT/products" "$OUT"/*.fits
cp "$WORK"/sim/*.fits "$OUT/"
cd "$WORK/sim"
find products \( -name '*N001_evt3.fits' -o -name '*N001_b_img3.fits' -o -name '*N001_b_img3.jpg' \
    -o -name '*_asol3.fits' -o -name '*N001_r0012_reg3.fits' -o -name '*_r0012_pha3.fits' \
    -o -name '*N001_r0012b_draws3.fits' -o -name '*_rmf3.fits' -o -name '*N029_evt3.fits' \
    -o -name '*_mrgsrc3.fits' -o -name '*N029_r0012_reg3.fits' -o -name '*N029_b_img3.fits' \
    -o -name '*_blocks3.fits' \) -type f | sort > "$WORK/keep"
cd - > /dev/null
while read -r f; do
    mkdir -p "$OUT/$(dirname "$f")"
    cp "$WORK/sim/$f" "$OUT/$f"
done < "$WORK/keep"
du -sh "$OUT"
