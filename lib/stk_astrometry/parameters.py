"""CIAO parameter files (``.par``) and the command line of the stk_* tools.

Owns everything about parameters: the pure parser/formatter of the CIAO/IRAF
``.par`` format (:func:`parse_par` / :func:`format_par`), the thin file
reader/writer (:func:`read_par` / :func:`write_par`, atomic), the PFILES
lookup of a tool's parameter file (user copy, then system copy), the command
line (``name=value``, positional values, ``name+``/``name-``, unique-prefix
abbreviations, ``@@file.par``, ``@@file.yaml``), prompting, validation and
typing of the values (:func:`load_parameters` returns a read-only
:class:`ParameterSet`), learning (:meth:`ParameterSet.learn`) and
:func:`unlearn`.

The format, one parameter per line::

    name,type,mode,value,min,max,prompt

with types ``b i r s f`` (``fr fw fe fn`` accepted and kept), modes
``a h q l hl ql``, enumerations ``a|b|c`` in the *min* field, ``INDEF`` for
an undefined number, ``)name`` redirects to another parameter of the same
file, ``$VAR``/``${VAR}`` expanded when a value is used, ``#`` comment lines,
and the closing ``mode,s,h,"ql",,,`` line.  A file that nothing changed is
written back byte-for-byte: every line keeps its original text and only the
value field of a changed parameter is re-rendered.

Deliberately light to import (standard library only; PyYAML is imported
only when a YAML parameter file is used): tool start-up time matters.
"""

import functools
import logging
import math
import os
import re
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from .errors import OutputError, ParameterError

logger = logging.getLogger(__name__)

__all__ = [
    "ParFile",
    "Param",
    "ParameterSet",
    "TextLine",
    "describe_tool",
    "expand_env",
    "find_par_file",
    "format_par",
    "format_plist",
    "load_parameters",
    "parse_par",
    "parse_pfiles",
    "read_par",
    "system_par_dirs",
    "to_bool",
    "tool_synopsis",
    "unlearn",
    "write_par",
]

BASE_TYPES = ("b", "i", "r", "s", "f")
FILE_TYPE_RE = re.compile(r"^f[rwen]*$")
MODES = ("a", "h", "q", "l", "hl", "ql")
INDEF = "INDEF"
DEFAULT_USER_DIR = "~/cxcds_param4"

