"""Reading catalog tables given CIAO-style.  (BEING WRITTEN — API fixed.)

- ``parse_virtual_filename(spec) -> (path, block)``: ``file.fits[EXTNAME]`` / ``file.fits[2]``
  (1-based, 1 = primary as in CIAO); block None when absent.  Pure.
- ``read_table(spec, *, param) -> TableInput`` with fields ``table`` (astropy Table, column names
  lower-cased), ``header`` (astropy Header of the HDU, or {} for non-FITS), ``path``, ``hdu``
  (label for messages, e.g. 'det.fits[DETECTIONS]'), ``spec``.  FITS: the named/numbered HDU, else the
  first table HDU.  Other formats (VOTable, ECSV, CSV) through astropy.  A missing or unreadable
  file raises InputError naming the parameter and file.
- ``require_columns(tin, names, *, aliases=None) -> dict[name, column_name]``: case-insensitive
  lookup with aliases; a missing column raises CatalogError naming file, HDU and column.
"""
