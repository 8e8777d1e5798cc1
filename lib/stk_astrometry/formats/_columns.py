"""Column descriptions (TCOMMn) and UCDs (TUCDn) of the files the tools write.

TOPCAT and STILTS show TCOMMn as a column's description and TUCDn as its UCD (IVOA UCD1+
words); astropy keeps both as header cards.  One table for every format: a column means the
same wherever its name appears, except where a format overrides it (STKXFM's d_xi is the
applied shift, not a pair's offset).
"""

#: Column descriptions (TCOMMn) and UCD1+ words (TUCDn, '' where none fits).
COLUMN_INFO = {
    "region_id": ("Detection id (region_id) within the stack", "meta.id"),
    "ref_id": ("Reference source id: Gaia source_id or ALLWISE allwise_oid", "meta.id.cross"),
    "ra": ("Detection right ascension (ICRS)", "pos.eq.ra"),
    "dec": ("Detection declination (ICRS)", "pos.eq.dec"),
    "xi": ("Detection xi, tangent plane at RA_STACK/DEC_STACK, east", "pos.cartesian.x"),
    "eta": ("Detection eta, tangent plane at RA_STACK/DEC_STACK, north", "pos.cartesian.y"),
    "det_ra": ("Detection right ascension (ICRS)", "pos.eq.ra"),
    "det_dec": ("Detection declination (ICRS)", "pos.eq.dec"),
    "ref_ra": ("Reference source right ascension (ICRS)", "pos.eq.ra"),
    "ref_dec": ("Reference source declination (ICRS)", "pos.eq.dec"),
    "det_xi": ("Detection xi in the stack tangent plane", "pos.cartesian.x"),
    "det_eta": ("Detection eta in the stack tangent plane", "pos.cartesian.y"),
    "ref_xi": ("Reference xi in the stack tangent plane", "pos.cartesian.x"),
    "ref_eta": ("Reference eta in the stack tangent plane", "pos.cartesian.y"),
    "err_r0": ("Detection 95% error ellipse semi-major axis", "stat.error;pos.errorEllipse"),
    "err_r1": ("Detection 95% error ellipse semi-minor axis", "stat.error;pos.errorEllipse"),
    "err_ang": ("Error ellipse position angle, north through east", "pos.posAng"),
    "theta": ("Detection off-axis angle", "instr.offset"),
    "src_cnts": ("Detection source counts", "phot.count"),
    "likelihood_class": ("CSC likelihood class (TRUE, MARGINAL)", "meta.code.class"),
    "n_gaia": ("Gaia candidates within the match radius", "meta.number"),
    "n_wise": ("ALLWISE candidates within the match radius", "meta.number"),
    "ref_sigra": ("Reference 1-sigma error in RA (0 for Gaia)", "stat.error;pos.eq.ra"),
    "ref_sigdec": ("Reference 1-sigma error in Dec (0 for Gaia)", "stat.error;pos.eq.dec"),
    "sep": ("Great-circle separation of the pair", "pos.angDistance"),
    "d_xi": ("Offset in xi, reference minus source", "pos.cartesian.x;arith.diff"),
    "d_eta": ("Offset in eta, reference minus source", "pos.cartesian.y;arith.diff"),
    "group": ("Separation group, 1..NGROUPS", "meta.code"),
    "n_cand": ("Candidates this detection has in this catalog", "meta.number"),
    "wise_id": ("ALLWISE allwise_oid", "meta.id"),
    "gaia_id": ("Gaia source_id", "meta.id.cross"),
    "wise_ra": ("ALLWISE right ascension", "pos.eq.ra"),
    "wise_dec": ("ALLWISE declination", "pos.eq.dec"),
    "wise_xi": ("ALLWISE xi in the stack tangent plane", "pos.cartesian.x"),
    "wise_eta": ("ALLWISE eta in the stack tangent plane", "pos.cartesian.y"),
    "wise_sigra": ("ALLWISE 1-sigma error in RA", "stat.error;pos.eq.ra"),
    "wise_sigdec": ("ALLWISE 1-sigma error in Dec", "stat.error;pos.eq.dec"),
    "gaia_ra": ("Gaia right ascension", "pos.eq.ra"),
    "gaia_dec": ("Gaia declination", "pos.eq.dec"),
    "gaia_xi": ("Gaia xi in the stack tangent plane", "pos.cartesian.x"),
    "gaia_eta": ("Gaia eta in the stack tangent plane", "pos.cartesian.y"),
    "used_spec": ("The pair entered the specification's fit", "meta.code"),
    "p_true": ("Mixture probability that the pair is a true match", "stat.probability"),
    "ra_corr": ("Corrected right ascension (ICRS)", "pos.eq.ra"),
    "dec_corr": ("Corrected declination (ICRS)", "pos.eq.dec"),
    "xi_corr": ("Corrected xi in the stack tangent plane", "pos.cartesian.x"),
    "eta_corr": ("Corrected eta in the stack tangent plane", "pos.cartesian.y"),
    "a11": ("Transform matrix element 1,1 (1 for a translation)", ""),
    "a12": ("Transform matrix element 1,2 (0 for a translation)", ""),
    "a21": ("Transform matrix element 2,1 (0 for a translation)", ""),
    "a22": ("Transform matrix element 2,2 (1 for a translation)", ""),
    "t1": ("Translation in sky x", "pos.cartesian.x;arith.diff"),
    "t2": ("Translation in sky y", "pos.cartesian.y;arith.diff"),
    "ra_ref": ("Reference point (stack tangent point) RA", "pos.eq.ra"),
    "dec_ref": ("Reference point (stack tangent point) Dec", "pos.eq.dec"),
    "roll_ref": ("Roll at the reference point", "pos.posAng"),
    "xpix_ref": ("Sky x of the reference pixel", "pos.cartesian.x;instr.pixel"),
    "ypix_ref": ("Sky y of the reference pixel", "pos.cartesian.y;instr.pixel"),
    "x_scale": ("Sky pixel size in x (negative: x grows west)", "instr.scale"),
    "y_scale": ("Sky pixel size in y", "instr.scale"),
    "component": ("TOTAL, DET_TO_WISE or WISE_TO_GAIA", "meta.code"),
    "d_xi_err": ("1-sigma error of d_xi", "stat.error"),
    "d_eta_err": ("1-sigma error of d_eta", "stat.error"),
    "cov_xi_eta": ("Covariance of d_xi and d_eta", "stat.covariance"),
    "n_used": ("Pairs used by the fit", "meta.number"),
    "resstd0": ("rms of target minus source before the shift", "stat.stdev"),
    "resstd1": ("rms of target minus source after the shift", "stat.stdev"),
}


def column_info(columns, overrides=None):
    """``{column: (description, ucd)}`` for the given column names (unknown names left out)."""
    overrides = overrides or {}
    return {c: overrides.get(c, COLUMN_INFO[c]) for c in columns
            if c in overrides or c in COLUMN_INFO}
