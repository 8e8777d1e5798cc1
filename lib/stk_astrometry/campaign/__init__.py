"""A campaign over many stacks: Dask execution, the SQLite run database, the results table and report.

Layers: ``stacks`` (the list), ``settings`` (step parameters), ``task`` (one stack, on a worker,
calling :mod:`stk_astrometry.api`), ``database``, ``driver`` (plan, run, record), ``progress``,
``report`` (plots and index.html).  The table format is :mod:`stk_astrometry.formats.campaign`.
"""