_TRUE = ("yes", "y", "true", "on", "1")
_FALSE = ("no", "n", "false", "off", "0")
_FIELD_WS = " \t"
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FLAG_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)([+-])$")
_ASSIGN_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.DOTALL)
_INT_RE = re.compile(r"^[+-]?[0-9]+$")
_ENV_RE = re.compile(r"\$(?:\{([^}]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
_MAX_PROMPT_TRIES = 3


# ----------------------------------------------------------------------------
# The pure model of a .par file
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TextLine:
    """A comment or blank line, kept verbatim.

    Attributes
    ----------
    raw : str
        The line's text without its line terminator.
    eol : str
        The line terminator (``"\\n"``, ``"\\r\\n"`` or ``""`` for a last line
        without one).
    """

    raw: str
    eol: str

    def render(self):
        """The line's text (without terminator)."""
        return self.raw


@dataclass(frozen=True)
class Param:
    """One parameter line of a ``.par`` file.

    Attributes
    ----------
    name, type, mode : str
        As written (type and mode lower-cased); ``type`` may be ``fr`` etc.
    value : str
        The value field's text with its quotes removed (not env-expanded,
        redirects not resolved): exactly what is stored.
    min, max, prompt : str
        The other fields, unquoted.  An enumeration ``a|b|c`` sits in ``min``.
    value_quote : str
        The quote character the value field used (``'"'``, ``"'"`` or ``""``);
        kept when the value is re-rendered.
    raw_fields : tuple of str
        The line split at its (unquoted) commas, each piece verbatim, so that
        ``",".join(raw_fields)`` is the original line.
    eol : str
        The line terminator.
    lineno : int
        1-based line number in the file it was read from (for messages).
    """

    name: str
    type: str
    mode: str
    value: str
    min: str
    max: str
    prompt: str
    value_quote: str
    raw_fields: tuple
    eol: str
    lineno: int = 0

    @property
    def base_type(self):
        """``b``, ``i``, ``r``, ``s`` or ``f`` (``fr``/``fw``/... give ``f``)."""
        return self.type[0]

    @property
    def enum(self):
        """The enumerated values (tuple) when ``min`` holds ``a|b|c``, else None."""
        if "|" in self.min:
            return tuple(self.min.split("|"))
        return None

    @property
    def hidden(self):
        """True for the hidden modes (``h``, ``hl``): shown in parentheses by plist."""
        return "h" in self.mode

    def render(self):
        """The line's text (without terminator)."""
        return ",".join(self.raw_fields)

    def with_value(self, text):
        """A copy holding ``text`` as its value; only the value field is re-rendered.

        The quoting style of the old value is kept when the new text allows it.

        Raises
        ------
        ParameterError
            If ``text`` cannot be stored in a par file (a line break, or both
            kinds of quote).
        """
        if text == self.value:
            return self
        field = _render_value_field(self, text)
        fields = list(self.raw_fields)
        while len(fields) < 4:
            fields.append("")
        fields[3] = field
        quote = field[0] if field[:1] in ("'", '"') else ""
        return replace(self, value=text, value_quote=quote, raw_fields=tuple(fields))


def _render_value_field(param, text):
    if "\n" in text or "\r" in text:
        raise ParameterError(
            f"parameter '{param.name}': a value cannot contain a line break ({text!r})"
        )
    has_dq = '"' in text
    has_sq = "'" in text
    if has_dq and has_sq:
        raise ParameterError(
            f"parameter '{param.name}': a value cannot contain both kinds of quote ({text!r})"
        )
    style = param.value_quote
    needs_quotes = (
        text == "" or text != text.strip(_FIELD_WS) or "," in text or has_dq or has_sq
    )
    if style == "" and not needs_quotes:
        return text
    if style == "" and text == "" and param.base_type in ("b", "i", "r"):
        return ""
    if style == "'" and not has_sq:
        return f"'{text}'"
    if not has_dq:
        return f'"{text}"'
    return f"'{text}'"


@dataclass(frozen=True)
class ParFile:
    """A parsed ``.par`` file: every line, in order, each keeping its text.

    Attributes
    ----------
    lines : tuple of (Param or TextLine)
    source : str
        Where it came from (a path, or ``"<string>"``), for messages.
    """

    lines: tuple
    source: str = "<string>"

    # (the lines never change: the derived views are made once, on first use -- a tool's run
    # looks its parameters up by name ~40 times)
    @functools.cached_property
    def params(self):
        """The parameters, in file order (tuple of :class:`Param`)."""
        return tuple(line for line in self.lines if isinstance(line, Param))

    @functools.cached_property
    def names(self):
        """Parameter names in file order."""
        return tuple(p.name for p in self.params)

    @functools.cached_property
    def _by_name(self):
        by_name = {}
        for p in self.params:
            by_name.setdefault(p.name, p)      # the first of a name, as a scan finds it
        return by_name

    def __contains__(self, name):
        try:
            return name in self._by_name
        except TypeError:        # an unhashable "name" is not one
            return False

    def param(self, name):
        """The :class:`Param` called ``name`` (exact name).

        Raises
        ------
        ParameterError
            If there is no such parameter.
        """
        try:
            return self._by_name[name]
        except (KeyError, TypeError):
            raise ParameterError(f"{self.source} has no parameter '{name}'") from None

    def with_value(self, name, text):
        """A copy with parameter ``name`` holding ``text`` (other lines untouched)."""
        self.param(name)  # raises for an unknown name
        lines = tuple(
            line.with_value(text)
            if isinstance(line, Param) and line.name == name
            else line
            for line in self.lines
        )
        return replace(self, lines=lines)

    def with_values(self, texts):
        """A copy with several values changed (``texts``: mapping name -> text).

        The same as :meth:`with_value` for each in turn (the same errors, in the same order),
        in one pass over the lines.
        """
        if not texts:
            return self
        # each changed line made once, in the mapping's order (raises for an unknown name or
        # value as with_value would); a later line of the same name, which only a ParFile made
        # by hand can have, changed from itself as with_value changes it
        changed = {name: self.param(name).with_value(text) for name, text in texts.items()}
        first = self._by_name
        lines = tuple(
            (changed[line.name] if line is first[line.name] else line.with_value(texts[line.name]))
            if isinstance(line, Param) and line.name in changed else line
            for line in self.lines
        )
        return replace(self, lines=lines)


def _split_fields(line, *, where):
    """Split a parameter line at its unquoted commas; pieces are verbatim."""
    fields = []
    n = len(line)
    start = 0
    while True:
        k = start
        while k < n and line[k] in _FIELD_WS:
            k += 1
        if k < n and line[k] in ("'", '"'):
            quote = line[k]
            close = line.find(quote, k + 1)
            if close < 0:
                raise ParameterError(
                    f"{where}: unterminated {quote} quote in: {line!r}"
                )
            m = close + 1
            while m < n and line[m] in _FIELD_WS:
                m += 1
            if m < n and line[m] != ",":
                raise ParameterError(
                    f"{where}: unexpected text after a closing quote in: {line!r}"
                )
        else:
            m = line.find(",", k)
            if m < 0:
                m = n
        fields.append(line[start:m])
        if m >= n:
            return fields
        start = m + 1


def _unquote(raw):
    """(text, quote) of a verbatim field."""
    s = raw.strip(_FIELD_WS)
    if len(s) >= 2 and s[0] in ("'", '"') and s[-1] == s[0]:
        return s[1:-1], s[0]
    return s, ""


def _parse_param_line(line, eol, *, lineno, source):
    where = f"{source}, line {lineno}"
    raw_fields = _split_fields(line, where=where)
    if len(raw_fields) < 3:
        raise ParameterError(
            f"{where}: expected 'name,type,mode,value,min,max,prompt', got {line!r}"
        )
    texts = [_unquote(f) for f in raw_fields]
    values = [t for t, _ in texts[:6]]
    while len(values) < 6:
        values.append("")
    # A prompt with unquoted commas: the remaining pieces are all prompt.
    prompt = _unquote(",".join(raw_fields[6:]))[0] if len(texts) > 6 else ""
    name, ptype, mode, value, vmin, vmax = values
    if not _NAME_RE.match(name):
        raise ParameterError(f"{where}: invalid parameter name {name!r}")
    ptype = ptype.lower()
    if ptype not in BASE_TYPES and not FILE_TYPE_RE.match(ptype):
        raise ParameterError(
            f"{where}: parameter '{name}' has unknown type {ptype!r} "
            f"(expected one of b, i, r, s, f, fr, fw, fe, fn)"
        )
    mode = mode.lower()
    if mode not in MODES:
        raise ParameterError(
            f"{where}: parameter '{name}' has unknown mode {mode!r} "
            f"(expected one of {', '.join(MODES)})"
        )
    value_quote = texts[3][1] if len(texts) > 3 else ""
    return Param(
        name=name,
        type=ptype,
        mode=mode,
        value=value,
        min=vmin,
        max=vmax,
        prompt=prompt,
        value_quote=value_quote,
        raw_fields=tuple(raw_fields),
        eol=eol,
        lineno=lineno,
    )


def _split_lines(text):
    """[(line, eol)] for ``"\\n"`` and ``"\\r\\n"`` terminators, losslessly."""
    out = []
    pieces = text.split("\n")
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        if last:
            if piece:
                out.append((piece, ""))
            break
        if piece.endswith("\r"):
            out.append((piece[:-1], "\r\n"))
        else:
            out.append((piece, "\n"))
    return out


def parse_par(text, *, source="<string>"):
    """Parse the text of a ``.par`` file.

    Pure: no file access.  Every line is kept verbatim so that
    ``format_par(parse_par(text)) == text``.

    Parameters
    ----------
    text : str
        The file's content.
    source : str, optional
        Name used in error messages (the file's path).

    Returns
    -------
    ParFile

    Raises
    ------
    ParameterError
        On a malformed line (naming ``source`` and the line number), an
        unknown type or mode, or a duplicated parameter name.
    """
    return _parse_par(text, source)


# A ParFile is immutable (frozen dataclasses, tuples), so the parse of a text is remembered:
# a tool run again in one process (a notebook, the benchmarks, a script calling main(argv) per
# stack) reads its .par files again -- any change is seen -- but does not parse them again
# (issue 11: ~0.15 ms a file, two or three files a run).  A malformed text raises every time.
@functools.lru_cache(maxsize=32)
def _parse_par(text, source):
    lines = []
    seen = {}
    for lineno, (line, eol) in enumerate(_split_lines(text), start=1):
        stripped = line.strip(" \t")
        if stripped == "" or stripped.startswith("#"):
            lines.append(TextLine(raw=line, eol=eol))
            continue
        param = _parse_param_line(line, eol, lineno=lineno, source=source)
        if param.name in seen:
            raise ParameterError(
                f"{source}, line {lineno}: parameter '{param.name}' already defined "
                f"on line {seen[param.name]}"
            )
        seen[param.name] = lineno
        lines.append(param)
    return ParFile(lines=tuple(lines), source=source)


def format_par(parfile):
    """The text of a :class:`ParFile` (the inverse of :func:`parse_par`).  Pure."""
    return "".join(line.render() + line.eol for line in parfile.lines)


def read_par(path):
    """Read and parse a ``.par`` file.

    Raises
    ------
    ParameterError
        If the file cannot be read or parsed (naming the file).
    """
    path = Path(path)
    try:
        with open(path, encoding="utf-8", errors="surrogateescape", newline="") as fh:
            text = fh.read()
    except OSError as exc:
        raise ParameterError(
            f"Unable to open parameter file {path}: {exc.strerror or exc}"
        ) from exc
    return parse_par(text, source=str(path))


def write_par(path, parfile):
    """Write a :class:`ParFile` atomically (temp file in the same folder + os.replace).

    The folder is created if needed.  An existing file's permission bits are kept.

    Raises
    ------
    OutputError
        If the file cannot be written.
    """
    import tempfile

    path = Path(path)
    text = format_par(parfile)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            mode = path.stat().st_mode & 0o777
        except FileNotFoundError:
            mode = 0o644
        fd, tmp = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
        )
        with os.fdopen(
            fd, "w", encoding="utf-8", errors="surrogateescape", newline=""
        ) as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise OutputError(
            f"Unable to write parameter file {path}: {exc.strerror or exc}"
        ) from exc
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


