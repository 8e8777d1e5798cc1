"""FITS helpers shared by the tools.  (BEING WRITTEN — API fixed.)

- ``check_clobber(path, clobber, *, param="outfile")``: raise OutputError before any work when
  ``path`` exists and clobber is false.
- ``write_fits(hdul, path, params, *, clobber)``: stamp every HDU (CREATOR, DATE, CIAO HISTORY
  TOOL/PARM/CONT records with ASCnnnnn counters and HISTNUM) then write atomically (temporary
  file in the destination folder, fsync, os.replace) with CHECKSUM/DATASUM.
- ``stamp_header(header, params)``: the stamping alone (for files written another way).
- ``atomic_path(path)``: context manager yielding a temporary path in the same folder, renamed
  onto ``path`` on success, removed on failure.
- ``get_keyword(header, name, default=None)`` / ``set_keyword(header, name, value, comment="")``:
  read/write a keyword of any length; > 8 chars uses CXC DTYPEn/DVALn (reads HIERARCH too).
- ``history_records(toolname, items, *, start=1, when=None) -> list[str]``: pure formatter of the
  CIAO HISTORY payloads (each a 72-char card body) for ``items`` = [(name, value_text), ...].
"""
