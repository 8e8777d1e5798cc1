"""Detection-id lists: the operator's include/exclude files of stk_xfm (spec §5.7.1).

formats.md §2c.  Plain text: one or more integer ``region_id`` values per line, separated
by blanks or commas; ``#`` starts a comment; blank lines are ignored.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from stk_astrometry.errors import InputError

__all__ = ["parse_id_list", "read_id_list", "format_id_list"]

_ID_SPLIT = re.compile(r"[\s,]+")


def parse_id_list(text, *, source="<string>") -> np.ndarray:
    """Detection ids from the text of an include/exclude file.  Pure.

    One or more integer ids per line, separated by blanks or commas; ``#`` starts a comment;
    blank lines are ignored.

    Raises
    ------
    InputError
        A token that is not an integer, naming the file, line and token.
    """
    ids = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        body = line.split("#", 1)[0].strip()
        if not body:
            continue
        for token in _ID_SPLIT.split(body):
            if not token:
                continue
            try:
                ids.append(int(token))
            except ValueError:
                raise InputError(f"{source}, line {lineno}: {token!r} is not a detection "
                                 f"region_id (an integer)") from None
    return np.unique(np.asarray(ids, dtype=np.int64))


def read_id_list(path, *, param) -> np.ndarray:
    """Read an include/exclude file (see :func:`parse_id_list`), or a stk_qa selection file.

    ``@file`` (CIAO's list-file spelling) is the same as ``file``.  A selection file
    (formats.md §2d, :mod:`.selection`) gives ``include`` the detections with a pair marked
    ``use = yes``, ``exclude`` those with every pair marked ``no``.
    """
    import logging

    from stk_astrometry.formats import selection

    text_path = str(path)
    p = Path(text_path[1:] if text_path.startswith("@") and not text_path.startswith("@@")
             else text_path)
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{param}={path}: cannot read the id list: {exc}") from exc
    if selection.is_selection_text(text):
        sel = selection.parse_selection(text, source=f"{param}={path}")
        ids, notes = selection.selected_ids(sel, which=param)
        for note in notes:
            logging.getLogger(__name__).warning("%s", note)
        return ids
    return parse_id_list(text, source=f"{param}={path}")


def format_id_list(ids) -> str:
    """The text of an id list for ``ids`` (one per line), readable by :func:`parse_id_list`.  Pure."""
    return "".join(f"{int(i)}\n" for i in np.unique(np.asarray(ids, dtype=np.int64)))
