"""stk_astrometry: tie Chandra Source Catalog stack astrometry to the Gaia frame.

CIAO-style command-line tools (``stk_match``, ``stk_xfm``, ``stk_update_wcs``,
``stk_simulate``) and the library they are built from.  Importing this package
is cheap on purpose: heavy modules (astropy, scipy) are imported by the modules
that need them, so ``stk_match --help`` starts fast.
"""

__version__ = "0.1.0"
PACKAGE = "stk_astrometry"
