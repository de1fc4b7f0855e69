"""Tests for csv:PATH on the mistakes of hand-made files: each is an error saying what to fix, or a
DataWarning naming the column and what was done (never a silent one-hot of a numeric column)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from snrprune.data import load_dataset
from snrprune.data import DatasetNotFoundError, DataWarning
from snrprune.errors import InputError


def write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return f"csv:{path}"


def load_quietly(name, **kwargs):
    """Loads and fails on any warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return load_dataset(name, **kwargs)


def rows(n, make):
    return [make(i) for i in range(n)]


# ---------------------------------------------------------------- the target


@pytest.mark.parametrize("n", [100, 400])
def test_fractional_numeric_target_is_a_regression_error(tmp_path, n):
    name = write(tmp_path / "r.csv", ["x,price"] + rows(n, lambda i: f"{i % 13},{(i * 7919) % 997 / 10:.1f}"))
    with pytest.raises(ValueError) as info:
        load_dataset(name)
    msg = str(info.value)
    assert "target column 'price'" in msg and "fractional numbers" in msg and "regression target" in msg
    assert "too few rows" not in msg and "--target" in msg


def test_many_scattered_integers_are_a_regression_error(tmp_path):
    # 148 distinct integer values, each on several rows: not class codes
    name = write(tmp_path / "r.csv", ["x,grams"] + rows(1480, lambda i: f"{i % 5},{100 + 7 * (i % 148)}"))
    with pytest.raises(ValueError, match="148 distinct numbers in 1480 rows: it looks like a regression target"):
        load_dataset(name)


def test_consecutive_integer_codes_and_text_labels_are_classes(tmp_path):
    codes = load_quietly(write(tmp_path / "c.csv", ["x,y"] + rows(300, lambda i: f"{i % 7},{i % 30}")))
    assert codes.num_classes == 30
    text = load_quietly(write(tmp_path / "t.csv", ["x,y"] + rows(300, lambda i: f"{i % 7},c{(i * 37) % 41}")))
    assert text.num_classes == 41


def test_an_id_column_as_target_is_refused(tmp_path):
    name = write(tmp_path / "id.csv", ["name,x"] + rows(50, lambda i: f"n{i},{i % 3}"))
    with pytest.raises(ValueError, match="target column 'name' has 50 classes in 50 rows, 50 of them with a single row"):
        load_dataset(name, target="name")


# ---------------------------------------------------------------- numeric columns with stray values


@pytest.mark.parametrize("bad", ["oops", "inf", "-Infinity"])
def test_a_stray_value_in_a_numeric_column_becomes_missing_with_a_warning(tmp_path, bad):
    lines = ["size,colour,label"] + rows(60, lambda i: f"{i % 11 + 0.5},{'rg'[i % 2]},{'ab'[i % 3 == 0]}")
    lines[8] = f"{bad},r,a"  # row 9 of the file (the header is row 1)
    with pytest.warns(DataWarning) as record:
        ds = load_dataset(write(tmp_path / "s.csv", lines))
    msg = str(record[0].message)
    assert "column 'size'" in msg and f"{bad!r} (row 9)" in msg and "treated as missing" in msg
    # one numeric input (+ its missing indicator if the row fell in the training split) + two colours,
    # not a one-hot over the 12 sizes
    assert ds.input_shape in ((3,), (4,))


def test_a_column_mixing_numbers_and_text_says_what_it_became(tmp_path):
    lines = ["v,label"] + rows(60, lambda i: f"{i % 5 if i % 3 else 'x' + str(i % 4)},{'ab'[i % 2]}")
    with pytest.warns(DataWarning, match=r"column 'v' mixes 40 numbers with 20 other values .* category column \(9 one-hot"):
        ds = load_dataset(write(tmp_path / "m.csv", lines))
    assert ds.input_shape == (9,)


def test_decimal_commas_in_a_semicolon_file(tmp_path):
    values = [f"{i % 10},{i % 4}" for i in range(80)]  # 3,2 means 3.2
    lines = ["w;label"] + [f"{v};{'ab'[i % 2]}" for i, v in enumerate(values)]
    with pytest.warns(DataWarning, match=r"decimal commas .* column\(s\) 'w'"):
        ds = load_dataset(write(tmp_path / "dc.csv", lines), seed=1)
    assert ds.input_shape == (1,)  # one numeric input, not a one-hot over 40 strings
    x = torch.cat([ds.x_train, ds.x_test])[:, 0].numpy()
    raw = np.unique([float(v.replace(",", ".")) for v in values])
    seen = np.unique(np.round(x, 4))
    # standardising is increasing and affine: the distinct values line up with 3.2, 0.1, ... exactly
    assert seen.size == raw.size and np.corrcoef(seen, raw)[0, 1] > 1 - 1e-6


def test_commas_in_a_comma_file_are_not_decimal_commas(tmp_path):
    lines = ["w,label"] + rows(40, lambda i: f'"{i % 5},5",{"ab"[i % 2]}')
    ds = load_quietly(write(tmp_path / "q.csv", lines))
    assert ds.input_shape == (5,)  # quoted text values stay categories


# ---------------------------------------------------------------- columns and rows


def test_an_all_empty_column_is_dropped_with_a_warning(tmp_path):
    lines = ["a,blank,label"] + rows(40, lambda i: f"{i % 6},,{'ab'[i % 2]}")
    with pytest.warns(DataWarning, match=r"column\(s\) 'blank' are empty in every row and were dropped"):
        ds = load_dataset(write(tmp_path / "e.csv", lines))
    assert ds.input_shape == (1,)


def test_duplicate_column_names_are_an_error(tmp_path):
    name = write(tmp_path / "d.csv", ["a,b,a,label"] + rows(20, lambda i: f"1,2,3,{i % 2}"))
    with pytest.raises(ValueError, match="column name\\(s\\) 'a' appear more than once in the header"):
        load_dataset(name)


def test_header_without_rows(tmp_path):
    with pytest.raises(ValueError, match=r"has a header \(a, b, label\) but no data rows"):
        load_dataset(write(tmp_path / "h.csv", ["a,b,label", "", ""]))


def test_row_numbers_count_blank_lines(tmp_path):
    name = write(tmp_path / "b.csv", ["a,b,label", "1,2,x", "", "1,y"])
    with pytest.raises(ValueError, match="row 4 has 2 fields"):
        load_dataset(name)


def test_non_utf8_file_names_the_row_and_the_fix(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("name,label\nab,1\ncaf\xe9,2\n".encode("latin-1"))
    with pytest.raises(ValueError) as info:
        load_dataset(f"csv:{path}")
    msg = str(info.value)
    assert str(path) in msg and "row 3 is not UTF-8" in msg and "0xe9" in msg and "iconv -f latin1 -t utf-8" in msg


def test_a_missing_file_or_data_dir_is_bad_input(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset(f"csv:{tmp_path / 'missing.csv'}")
    assert isinstance(info.value, InputError)
    with pytest.raises(InputError, match="does not exist"):
        load_dataset("digits", data_dir=tmp_path / "nowhere")
