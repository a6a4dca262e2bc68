"""`python -m loadtest.faithfulness --data FILE`: which sentences it reads, and what it says
when the file is missing or not SST-2's layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest.faithfulness import DEV, parse_args, sentences


def test_data_defaults_to_the_shared_sst2_dev_and_takes_a_path(tmp_path: Path) -> None:
    assert parse_args([]).data == DEV
    assert parse_args(["--data", str(tmp_path / "dev.tsv")]).data == tmp_path / "dev.tsv"


def test_every_nth_content_of_the_file_in_order(tmp_path: Path) -> None:
    data = tmp_path / "reviews.tsv"
    rows = [f'{i % 2}\tsentence "{i}" here' for i in range(7)]
    data.write_text("label\tcontent\n" + "\n".join(rows) + "\n")
    assert sentences(data, 3) == ['sentence "0" here', 'sentence "3" here', 'sentence "6" here']


def test_a_missing_file_or_another_layout_says_what_to_give(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"no data file at .* with --data"):
        sentences(tmp_path / "absent.tsv", 1)
    other = tmp_path / "other.tsv"
    other.write_text("text\tlabel\nhello\t1\n")
    with pytest.raises(
        SystemExit, match=r"has no `content` column \(its header: \['text', 'label'\]\)"
    ):
        sentences(other, 1)
