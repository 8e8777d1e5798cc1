"""FITS headers read without astropy: the fixed-format cards the per-stack files hold.

The per-stack path reads a dozen small headers per stack (catalogs, the pairs file);
parsing them through ``astropy.io.fits.Header`` costs more than the tables themselves and
importing astropy's FITS layer is the largest part of a one-process ``stk_match`` or
``stk_xfm`` run.  :func:`parse_header` reads the common cards itself — keyword = value /
comment with a string, logical, integer, real or undefined value, HIERARCH keywords,
HISTORY/COMMENT/blank cards — giving exactly the keyword, value and comment astropy gives
(test_fitscards compares both on every card of the bundled and golden files).  A header
holding anything else (a CONTINUE long string, a complex value, a record-valued keyword,
a card astropy would warn about) is handed to astropy whole, so what the caller sees never
depends on which parser ran.
"""

from __future__ import annotations

import re

__all__ = ["Card", "Header", "Undefined", "parse_card", "parse_header"]

CARD = 80

#: A standard keyword (FITS 4.0 §4.1.2.1): what astropy upper-cases and reads as given.
_KEYWORD = re.compile(r"[A-Z0-9_-]{1,8}\Z")
_INT = re.compile(r"[+-]?\d+\Z")
_REAL = re.compile(r"[+-]?(?:\.\d+|\d+(?:\.\d*)?)(?:[DE][+-]?\d+)?\Z")
#: A string value astropy reads as a record-valued keyword card (``'field: number'``).
_RVKC = re.compile(r"[a-zA-Z_]\w*(?:\.\d+)?(?:\.[a-zA-Z_]\w*(?:\.\d+)?)*: +[+-]?"
                   r"(?:\.\d+|\d+(?:\.\d*)?)(?:[DE][+-]?\d+)?\Z")
_COMMENTARY = frozenset(("COMMENT", "HISTORY", ""))


class Undefined:
    """The value of a keyword written without one (``KEY =`` and spaces), as astropy's."""

    __slots__ = ()

    def __repr__(self):
        return "Undefined"


UNDEFINED = Undefined()


class _Unsupported(Exception):
    """A card this parser leaves to astropy."""


class Card:
    """One header card: ``keyword``, ``value``, ``comment`` (as astropy reads them), ``image``;
    ``key``: the keyword in upper case, as :class:`Header` finds it (made once per card: a
    parsed card is shared by every header that holds it, issue 11)."""

    __slots__ = ("image", "keyword", "value", "comment", "key")

    def __init__(self, image, keyword, value, comment):
        self.image = image
        self.keyword = keyword
        self.value = value
        self.comment = comment
        self.key = keyword.upper()

    def __repr__(self):
        return f"Card({self.keyword!r}, {self.value!r}, {self.comment!r})"


def _number(text):
    if _INT.match(text):
        return int(text)
    if _REAL.match(text):
        return float(text.replace("D", "E"))
    raise _Unsupported(text)


def _value_comment(field):
    """(value, comment) of the text after the value indicator."""
    rest = field.lstrip(" ")
    if rest.startswith("'"):
        i = 1
        while True:
            j = rest.find("'", i)
            if j < 0:
                raise _Unsupported("unterminated string")
            if rest[j + 1:j + 2] == "'":
                i = j + 2
                continue
            break
        text = rest[1:j].replace("''", "'")
        after = rest[j + 1:]
        if after and after[0] not in " /":
            raise _Unsupported("text after a string")
        if _RVKC.match(text):
            raise _Unsupported("record-valued keyword")
        value = text.rstrip()
    else:
        slash = rest.find("/")
        token = (rest if slash < 0 else rest[:slash]).strip(" ")
        after = "" if slash < 0 else rest[slash:]
        if token == "":
            value = UNDEFINED
        elif token == "T" or token == "F":
            value = token == "T"
        else:
            value = _number(token)
    after = after.lstrip(" ")
    if not after:
        return value, ""
    if after[0] != "/":
        raise _Unsupported("text after the value")
    return value, after[1:].lstrip(" ").rstrip()


def parse_card(image):
    """The :class:`Card` of an 80-character card image.

    Raises
    ------
    ValueError
        A card this parser does not read (see the module docstring); astropy reads it.
    """
    try:
        return _parse_card(image)
    except _Unsupported as exc:
        raise ValueError(f"card left to astropy ({exc}): {image.rstrip()!r}") from None


