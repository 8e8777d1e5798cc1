"""The parameters of each step of a campaign, from the tools' own ``.par`` defaults and YAML.

Each step is run with the *system* parameter file of its tool (the installed defaults, never
the user's learned copy -- a campaign must not depend on what the last interactive run left
behind, and parallel runs must never share or write a parameter file) overridden by the tool's
section of the ``@@campaign.yaml`` files.  Values are typed and validated exactly as the tool
would (:func:`stk_astrometry.parameters.load_parameters`), so a typo fails before any stack
runs.  Nothing is learned.

The per-stack parameters (input and output file names, the tangent point, ``clobber``,
``verbose``) are set by the batch for every stack and cannot be given here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..errors import ParameterError

__all__ = ["STEP_TOOLS", "StepSettings", "load_step_settings", "params_digest"]

#: step -> the tool whose parameters it takes.
STEP_TOOLS = {"match": "stk_match", "fit": "stk_xfm", "update": "stk_update_wcs"}

#: Parameters the batch sets per stack (or that only make sense for one interactive run).
_PER_STACK = {
    "stk_match": ("detfile", "gaiafile", "outfile", "wisefile", "bestnbfile", "stackid",
                  "ra_stack", "dec_stack"),
    "stk_xfm": ("infile", "outfile", "outdetfile", "diagfile", "include", "exclude"),
    "stk_update_wcs": ("infile", "transformfile", "outdir"),
}
_ALWAYS_DROPPED = ("clobber", "verbose", "mode")


@dataclass(frozen=True)
class StepSettings:
    """The typed keyword arguments of each step's API call (``.par`` names).

    Attributes
    ----------
    match, fit, update : dict
        Keyword arguments of ``api.match_stack``, ``api.fit_stack``, ``api.update_products``.
    """

    match: dict = field(default_factory=dict)
    fit: dict = field(default_factory=dict)
    update: dict = field(default_factory=dict)

    def for_step(self, step: str) -> dict:
        return dict(getattr(self, step))


def _system_par(tool: str):
    from ..parameters import system_par_dirs

    for folder in system_par_dirs(tool):
        path = folder / f"{tool}.par"
        if path.is_file():
            return path
    raise ParameterError(f"cannot find the system parameter file {tool}.par")


def _step_values(tool: str, yaml_files: Sequence[str]) -> dict:
    from ..parameters import load_parameters, read_par

    par = _system_par(tool)
    base = read_par(par)
    required = [p.name for p in base.params if p.mode == "a"]
    # placeholders for the per-stack required parameters: typed as the tool would, then dropped
    argv = [f"@@{par}"] + [f"@@{y}" for y in yaml_files]
    argv += [f"{name}=__per_stack__" for name in required] + ["mode=h"]
    per_stack = set(_PER_STACK[tool])
    for y in yaml_files:
        given = _yaml_names(y, tool, base)
        clash = sorted(given & per_stack)
        if clash:
            raise ParameterError(
                f"stk_batch: {y}: section {tool} sets {', '.join(clash)}, which stk_batch sets "
                f"for each stack; remove {'it' if len(clash) == 1 else 'them'}")
    params = load_parameters(tool, argv, interactive=False, environ={"PFILES": ";"})
    return {k: v for k, v in params.items()
            if k not in per_stack and k not in _ALWAYS_DROPPED}


def _yaml_names(path, tool, base) -> set:
    from ..parameters import _read_yaml

    return set(_read_yaml(path, tool, base))


def load_step_settings(yaml_files: Sequence[str] = ()) -> StepSettings:
    """Typed step parameters from the tools' system ``.par`` files and ``@@campaign.yaml``.

    Raises
    ------
    ParameterError
        Unknown or invalid values, or a per-stack parameter given in the YAML.
    """
    yaml_files = [str(y) for y in yaml_files]
    return StepSettings(**{step: _step_values(tool, yaml_files)
                           for step, tool in STEP_TOOLS.items()})


def params_digest(values: Mapping) -> str:
    """A digest of parameter values (canonical JSON; order of keys does not matter)."""
    text = json.dumps(values, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]
