"""The one tool runner every stk_* tool goes through.  (BEING WRITTEN — API fixed.)

    def main(argv=None) -> int:
        return run_tool("stk_match", argv, _body, description=__doc__)

``run_tool(toolname, argv, body, *, description) -> int``:
- ``-h``/``--help`` prints the parameters (plist-like) and ``description``; ``--version``.
- resolves parameters with ``stk_astrometry.parameters.load_parameters`` (typed ParameterSet);
- maps ``verbose`` 0-5 onto logging (stdout), echoes the resolved parameters at verbose >= 1;
- calls ``body(params)``; its return value (int or None -> 0) is the exit status;
- a StkError becomes ``# tool (stk_astrometry X.Y.Z): ERROR message`` on stderr, exit 1;
  any other exception is reported as a bug with its traceback, exit 1;
- learns the parameters (user par file) after a successful run.
"""
