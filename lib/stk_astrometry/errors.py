"""The exception hierarchy of stk_astrometry.

Every error a user can cause is a subclass of :class:`StkError`; the tool
runner (:mod:`stk_astrometry.runner`) turns it into the CIAO error line
``# tool (stk_astrometry X.Y.Z): ERROR message`` and exit status 1.  Any other
exception reaching the runner is a bug and is reported as one, with its
traceback.  Messages name the file, HDU, column or parameter and the offending
value.
"""


class StkError(Exception):
    """Base class of every user-facing error."""


class ParameterError(StkError):
    """A bad parameter file, command-line argument or parameter value."""


class InputError(StkError):
    """An input file that is missing, unreadable or lacks what is needed."""


class CatalogError(InputError):
    """A catalog table without a required column or with unusable content."""


class FormatError(InputError):
    """A file that is not in the format a tool expects (e.g. not a stk_match output)."""


class OutputError(StkError):
    """An output that cannot be written (exists with clobber=no, no permission...)."""


class FitError(StkError):
    """A fit that cannot be set up at all (degenerate cases are flagged, not raised)."""


class ProductError(StkError):
    """A data product that cannot be recognised or updated."""
