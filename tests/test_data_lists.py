"""Video lists: the accepted formats, label files, paths, and errors that name file:line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vattn_cli.data import read_label_file, read_list, resolve_data
from vattn_cli.errors import UsageError


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def summary(items) -> list[tuple[str, int, int]]:
    return [(str(i.path), i.label, i.line) for i in items]


def test_whitespace_list_kinetics_style(tmp_path: Path) -> None:
    lst = write(tmp_path / "lists" / "train.txt", "# Kinetics-style\n\na/x.mp4 3\n  b/y.mp4\t0  \n/abs/z.mp4 12\n")
    items = read_list(lst)
    base = tmp_path / "lists"
    assert summary(items) == [(str(base / "a/x.mp4"), 3, 3), (str(base / "b/y.mp4"), 0, 4), ("/abs/z.mp4", 12, 5)]
    assert all(i.source == str(lst) for i in items)
    assert items[0].where == f"{lst}:3"


def test_root_overrides_list_folder(tmp_path: Path) -> None:
    lst = write(tmp_path / "train.csv", "x.mp4 1\n")  # PySlowFast: .csv name, space separated
    (tmp_path / "videos").mkdir()
    assert read_list(lst, root=tmp_path / "videos")[0].path == tmp_path / "videos" / "x.mp4"
    with pytest.raises(UsageError, match="--root"):
        read_list(lst, root=tmp_path / "nope")


def test_csv_with_and_without_header(tmp_path: Path) -> None:
    plain = read_list(write(tmp_path / "a.csv", "v1.mp4,2\n\"with, comma.mp4\",0\n"))
    assert [(i.path.name, i.label) for i in plain] == [("v1.mp4", 2), ("with, comma.mp4", 0)]
    header = read_list(write(tmp_path / "b.csv", "path,label\nv1.mp4,2\n"))
    assert [(i.path.name, i.label, i.line) for i in header] == [("v1.mp4", 2, 2)]
    # a header may order columns freely and carry extra ones
    extra = read_list(write(tmp_path / "c.csv", "label,youtube_id,path\n4,abc,v.mp4\n"))
    assert [(i.path.name, i.label) for i in extra] == [("v.mp4", 4)]


def test_label_names_through_label_files(tmp_path: Path) -> None:
    ssv2 = write(tmp_path / "labels.json", json.dumps({"Pushing something": "1", "Holding something": "0"}))
    assert read_label_file(ssv2) == ["Holding something", "Pushing something"]
    lst = write(tmp_path / "l.csv", "path,label\nv.mp4,Pushing something\nw.mp4,0\n")
    assert [i.label for i in read_list(lst, label_file=ssv2)] == [1, 0]
    names = write(tmp_path / "names.txt", "abseiling\nair drumming\n")
    assert [i.label for i in read_list(write(tmp_path / "k.txt", "v.mp4 abseiling\n"), label_file=names)] == [0]
    as_list = write(tmp_path / "classes.json", json.dumps(["a", "b", "c"]))
    assert read_label_file(as_list) == ["a", "b", "c"]


def test_ssv2_json_list(tmp_path: Path) -> None:
    labels = write(tmp_path / "labels.json", json.dumps({"Holding something": "0", "Pushing something left": "1"}))
    entries = [{"id": "78687", "template": "Pushing [something] left", "label": "pushing a cup left"},
               {"id": "42", "template": "Holding [something]"}]
    items = read_list(write(tmp_path / "train.json", json.dumps(entries)), root=tmp_path, label_file=labels)
    assert summary(items) == [(str(tmp_path / "78687.webm"), 1, 1), (str(tmp_path / "42.webm"), 0, 2)]
    with pytest.raises(UsageError, match="labels.json"):
        read_list(tmp_path / "train.json")


@pytest.mark.parametrize(
    ("text", "line", "match"),
    [
        ("a.mp4 1\nb.mp4 1 7\n", 2, "malformed"),  # three fields
        ("a.mp4 1\nb.mp4\n", 2, "malformed"),  # no label
        ("# c\na.mp4 one\n", 2, "not an integer"),  # a name with no label file
        ("a.mp4 -1\n", 1, "negative"),
        ("a.mp4,1\n\nb.mp4,\n", 3, "malformed"),  # empty CSV label
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path: Path, text: str, line: int, match: str) -> None:
    lst = write(tmp_path / "bad.txt", text)
    with pytest.raises(UsageError, match=match) as err:
        read_list(lst)
    assert f"{lst}:{line}:" in str(err.value)


def test_label_file_errors(tmp_path: Path) -> None:
    names = write(tmp_path / "names.txt", "a\nb\n")
    with pytest.raises(UsageError, match=r"l\.txt:2: label 'c' is not an integer; it is not in the label file"):
        read_list(write(tmp_path / "l.txt", "x.mp4 a\ny.mp4 c\n"), label_file=names)
    with pytest.raises(UsageError, match=r"m\.txt:1: label 5 is out of range"):
        read_list(write(tmp_path / "m.txt", "x.mp4 5\n"), label_file=names)
    with pytest.raises(UsageError, match="without gaps"):
        read_label_file(write(tmp_path / "gap.json", json.dumps({"a": 0, "b": 2})))
    with pytest.raises(UsageError, match="twice"):
        read_label_file(write(tmp_path / "dup.txt", "a\na\n"))


def test_empty_and_missing_lists(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="lists no videos"):
        read_list(write(tmp_path / "empty.txt", "# nothing\n\n"))
    with pytest.raises(UsageError, match="does not exist"):
        read_list(tmp_path / "missing.txt")


def test_resolve_list_folder_and_classes_json(tmp_path: Path) -> None:
    write(tmp_path / "train.csv", "path,label\na.mp4,0\nb.mp4,1\n")
    write(tmp_path / "val.txt", "c.mp4 1\n")
    write(tmp_path / "classes.json", json.dumps(["left", "right", "still"]))
    train = resolve_data(str(tmp_path))
    assert (train.num_classes, train.class_names, train.split) == (3, ["left", "right", "still"], "train")
    assert [i.path.name for i in train.items] == ["a.mp4", "b.mp4"]
    val = resolve_data(str(tmp_path), split="val")
    assert val.list_path == tmp_path / "val.txt" and val.num_classes == 3
    with pytest.raises(UsageError, match="without a test list"):
        resolve_data(str(tmp_path), split="test")
    # without classes.json the count comes from the labels
    plain = resolve_data(str(write(tmp_path / "other" / "l.txt", "a.mp4 4\n")))
    assert plain.num_classes == 5 and plain.class_names is None
    with pytest.raises(UsageError, match="builtin:motion"):
        resolve_data(str(tmp_path / "nope.csv"))
    with pytest.raises(UsageError, match="accepted: builtin:motion, builtin:appearance"):
        resolve_data("builtin:colour")
