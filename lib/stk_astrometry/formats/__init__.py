"""The files the tools exchange: one module per file format, reader and writer side by side.

Each module follows its section of ``share/doc/formats.md``:

========================  =========================================================  ==========
module                    file                                                       formats.md
========================  =========================================================  ==========
:mod:`.catalogs`          detections, Gaia, ALLWISE, best-neighbour tables (input)   §0
:mod:`.pairs`             matched-pairs file, ``CONTENT = 'STKPAIRS'``               §1
:mod:`.transform`         transform file, HDU ``STKXFM`` (and ``STKXFMID``)          §2
:mod:`.detcorr`           corrected detections, ``CONTENT = 'STKDETCORR'``           §2a
:mod:`.diag`              diagnostics, ``CONTENT = 'STKXFMDIAG'``                    §2b
:mod:`.selection`         QA selection file (stk_qa; stk_xfm ``include=@file``)      §2d
:mod:`.regions`           QA DS9 region file (stk_qa)                                 §2e
========================  =========================================================  ==========

Nothing outside this package reads or writes these layouts.  The writers build the HDUs
(pure) and hand them to :func:`stk_astrometry.fitsutil.write_fits`, which stamps the CIAO
conventions (CREATOR, DATE, HISTORY, CHECKSUM) and writes atomically.  The modules import
the pure cores and the CIAO-convention helpers, never a tool front end or the API.
"""
