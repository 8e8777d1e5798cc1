"""stk_astrometry.formats.idlist: detection-id lists (formats.md §2c) -- the comment and
separator rules, the @-spellings, selection files."""

import numpy as np
import pytest

from stk_astrometry.errors import InputError
from stk_astrometry.formats import idlist



def test_id_list_round_trip():
    ids = np.array([7, 3, 3, -2, 2**40])
    assert list(idlist.parse_id_list(idlist.format_id_list(ids))) == sorted(set(ids.tolist()))


def test_id_list_text_blanks_commas_comments_sorted_unique():
    # formats.md §2c: ids separated by blanks or commas, '#' comments, blank lines ignored
    got = idlist.parse_id_list("# header, 99\n 5, 3 7,,\n\n\t3\t9 # 11 not an id\n-4\n")
    assert got.dtype == np.int64 and got.tolist() == [-4, 3, 5, 7, 9]
    assert idlist.parse_id_list("").tolist() == [] and idlist.parse_id_list("").dtype == np.int64


def test_id_list_bad_token_names_the_source_line_and_token():
    with pytest.raises(InputError, match=r"^include=ids\.txt, line 3: '4\.5' is not a detection "
                                         r"region_id \(an integer\)$"):
        idlist.parse_id_list("1\n\n2 4.5\n", source="include=ids.txt")


@pytest.mark.parametrize("at", ["", "@"])
def test_id_list_file_and_its_at_spelling(tmp_path, at):
    path = tmp_path / "ids.txt"
    path.write_text("12, 4\n4\n")
    assert idlist.read_id_list(f"{at}{path}", param="exclude").tolist() == [4, 12]


def test_id_list_unreadable_file_names_the_parameter(tmp_path):
    with pytest.raises(InputError, match=r"^exclude=.*nope\.txt: cannot read the id list"):
        idlist.read_id_list(tmp_path / "nope.txt", param="exclude")


def test_id_list_written_one_id_per_line_sorted_unique():
    assert idlist.format_id_list([9, 2, 9, 5]) == "2\n5\n9\n"
    assert idlist.format_id_list([]) == ""


def test_id_list_comment_starts_at_the_first_hash():
    # everything after the first '#' is comment, even a second '#' and ids after it
    assert idlist.parse_id_list("5 6 # note # 7\n8").tolist() == [5, 6, 8]


def test_id_list_leading_separator_does_not_end_the_line():
    assert idlist.parse_id_list(",5, 6\n, ,7").tolist() == [5, 6, 7]


def test_id_list_bad_token_without_a_source_names_the_string():
    with pytest.raises(InputError, match=r"^<string>, line 1: 'x' is not"):
        idlist.parse_id_list("x")


def test_id_list_bad_token_in_a_file_names_the_parameter_and_file(tmp_path):
    path = tmp_path / "ids.txt"
    path.write_text("1\nnine\n")
    with pytest.raises(InputError, match=rf"^include={path}, line 2: 'nine' is not"):
        idlist.read_id_list(path, param="include")


def test_id_list_double_at_is_a_literal_file_name(tmp_path, monkeypatch):
    """'@file' is 'file'; '@@file' is not stripped (a file whose name starts with '@')."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "@@ids.txt").write_text("3\n")
    (tmp_path / "@ids.txt").write_text("99\n")
    assert idlist.read_id_list("@@ids.txt", param="include").tolist() == [3]


def _selection_text():
    from stk_astrometry.formats import selection

    rows = (selection.SelectionRow(12, 1001, 0.4, 1, "used", 0.98, True),
            selection.SelectionRow(12, 1002, 2.1, 3, "unused", 0.02, False),
            selection.SelectionRow(15, 1003, 0.7, 1, "used", float("nan"), False),
            selection.SelectionRow(20, 1004, 1.2, 2, "excluded", 0.5, True))
    return selection.format_selection(selection.Selection("acisfJ0000000p000000_001",
                                                          "GAIA_PAIRS", "0123456789abcdef",
                                                          rows))


@pytest.mark.parametrize("param, want", [("include", [12, 20]), ("exclude", [15])])
def test_id_list_reads_a_selection_file_by_its_use_column(tmp_path, param, want, caplog):
    """formats.md §2d: include= the detections with a pair marked yes, exclude= those whose
    pairs are all no; a detection whose pairs disagree is reported once, as a warning."""
    path = tmp_path / "sel.txt"
    path.write_text(_selection_text())
    with caplog.at_level("WARNING", logger="stk_astrometry.formats.idlist"):
        got = idlist.read_id_list(f"@{path}", param=param)
    assert got.dtype == np.int64 and got.tolist() == want
    notes = [r for r in caplog.records if r.name == "stk_astrometry.formats.idlist"]
    assert len(notes) == 1 and notes[0].levelname == "WARNING"
    assert notes[0].getMessage().startswith("selection: 1 detection(s) have pairs marked both "
                                            "yes and no (12)")


def test_id_list_bad_selection_line_names_the_parameter_and_file(tmp_path):
    path = tmp_path / "sel.txt"
    path.write_text(_selection_text() + "21 1005 0.3 1 used 0.9 maybe\n")
    with pytest.raises(InputError, match=rf"^exclude={path}, line \d+: use = 'maybe'"):
        idlist.read_id_list(path, param="exclude")


def test_id_list_written_from_text_ids_sorts_them_as_numbers():
    assert idlist.format_id_list(np.array(["10", "9", "10"])) == "9\n10\n"
