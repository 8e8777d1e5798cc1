"""fitscards: headers read without astropy give exactly what astropy reads."""

from pathlib import Path

import pytest
from astropy.io import fits
from astropy.io.fits.card import Undefined as AstropyUndefined

from stk_astrometry import fitscards

REPO = Path(__file__).resolve().parents[1]
FILES = sorted([*REPO.glob("share/sample/**/*.fits*"), *REPO.glob("test/golden/**/*.fits*"),
                *REPO.glob("test/data/**/*.fits")])


def _same(ours, theirs):
    if isinstance(theirs, AstropyUndefined):
        return isinstance(ours, fitscards.Undefined)
    return type(ours) is type(theirs) and ours == theirs


def _compare(text):
    ours = fitscards.parse_header(text)
    theirs = fits.Header.fromstring(text)
    if not isinstance(ours, fitscards.Header):
        return 0                       # handed to astropy: the same object type
    assert [c.keyword for c in ours.cards] == [c.keyword for c in theirs.cards]
    for a, b in zip(ours.cards, theirs.cards, strict=True):
        assert _same(a.value, b.value), (a, b.image)
        assert a.comment == b.comment, (a, b.image)
    for key in {c.keyword for c in theirs.cards if c.keyword not in ("HISTORY", "COMMENT", "")}:
        assert key in ours
        assert _same(ours[key], theirs[key]), key
        assert ours.comments[key] == theirs.comments[key]
    return len(ours)


def test_every_card_of_the_bundled_and_golden_files_reads_as_astropy_reads_it():
    assert len(FILES) > 10
    n_cards = n_ours = 0
    for path in FILES:
        with fits.open(path) as hdul:
            for hdu in hdul:
                text = hdu.header.tostring()
                n_cards += len(hdu.header)
                n_ours += _compare(text)
    assert n_ours > 0.9 * n_cards        # the files' headers are read by this parser


EDGE_CARDS = [
    "KEY     = 'O''Hara  '           / a quote inside",
    "KEY     = '   leading'",
    "KEY     = ''                   / empty string",
    "KEY     = '        '",
    "KEY     =                      / undefined with a comment",
    "KEY     =",
    "KEY     =                    T",
    "KEY     =                    F / no",
    "KEY     =                   -7 / an int",
    "KEY     =                  007",
    "KEY     =                +1.5D-3",
    "KEY     =             1.0E+300",
    "KEY     =                 .5E2 /comment without a space",
    "KEY     =                  1.  /   spaces   ",
    "KEY     = 1234567890123456789012",
    "KEY     = 'a/b' / slash inside the string",
    "KEY     = 'x'/touching comment",
    "HIERARCH DEC_STACK = 62.2 / declination",
    "HIERARCH Long.Name = 'text' / mixed case",
    "HISTORY   some text   ",
    "COMMENT keep this",
    "                    blank keyword text",
    "DATE-OBS= '2014-01-01T00:00:00'",
    "KEY     = 'x: 1'",
    "KEY     = (1.0, 2.0)",
    "KEY     = 1.5E 03",
    "key     = 'lower-case keyword'",
    "KEY     = 'no end",
]


@pytest.mark.parametrize("card", EDGE_CARDS)
def test_edge_cards_read_as_astropy_reads_them(card):
    image = card.ljust(80)
    text = "SIMPLE  =                    T".ljust(80) + image + "END".ljust(80)
    ours = fitscards.parse_header(text)
    theirs = fits.Header.fromstring(text)
    if isinstance(ours, fitscards.Header):
        _compare(text)
    else:
        assert isinstance(ours, fits.Header) and len(ours) == len(theirs)


def test_a_continue_card_hands_the_header_to_astropy():
    long_text = "x" * 150
    header = fits.Header()
    header["NOTE"] = long_text
    out = fitscards.parse_header(header.tostring())
    assert isinstance(out, fits.Header) and out["NOTE"] == long_text


def test_cards_seen_before_are_reused_and_read_the_same(monkeypatch):
    # issue 11: the per-stack files repeat most cards from stack to stack; a card is parsed
    # once and shared (Card objects are never changed), the memory bounded
    header = fits.Header()
    header["OBJECT"] = ("NGC 1", "a comment")
    header["EXPOSURE"] = 1234.5
    header["NOTHING"] = None
    header["HISTORY"] = "a record"
    text = header.tostring()
    monkeypatch.setattr(fitscards, "_SEEN", {})
    first = fitscards.parse_header(text)
    fresh = [fitscards._parse_card(c.image) for c in first.cards]
    second = fitscards.parse_header(text)
    assert all(a is b for a, b in zip(first.cards, second.cards, strict=True))
    assert [(c.keyword, repr(c.value), c.comment) for c in second.cards] == \
        [(c.keyword, repr(c.value), c.comment) for c in fresh]
    _compare(text)
    monkeypatch.setattr(fitscards, "_SEEN", {})
    monkeypatch.setattr(fitscards, "_SEEN_MAX", 3)
    bounded = fitscards.parse_header(text)
    assert 0 < len(fitscards._SEEN) <= 3
    assert [c.image for c in bounded.cards] == [c.image for c in first.cards]


def test_the_card_cache_stays_small_in_a_long_campaign(monkeypatch):
    # issue 12: every stack adds a few cards of its own (names, dates, checksums); a stk_batch
    # worker parses them for 10,000 stacks.  The cache is bounded at a few times the cards
    # that repeat (~460), so a worker's memory does not grow by its size (10,000 cards held
    # ~4 MB) with the number of stacks
    import tracemalloc

    monkeypatch.setattr(fitscards, "_SEEN", {})
    end = "END".ljust(80)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        largest = 0
        for i in range(12_000):
            image = f"{'STK' + str(i % 97):8}= {repr(f'acisfJ{i:08d}p000000_001'):20} / run {i}"
            fitscards.parse_header(image.ljust(80) + end)
            largest = max(largest, len(fitscards._SEEN))
        held = tracemalloc.get_traced_memory()[1] - before      # at its fullest
    finally:
        tracemalloc.stop()
    assert 0 < largest <= 2_000
    assert held < 1.2e6, f"the card cache held {held / 1e6:.1f} MB"


def test_first_values_are_each_names_first_card_in_card_order():
    from stk_astrometry.fitscards import UNDEFINED, parse_header

    cards = ["SIMPLE  =                    T", "B       =                    1",
             "HIERARCH low_name = 2", "B       =                    3", "C       =",
             "COMMENT one", "COMMENT two", "LOW_NAME=                    4", "END"]
    header = parse_header("".join(c.ljust(80) for c in cards))
    got = header.first_values()
    assert list(got) == ["SIMPLE", "B", "LOW_NAME", "C", "COMMENT"]
    assert got["SIMPLE"] is True and got["B"] == 1 and got["LOW_NAME"] == 2
    assert got["C"] is UNDEFINED and got["COMMENT"] == "one"