def _parse_card(image):
    if len(image) != CARD or not (image.isascii() and image.isprintable()):
        raise _Unsupported("not an 80-character printable ASCII card")
    head = image[:8].rstrip(" ")
    if head in _COMMENTARY:
        return Card(image, head, image[8:].rstrip(), "")
    if head == "HIERARCH" and image[8] == " " and "=" in image:
        name, field = image[9:].split("=", 1)
        name = name.strip(" ")
        if not name or "'" in name:
            raise _Unsupported("HIERARCH name")
        value, comment = _value_comment(field)
        return Card(image, name, value, comment)
    if image[8:10] != "= " or not _KEYWORD.match(head) or head == "CONTINUE":
        raise _Unsupported("not a keyword = value card")
    value, comment = _value_comment(image[10:])
    return Card(image, head, value, comment)


class Header:
    """The cards of one header, with the read side of ``astropy.io.fits.Header`` the readers
    use: ``get``, ``in``, ``[key]`` (first card of a name, case-insensitive; None for an
    undefined value, a card's ``value`` is :data:`UNDEFINED`), iteration over keywords,
    ``cards``, ``comments[key]``, ``copy``."""

    def __init__(self, cards):
        self._cards = list(cards)
        index = {}
        for i, card in enumerate(self._cards):
            index.setdefault(card.key, i)
        self._index = index

    def _find(self, key):
        key = str(key).strip().upper()
        if key.startswith("HIERARCH "):
            key = key[9:].strip()
        return self._index.get(key)

    def __contains__(self, key):
        return self._find(key) is not None

    def __len__(self):
        return len(self._cards)

    def __iter__(self):
        return iter([c.keyword for c in self._cards])

    def __getitem__(self, key):
        i = self._find(key)
        if i is None:
            raise KeyError(f"Keyword {key!r} not found.")
        value = self._cards[i].value
        return None if value is UNDEFINED else value      # as astropy's Header gives it

    def get(self, key, default=None):
        i = self._find(key)
        return default if i is None else self[key]

    def keys(self):
        return [c.keyword for c in self._cards]

    def first_values(self):
        """``{keyword in upper case: value of its first card}``, in the order of those cards
        (values as the cards hold them: :data:`UNDEFINED` for no value)."""
        cards = self._cards
        return {key: cards[i].value for key, i in self._index.items()}

    @property
    def cards(self):
        return list(self._cards)

    @property
    def comments(self):
        header = self

        class _Comments:
            def __getitem__(self, key):
                i = header._find(key)
                if i is None:
                    raise KeyError(key)
                return header._cards[i].comment

        return _Comments()

    def copy(self):
        return Header(self._cards)

    def tostring(self):
        return "".join(c.image for c in self._cards)


#: Cards parsed already, by image: a card is a pure function of its 80 characters, and most
#: cards of the per-stack files (structure, column names, units, descriptions, the primary's
#: keywords) repeat from stack to stack.  Card objects are never changed once made, so they
#: are shared.  Bounded: emptied when full.  The bound is a few times the cards that repeat
#: (~460 over stk_batch's benchmark stacks, each of which adds ~3 of its own: names, dates,
#: checksums), not more: a cached card is ~0.4 KB, and at 10,000 cards (4.1 MB) it filled over a
#: campaign's first ~3,000 stacks, a stk_batch worker's memory growing by ~4 MB with the number
#: of stacks (issue 12, session 11).  Emptied, it is refilled within a stack.
_SEEN: dict = {}
_SEEN_MAX = 2_000


def parse_header(text):
    """The header in ``text`` (its cards, up to END) as a :class:`Header`, or as an
    ``astropy.io.fits.Header`` when a card needs astropy (see the module docstring)."""
    n = len(text) - len(text) % CARD
    cards = []
    seen = _SEEN
    try:
        for i in range(0, n, CARD):
            image = text[i:i + CARD]
            card = seen.get(image)
            if card is None:
                if image[:8] == "END     " and not image[8:].strip():
                    break
                card = _parse_card(image)
                if len(seen) >= _SEEN_MAX:
                    seen.clear()
                seen[image] = card
            cards.append(card)
    except _Unsupported:
        from astropy.io import fits

        return fits.Header.fromstring(text)
    return Header(cards)