# ----------------------------------------------------------------------------
# plist layout
# ----------------------------------------------------------------------------

_PLIST_NAME_WIDTH = 14
_PLIST_VALUE_WIDTH = 17


def format_plist(parfile, path):
    """The ``plist`` listing of a parameter file.  Pure.

    Layout of CIAO's plist: a header ``Parameters for <path>``, then one line
    per parameter, name right-aligned (hidden ones in parentheses), ``=``,
    the stored value, and the prompt from column 35.

    Returns
    -------
    str
    """
    out = ["", f"Parameters for {path}", ""]
    for p in parfile.params:
        if p.hidden:
            left = f"({p.name}"
            val = f"{p.value})"
        else:
            left = p.name
            val = p.value
        line = f"{left:>{_PLIST_NAME_WIDTH}} = "
        if p.prompt:
            if len(val) < _PLIST_VALUE_WIDTH:
                line += f"{val:<{_PLIST_VALUE_WIDTH}}{p.prompt}"
            else:
                line += f"{val} {p.prompt}"
        else:
            line += val
        out.append(line.rstrip())
    return "\n".join(out) + "\n"


def tool_synopsis(tool, parfile):
    """CIAO ahelp SYNTAX line: required parameters bare, hidden ones in brackets."""
    words = [tool]
    for p in parfile.params:
        if p.name == "mode":
            continue
        words.append(f"[{p.name}]" if p.hidden else p.name)
    return " ".join(words)


# ----------------------------------------------------------------------------
# Values: booleans, environment, redirects, typing
# ----------------------------------------------------------------------------


def to_bool(text):
    """Parse a CIAO boolean (yes/no/true/false/y/n/1/0/on/off, any case).

    Returns
    -------
    bool or None
        None when ``text`` is not a boolean.
    """
    t = text.strip().lower()
    if t in _TRUE:
        return True
    if t in _FALSE:
        return False
    return None


def expand_env(text, environ, *, tool="", name=""):
    """Expand ``$VAR`` and ``${VAR}`` from ``environ``.

    Raises
    ------
    ParameterError
        If a variable is not set (naming the parameter and the variable):
        a literal ``${CALDB}`` in a path would only fail later, less clearly.
    """

    def repl(m):
        var = m.group(1) if m.group(1) is not None else m.group(2)
        if var == "" or var not in environ:
            raise ParameterError(
                f"{_who(tool)}parameter '{name}' value {text!r} uses environment "
                f"variable '{var}', which is not set"
            )
        return environ[var]

    return _ENV_RE.sub(repl, text)


def _who(tool):
    return f"{tool}: " if tool else ""


def _match_enum(param, text, tool):
    """The enumerated value ``text`` stands for: exact, any-case exact, unique prefix."""
    choices = param.enum
    if text in choices:
        return text
    lowered = [c for c in choices if c.lower() == text.lower()]
    if len(lowered) == 1:
        return lowered[0]
    if text:
        prefixed = [c for c in choices if c.lower().startswith(text.lower())]
        if len(prefixed) == 1:
            return prefixed[0]
        if len(prefixed) > 1:
            raise ParameterError(
                f"Multiple matches for {tool} parameter '{param.name}' value '{text}', "
                f"choose from: {', '.join(prefixed)}"
            )
    raise ParameterError(
        f"{_who(tool)}parameter '{param.name}' value '{text}' is not one of: "
        f"{'|'.join(choices)}"
    )


def _parse_number(param, text, tool, *, what="value"):
    t = text.strip()
    if t.upper() == INDEF or t == "":
        return None
    if param.base_type == "i":
        if not _INT_RE.match(t):
            raise ParameterError(
                f"{_who(tool)}parameter '{param.name}' {what} '{text}' is not an integer"
            )
        return int(t)
    try:
        number = float(t)
    except ValueError:
        number = None
    if number is None or not math.isfinite(number):
        raise ParameterError(
            f"{_who(tool)}parameter '{param.name}' {what} '{text}' is not a finite real number"
        )
    return number


