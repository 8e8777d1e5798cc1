"""Pure cores: math on arrays, no file I/O, no parameter reading (design.md, "Layers").

Modules here may import numpy, scipy and astropy's coordinates/time only, and never a
module of ``formats``, ``ciao``, ``products``, ``api``, ``campaign`` or ``tools``.
"""