def _convert(param, text, tool):
    """Type and validate one (expanded, redirect-resolved) value text.

    Returns
    -------
    value : bool, int, float, str or None
    history_text : str
        The value as CIAO writes it in HISTORY (yes/no, INDEF, plain string).
    """
    bt = param.base_type
    if bt == "b":
        flag = to_bool(text)
        if flag is None:
            raise ParameterError(
                f"{_who(tool)}parameter '{param.name}' value '{text}' is not a boolean "
                f"(use yes/no, true/false, y/n, on/off, 1/0)"
            )
        return flag, "yes" if flag else "no"
    if bt in ("i", "r"):
        number = _parse_number(param, text, tool)
        if param.enum is not None and number is not None:
            allowed = [
                _parse_number(param, c, tool, what="enumerated value")
                for c in param.enum
            ]
            if number not in allowed:
                raise ParameterError(
                    f"{_who(tool)}parameter '{param.name}' value '{text}' is not one of: "
                    f"{param.min}"
                )
        elif number is not None:
            lo = _parse_number(param, param.min, tool, what="minimum")
            hi = _parse_number(param, param.max, tool, what="maximum")
            if (lo is not None and number < lo) or (hi is not None and number > hi):
                lo_t = "" if lo is None else param.min.strip()
                hi_t = "" if hi is None else param.max.strip()
                raise ParameterError(
                    f"{_who(tool)}parameter '{param.name}' value {text.strip()} is outside "
                    f"the allowed range {lo_t}:{hi_t}"
                )
        return number, (INDEF if number is None else text.strip())
    # s, f (and fr/fw/...)
    if param.enum is not None:
        if text == "" and "" in param.enum:
            return None, ""
        choice = _match_enum(param, text, tool)
        return choice, choice
    if text == "" or text == INDEF:
        return None, text
    return text, text


def _resolve_redirect(name, texts, tool, chain=()):
    """The text a parameter stands for, following ``)name`` redirects."""
    text = texts[name]
    stripped = text.strip()
    if not stripped.startswith(")"):
        return text
    target = stripped[1:]
    if target.startswith(")"):
        raise ParameterError(
            f"{_who(tool)}parameter '{name}' value '{text}': ')){target[1:]}' "
            f"(value of a command) is not supported"
        )
    if "." in target:
        raise ParameterError(
            f"{_who(tool)}parameter '{name}' value '{text}': redirects to another tool's "
            f"parameters are not supported"
        )
    if target not in texts:
        raise ParameterError(
            f"{_who(tool)}parameter '{name}' redirects to '{target}', which is not a "
            f"parameter of {tool or 'this file'}"
        )
    chain = chain + (name,)
    if target in chain:
        loop = " -> ".join(chain + (target,))
        raise ParameterError(f"{_who(tool)}parameter redirect loop: {loop}")
    return _resolve_redirect(target, texts, tool, chain)


def _typed_value(param, texts, tool, environ):
    text = _resolve_redirect(param.name, texts, tool)
    text = expand_env(text, environ, tool=tool, name=param.name)
    return _convert(param, text, tool)


# ----------------------------------------------------------------------------
# Where parameter files live: PFILES
# ----------------------------------------------------------------------------


def _split_dirs(part, home):
    dirs = []
    for d in part.split(":"):
        d = d.strip()
        if not d:
            continue
        if home and (d == "~" or d.startswith("~/")):
            d = home + d[1:]
        dirs.append(Path(os.path.expanduser(d)))
    return dirs


def parse_pfiles(value, *, home=None):
    """Split a PFILES value into (user_dirs, system_dirs).

    ``"user1:user2;sys1:sys2"``; a value without ``;`` names the same
    directories for both (the HEASoft reading).  Pure.

    Raises
    ------
    ParameterError
        If there is more than one ``;``.
    """
    if value.count(";") > 1:
        raise ParameterError(f"Expected at most one ';' in PFILES={value}")
    if ";" in value:
        user, system = value.split(";")
        return _split_dirs(user, home), _split_dirs(system, home)
    dirs = _split_dirs(value, home)
    return list(dirs), list(dirs)


def system_par_dirs(tool=None):
    """The package's own system ``param/`` directories, best first.

    ``<sys.prefix>/param`` (where an installed package puts its par files; in a
    CIAO conda environment that is CIAO's own param directory), then the source
    tree's ``param/``.  With ``tool`` given, a directory holding ``<tool>.par``
    is put first.
    """
    installed = Path(sys.prefix) / "param"
    source = Path(__file__).resolve().parents[2] / "param"
    dirs = [installed, source]
    if tool is not None and not (installed / f"{tool}.par").is_file():
        dirs = [source, installed]
    return dirs


def _search_dirs(environ):
    """(user_dirs, system_dirs) from PFILES / UPARM, plus the package's dirs."""
    home = environ.get("HOME")
    pfiles = environ.get("PFILES")
    if pfiles is not None and pfiles.strip():
        user, system = parse_pfiles(pfiles, home=home)
    else:
        uparm = environ.get("UPARM")
        user = _split_dirs(uparm if uparm else DEFAULT_USER_DIR, home)
        system = []
    return user, system


@dataclass(frozen=True)
class ParLocation:
    """Where a tool's parameters come from and where they are learned to.

    Attributes
    ----------
    path : Path
        The file to read (user copy if usable, else the system file).
    learn_path : Path or None
        The user copy to learn into (None when no user directory is set).
    system_path : Path or None
        The system file (None if only a user copy exists).
    """

    path: Path
    learn_path: object
    system_path: object


def _first_existing(dirs, filename):
    for d in dirs:
        candidate = d / filename
        if candidate.is_file():
            return candidate
    return None


def _same_file(a, b):
    try:
        return a is not None and b is not None and os.path.samefile(a, b)
    except OSError:
        return False


def _stale_name(path, when):
    stamp = time.strftime("%Y%m%d.%H:%M:%S", time.localtime(when))
    candidate = path.with_name(f"{path.stem}_{stamp}.par")
    n = 1
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}_{stamp}_{n}.par")
        n += 1
    return candidate


def find_par_file(tool, *, environ=None, check_stale=True):
    """Locate ``<tool>.par`` the CIAO way.

    The user directories (the part of PFILES before ``;``) are searched first,
    then the system directories (after ``;``) and the package's own
    ``param/`` directories.  A user copy older than the system file is
    renamed aside to ``<tool>_<YYYYMMDD.HH:MM:SS>.par`` with a warning, as
    CIAO does, and the system file is used.  So is an unreadable user copy.

    Returns
    -------
    ParLocation

    Raises
    ------
    ParameterError
        ``Unable to open parameter file for <tool>. Looked in: ...``.
    """
    environ = os.environ if environ is None else environ
    user_dirs, sys_dirs = _search_dirs(environ)
    sys_dirs = list(sys_dirs) + [d for d in system_par_dirs(tool) if d not in sys_dirs]
    filename = f"{tool}.par"
    user_copy = _first_existing(user_dirs, filename)
    system = _first_existing(sys_dirs, filename)
    learn_path = (
        user_copy
        if user_copy is not None
        else (user_dirs[0] / filename if user_dirs else None)
    )
    if (
        check_stale
        and user_copy is not None
        and system is not None
        and not _same_file(user_copy, system)
    ):
        user_copy = _check_user_copy(user_copy, system)
    if user_copy is not None:
        return ParLocation(path=user_copy, learn_path=learn_path, system_path=system)
    if system is not None:
        return ParLocation(path=system, learn_path=learn_path, system_path=system)
    # one line: a CIAO error line is one line
    looked = ", ".join(str(d) for d in list(user_dirs) + sys_dirs)
    raise ParameterError(
        f"Unable to open parameter file for {tool}. Looked in: {looked}"
    )


def _check_user_copy(user_copy, system):
    """The user copy, or None after renaming it aside when stale or unreadable."""
    reason = None
    try:
        stale = user_copy.stat().st_mtime < system.stat().st_mtime
    except OSError:
        stale = False
    if stale:
        reason = "found possibly out of date user parameter file"
    else:
        try:
            read_par(user_copy)
        except ParameterError as exc:
            reason = f"found unreadable user parameter file ({exc})"
    if reason is None:
        return user_copy
    try:
        aside = _stale_name(user_copy, user_copy.stat().st_mtime)
        os.replace(user_copy, aside)
    except OSError as exc:
        logger.warning(
            "Warning: %s %s, could not rename it (%s); using %s",
            reason,
            user_copy,
            exc.strerror or exc,
            system,
        )
        return None
    logger.warning("Warning: %s, renamed to %s", reason, aside)
    return None


# ----------------------------------------------------------------------------
# The loaded, typed parameters of one run
# ----------------------------------------------------------------------------


class ParameterSet(Mapping):
    """The typed parameters of one tool run: a read-only mapping name -> value.

    Values are ``bool``, ``int``, ``float``, ``str`` or ``None`` (INDEF or
    blank), validated at load time.  Built by :func:`load_parameters`.

    Attributes
    ----------
    tool : str
    path : Path
        The parameter file that was read.
    learn_path : Path or None
        The file :meth:`learn` writes (the user copy, or the ``@@`` file).
    parfile : ParFile
        The parameter file with this run's values in it.
    explicit : dict
        name -> text of the values given for this run (``@@`` YAML, command
        line, prompts), as they will be learned.
    """

    def __init__(self, tool, path, learn_path, base, explicit, values, history_texts):
        self.tool = tool
        self.path = path
        self.learn_path = learn_path
        self._base = base
        self.explicit = dict(explicit)
        self.parfile = base.with_values(self.explicit)
        self._values = dict(values)
        self._history = dict(history_texts)

    def __getitem__(self, name):
        return self._values[name]

    def __iter__(self):
        return iter(self._values)

    def __len__(self):
        return len(self._values)

    def __repr__(self):
        return f"ParameterSet({self.tool!r}, {self._values!r})"

    def history_items(self):
        """[(name, text)] in .par order without ``mode``: the CIAO HISTORY PARM records.

        Text as CIAO writes it: booleans yes/no, INDEF, strings unquoted
        (environment expanded, redirects resolved).
        """
        return [(name, self._history[name]) for name in self._values if name != "mode"]

    def format_plist(self):
        """plist layout of the values of this run (see :func:`format_plist`)."""
        return format_plist(self.parfile, self.path)

    def learn(self):
        """Write this run's values into the user's copy (CIAO learning).

        A value given for the run (command line, ``@@`` YAML, prompt answer)
        is learned when the parameter's effective mode includes ``l``: ``a``
        parameters take the run's ``mode`` (``ql`` by default, so they are
        learned), ``hl``/``ql`` parameters are learned, plain ``h``/``q``
        ones are not.  This is the IRAF/XPI meaning of the mode letters
        ("with the additional l mode ... the new value will be written to the
        parameter file", ciao-conventions §1.3), and it keeps a one-off
        ``clobber=yes``, ``inverse=yes`` or ``force=yes`` from silently
        applying to the next run of a batch script.  ``mode`` itself is not
        learned (a one-run override).  Values are stored as given:
        ``${VAR}`` and ``)name`` stay unexpanded.  The user copy is created
        from the system file when absent.  Failing to learn is a warning, not
        an error: the run itself succeeded.

        Returns
        -------
        Path or None
            The file written (or already current), None if nothing could be written.
        """
        if self.learn_path is None:
            logger.warning(
                "Warning: no user parameter directory (PFILES), %s parameters not learned",
                self.tool,
            )
            return None
        run_mode = (self.explicit.get("mode") or self._base.param("mode").value or "ql").strip()
        changes = {
            k: v
            for k, v in self.explicit.items()
            if k != "mode"
            and "l" in (run_mode if self._base.param(k).mode == "a" else self._base.param(k).mode)
        }
        target = Path(self.learn_path)
        if target.exists() and _same_file(target, self.path):
            current = self._base
            if all(current.param(k).value == v for k, v in changes.items()):
                return target
        try:
            write_par(target, self._base.with_values(changes))
        except OutputError as exc:
            logger.warning("Warning: %s parameters not learned: %s", self.tool, exc)
            return None
        return target


# ----------------------------------------------------------------------------
# The command line
# ----------------------------------------------------------------------------


def _resolve_name(parfile, word, tool):
    """The parameter ``word`` names: exact name, else its unique prefix."""
    names = parfile.names
    if word in names:
        return word
    matches = [n for n in names if n.startswith(word)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise ParameterError(
            f"Multiple matches for {tool} parameter '{word}', choose from: {', '.join(matches)}"
        )
    import difflib

    close = difflib.get_close_matches(word, names, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise ParameterError(f"{tool} has no parameter '{word}'{hint}")


def _normalise_given(param, text, tool):
    """Canonical text of a value given for a run (what will be learned).

    Booleans become yes/no and enumerated values their full spelling; values
    with ``$`` or a ``)`` redirect are kept (checked when used).
    """
    stripped = text.strip()
    if "$" in text or stripped.startswith(")"):
        return text
    if param.base_type == "b":
        flag = to_bool(text)
        if flag is None:
            raise ParameterError(
                f"{tool}: parameter '{param.name}' value '{text}' is not a boolean "
                f"(use yes/no, true/false, y/n, on/off, 1/0)"
            )
        return "yes" if flag else "no"
    if param.base_type in ("s", "f") and param.enum is not None:
        if text == "" and "" in param.enum:
            return text
        return _match_enum(param, text, tool)
    return text


def _yaml_text(param, value, tool, source):
    """Text of a YAML scalar for a parameter of a given type."""
    bt = param.base_type
    where = f"{tool}: {source}: parameter '{param.name}'"
    if value is None:
        return INDEF if bt in ("i", "r") else ""
    if isinstance(value, bool):
        if bt == "b":
            return "yes" if value else "no"
        raise ParameterError(
            f"{where} is of type '{param.type}' but YAML read a boolean ({value}); "
            f"quote the value"
        )
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value) and bt in ("i", "r"):
            raise ParameterError(f"{where} value {value} is not a finite number")
        if bt == "i":
            if value != int(value):
                raise ParameterError(f"{where} value {value} is not an integer")
            return str(int(value))
        return repr(value)
    if isinstance(value, str):
        return value
    if (
        isinstance(value, list)
        and bt in ("s", "f")
        and all(
            isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in value
        )
    ):
        return ",".join(str(v) for v in value)
    raise ParameterError(
        f"{where} value {value!r} is not a scalar (got {type(value).__name__})"
    )


def _read_yaml(path, tool, parfile):
    """name -> text from an ``@@file.yaml`` parameter set, for ``tool``."""
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except OSError as exc:
        raise ParameterError(
            f"{tool}: Unable to open YAML parameter file {path}: {exc.strerror or exc}"
        ) from exc
    except UnicodeDecodeError as exc:
        raise ParameterError(
            f"{tool}: YAML parameter file {path} is not UTF-8 text (byte {exc.start}: "
            f"{exc.object[exc.start:exc.start + 1]!r})"
        ) from exc
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split())
        raise ParameterError(
            f"{tool}: cannot read YAML parameter file {path} (only plain YAML is "
            f"accepted, yaml.safe_load): {detail}"
        ) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ParameterError(
            f"{tool}: YAML parameter file {path} must hold a mapping 'name: value' "
            f"(or 'toolname: {{name: value}}'), not a {type(data).__name__}"
        )
    known = set(KNOWN_TOOLS) | {tool}
    # a sectioned file: a mapping per tool (an empty section reads as no values)
    sections = [k for k, v in data.items() if isinstance(v, dict) or (k in known and v is None)]
    if sections:
        scalars = [
            k for k, v in data.items() if not isinstance(v, dict) and v is not None
        ]
        if scalars:
            raise ParameterError(
                f"{tool}: YAML parameter file {path} mixes tool sections "
                f"({', '.join(map(str, sections))}) with top-level values "
                f"({', '.join(map(str, scalars))})"
            )
        unknown = [str(k) for k in data if k not in known]
        if unknown:
            raise ParameterError(
                f"{tool}: YAML parameter file {path} has sections for unknown tools "
                f"({', '.join(unknown)}); known: {', '.join(sorted(known))}"
            )
        section = data.get(tool)
        if section is None:
            logger.debug("%s has no values for %s", path, tool)
            return {}
        data = section
    out = {}
    for key, value in data.items():
        if not isinstance(key, str):
            raise ParameterError(
                f"{tool}: YAML parameter file {path}: parameter name {key!r} is not a string"
            )
        try:
            name = _resolve_name(parfile, key, tool)
        except ParameterError as exc:
            raise ParameterError(f"{exc} (in YAML parameter file {path})") from exc
        out[name] = _yaml_text(parfile.param(name), value, tool, path)
    return out


#: The tools of this package: the section names a chain's YAML parameter file may use.
KNOWN_TOOLS = ("stk_match", "stk_xfm", "stk_update_wcs", "stk_simulate", "stk_batch")


@dataclass(frozen=True)
class _CommandLine:
    par_file: object  # Path or None (@@file.par)
    yaml_files: tuple
    named: tuple  # ((word, text, is_flag), ...)
    positional: tuple


def _split_argv(argv, tool):
    par_file = None
    yaml_files = []
    named = []
    positional = []
    for arg in argv:
        if arg.startswith("@@"):
            path = arg[2:]
            if not path:
                raise ParameterError(f"{tool}: '@@' must be followed by a file name")
            if path.lower().endswith((".yaml", ".yml")):
                yaml_files.append(Path(path))
            elif par_file is not None:
                raise ParameterError(
                    f"{tool}: more than one @@ parameter file given ({par_file}, {path})"
                )
            else:
                par_file = Path(path)
            continue
        m = _ASSIGN_RE.match(arg)
        if m:
            named.append((m.group(1), m.group(2), False))
            continue
        m = _FLAG_RE.match(arg)
        if m:
            named.append((m.group(1), m.group(2), True))
            continue
        positional.append(arg)
    return _CommandLine(par_file, tuple(yaml_files), tuple(named), tuple(positional))


def _assign_positional(targets, positional, given, tool, *, what):
    """Give positional values to ``targets`` in order, into ``given`` (name -> text).

    Fewer values than targets is normal (they fill the first ones); more is an
    error, and so is a parameter given both by position and by name.
    """
    if len(positional) > len(targets):
        extra = " ".join(positional[len(targets):])
        names = ", ".join(p.name for p in targets) or "none"
        raise ParameterError(f"{tool}: too many positional values: {extra} ({what}: {names})")
    for param, text in zip(targets, positional, strict=False):
        if param.name in given:
            raise ParameterError(
                f"{tool}: parameter '{param.name}' given both by position ('{text}') "
                f"and as {param.name}={given[param.name]}"
            )
        given[param.name] = text


def _effective_mode(param, texts):
    if param.mode == "a":
        return texts.get("mode", "ql").strip() or "ql"
    return param.mode


def _is_interactive(interactive):
    if interactive is not None:
        return bool(interactive)
    try:
        return bool(sys.stdin is not None and sys.stdin.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def _default_prompt(text):
    sys.stderr.write(text)
    sys.stderr.flush()
    line = sys.stdin.readline()
    if line == "":
        return None
    return line.rstrip("\r\n")


def _ask(param, texts, tool, environ, prompt_func):
    """Prompt for one parameter until a valid answer; returns the answer's text."""
    default = texts[param.name]
    question = f"{param.prompt or param.name} ({default}): "
    for _ in range(_MAX_PROMPT_TRIES):
        answer = prompt_func(question)
        if answer is None:
            raise ParameterError(
                f"{tool}: no answer for parameter '{param.name}' (end of input)"
            )
        # Enter keeps the default; a blank default is accepted where the type
        # allows a blank (as CIAO does: "outdir" blank can mean "in place").
        text = answer if answer != "" else default
        try:
            text = _normalise_given(param, text, tool)
            _typed_value(param, {**texts, param.name: text}, tool, environ)
        except ParameterError as exc:
            sys.stderr.write(f"{exc}\n")
            continue
        return text
    raise ParameterError(
        f"{tool}: no valid value for parameter '{param.name}' after {_MAX_PROMPT_TRIES} tries"
    )


def load_parameters(tool, argv, *, interactive=None, environ=None, prompt_func=None):
    """Resolve, validate and type the parameters of one run of ``tool``.

    Precedence: par file < ``@@file.yaml`` < command line < prompt answers.

    Parameters
    ----------
    tool : str
        Tool name (``stk_xfm``); its parameter file is ``<tool>.par``.
    argv : sequence of str
        Command-line arguments (without the program name): ``name=value``
        (name may be a unique prefix), ``name+`` / ``name-`` for booleans,
        positional values for the ``a``-mode parameters in order,
        ``@@file.par`` (use that parameter file, learn into it),
        ``@@file.yaml`` (a YAML parameter set).
    interactive : bool, optional
        May missing values be prompted for?  Default: ``sys.stdin.isatty()``.
        Never prompt in a script: a missing value is then an error.
    environ : mapping, optional
        Environment for PFILES and ``$VAR`` expansion (default ``os.environ``).
    prompt_func : callable, optional
        ``prompt_func(question) -> answer`` (None at end of input); default
        writes the question to stderr and reads a line from stdin.

    Returns
    -------
    ParameterSet

    Raises
    ------
    ParameterError
        Unknown or ambiguous names, invalid values, missing values with no
        terminal to ask, unreadable parameter files.
    """
    environ = os.environ if environ is None else environ
    argv = list(argv)
    cmd = _split_argv(argv, tool)
    if cmd.par_file is not None:
        path = cmd.par_file
        if not path.is_file():
            raise ParameterError(f"{tool}: Unable to open parameter file {path}")
        learn_path = path
    else:
        loc = find_par_file(tool, environ=environ)
        path, learn_path = loc.path, loc.learn_path
    base = read_par(path)
    if cmd.par_file is not None:
        _check_par_file_is_for(tool, base, path, environ)
    explicit = {}

    for ypath in cmd.yaml_files:
        for name, text in _read_yaml(ypath, tool, base).items():
            explicit[name] = _normalise_given(base.param(name), text, tool)

    from_cli = {}
    for word, text, is_flag in cmd.named:
        name = _resolve_name(base, word, tool)
        param = base.param(name)
        if is_flag:
            if param.base_type != "b":
                raise ParameterError(
                    f"{tool}: '{word}{text}' sets a boolean, but parameter '{name}' "
                    f"is of type '{param.type}'"
                )
            text = "yes" if text == "+" else "no"
        if name in from_cli and from_cli[name] != text:
            raise ParameterError(
                f"{tool}: parameter '{name}' given twice ('{from_cli[name]}' and '{text}')"
            )
        from_cli[name] = text

    auto = [p for p in base.params if p.mode == "a"]
    _assign_positional(auto, cmd.positional, from_cli, tool,
                       what=f"{len(auto)} positional parameters")

    for name, text in from_cli.items():
        explicit[name] = _normalise_given(base.param(name), text, tool)

    texts = {p.name: p.value for p in base.params}
    texts.update(explicit)
    # Check what was given before asking anything: no prompts before an error.
    for name in explicit:
        _typed_value(base.param(name), texts, tool, environ)

    ask = _is_interactive(interactive)
    prompt_func = _default_prompt if prompt_func is None else prompt_func
    for param in base.params:
        if param.name in explicit:
            continue
        eff = _effective_mode(param, texts)
        current = texts[param.name].strip()
        if "q" not in eff:
            # hidden for this run (h, hl; 'a' under mode=h): the file's value is used, but a
            # required parameter cannot be blank
            if param.mode == "a" and current == "":
                raise ParameterError(
                    f"{tool}: parameter '{param.name}' has no value and "
                    f"mode={texts.get('mode', '').strip() or 'h'}, so no prompting; "
                    f"give {param.name}=..."
                )
            continue
        # Queried for this run ('a' under mode=ql, 'q', 'ql'), as CIAO does: a value not given
        # on the command line is asked for, the learned value offered as the default.  Without
        # a terminal that is an error -- a learned value is never reused silently, so a script
        # that drops an argument cannot overwrite the previous run's output.
        if ask:
            text = _ask(param, texts, tool, environ, prompt_func)
            explicit[param.name] = text
            texts[param.name] = text
            continue
        if current == "":
            raise ParameterError(
                f"{tool}: parameter '{param.name}' has no value and stdin is not a terminal; "
                f"give {param.name}=..."
            )
        raise ParameterError(
            f"{tool}: parameter '{param.name}' was not given and stdin is not a terminal "
            f"(its learned value '{current}' is not reused without confirmation: give it "
            f"again, or run with mode=h to use the parameter file's values); "
            f"give {param.name}=..."
        )

    values = {}
    history = {}
    for param in base.params:
        value, htext = _typed_value(param, texts, tool, environ)
        values[param.name] = value
        history[param.name] = htext
    return ParameterSet(tool, path, learn_path, base, explicit, values, history)


# ----------------------------------------------------------------------------
# Helpers for --help and the stk_param command
# ----------------------------------------------------------------------------


def _check_par_file_is_for(tool, parfile, path, environ):
    """An ``@@file.par`` must hold the tool's parameters (compared with its system file)."""
    try:
        system = find_par_file(tool, environ=environ).system_path
    except ParameterError:
        return  # no system file to compare with (a private tool): accept the file as given
    if system is None or Path(system).resolve() == Path(path).resolve():
        return
    want = set(read_par(system).names)
    have = set(parfile.names)
    if want != have:
        missing = ", ".join(sorted(want - have)) or "none"
        extra = ", ".join(sorted(have - want)) or "none"
        raise ParameterError(
            f"{tool}: {path} is not a parameter file for {tool} (missing: {missing}; "
            f"not parameters of {tool}: {extra})"
        )


def describe_tool(tool, *, environ=None):
    """plist listing of the *defaults* of ``tool`` (its system parameter file).

    For the runner's ``--help``; the user's learned copy is not consulted.

    Raises
    ------
    ParameterError
        If the system parameter file is not found.
    """
    environ = os.environ if environ is None else environ
    _user, sys_dirs = _search_dirs(environ)
    sys_dirs = list(sys_dirs) + [d for d in system_par_dirs(tool) if d not in sys_dirs]
    path = _first_existing(sys_dirs, f"{tool}.par")
    if path is None:
        looked = ", ".join(str(d) for d in sys_dirs)
        raise ParameterError(
            f"Unable to open parameter file for {tool}. Looked in: {looked}"
        )
    return format_plist(read_par(path), path)


def unlearn(tool, *, environ=None):
    """Reset ``tool``'s parameters to the system defaults (delete the user copy).

    Returns
    -------
    Path or None
        The deleted file, None if there was no user copy.

    Raises
    ------
    ParameterError
        When the user copy is the system file itself (PFILES without ``;``):
        deleting it would lose the defaults.
    OutputError
        If the user copy cannot be deleted.
    """
    environ = os.environ if environ is None else environ
    user_dirs, sys_dirs = _search_dirs(environ)
    sys_dirs = list(sys_dirs) + [d for d in system_par_dirs(tool) if d not in sys_dirs]
    filename = f"{tool}.par"
    user_copy = _first_existing(user_dirs, filename)
    if user_copy is None:
        return None
    for d in sys_dirs:
        if _same_file(user_copy, d / filename):
            raise ParameterError(
                f"Cannot unlearn {tool}: the user parameter file {user_copy} is also the "
                f"system file (PFILES names the same directory for both)"
            )
    try:
        user_copy.unlink()
    except OSError as exc:
        raise OutputError(
            f"Unable to delete {user_copy}: {exc.strerror or exc}"
        ) from exc
    return user_copy


# ----------------------------------------------------------------------------
# pset / pget on a parameter file (the stk_param command)
# ----------------------------------------------------------------------------


def pset_values(parfile, args, *, tool, environ=None):
    """Apply pset-style arguments to a parameter file.  Pure (no file access).

    ``name=value`` (unique-prefix names), ``name+``/``name-``, and positional
    values, which fill the non-hidden parameters in file order (CIAO pset).
    Each new value is validated against the parameter's type, range and
    enumeration; a value with ``$`` is checked only when its variables are set
    (it is expanded when used, not now).  Blank values are allowed (that is
    how a required parameter is cleared).

    Returns
    -------
    parfile : ParFile
        The file with the new values.
    changes : dict
        name -> stored text.

    Raises
    ------
    ParameterError
    """
    environ = os.environ if environ is None else environ
    cmd = _split_argv(args, tool)
    if cmd.par_file is not None or cmd.yaml_files:
        raise ParameterError(f"{tool}: @@ files cannot be used when setting parameters")
    changes = {}
    for word, text, is_flag in cmd.named:
        name = _resolve_name(parfile, word, tool)
        if is_flag:
            if parfile.param(name).base_type != "b":
                raise ParameterError(
                    f"{tool}: '{word}{text}' sets a boolean, but parameter '{name}' "
                    f"is of type '{parfile.param(name).type}'"
                )
            text = "yes" if text == "+" else "no"
        changes[name] = text
    visible = [p for p in parfile.params if not p.hidden]
    _assign_positional(visible, cmd.positional, changes, tool, what="non-hidden parameters")
    if not changes:
        raise ParameterError(f"{tool}: nothing to set; give name=value ...")
    for name, text in changes.items():
        param = parfile.param(name)
        if text.strip() == "":
            if param.base_type == "b":
                raise ParameterError(
                    f"{tool}: boolean parameter '{name}' cannot be blank"
                )
            continue
        changes[name] = _normalise_given(param, text, tool)
    new = parfile.with_values(changes)
    texts = {p.name: p.value for p in new.params}
    for name, text in changes.items():
        if text.strip() == "":
            continue
        if any(
            (m.group(1) if m.group(1) is not None else m.group(2)) not in environ
            for m in _ENV_RE.finditer(text)
        ):
            continue
        _typed_value(new.param(name), texts, tool, environ)
    return new, changes


def pget_text(parfile, word, *, tool, environ=None):
    """The value of one parameter as a tool would see it (pget).  Pure.

    Redirects are resolved and ``$VAR`` expanded; booleans print as yes/no,
    undefined numbers as INDEF, blank strings as an empty string.
    """
    environ = os.environ if environ is None else environ
    name = _resolve_name(parfile, word, tool)
    texts = {p.name: p.value for p in parfile.params}
    _value, text = _typed_value(parfile.param(name), texts, tool, environ)
    return text
