"""The re-use store: results linked back while their inputs and settings are unchanged."""

import os

from radpath.inputs.reuse import file_identity, reuse_key, reuse_or_make


def make_writing(path, text, calls):
    def make():
        calls.append(text)
        path.write_text(text, encoding="utf-8")
    return make


def test_a_result_is_made_once_then_linked_back_while_its_key_is_unchanged(tmp_path):
    store, out, calls = tmp_path / "store", tmp_path / "job" / "out.txt", []
    out.parent.mkdir()
    key = reuse_key({"a": 1}, [])
    assert reuse_or_make(store, "P1", key, [out], make_writing(out, "first", calls)) is False
    out.unlink()  # Snakemake removes a re-run job's outputs first
    assert reuse_or_make(store, "P1", key, [out], make_writing(out, "second", calls)) is True
    assert calls == ["first"] and out.read_text(encoding="utf-8") == "first"
    assert os.stat(out).st_ino == os.stat(store / "P1" / "out.txt").st_ino  # a link, no copy
    other = reuse_key({"a": 2}, [])
    assert reuse_or_make(store, "P1", other, [out], make_writing(out, "third", calls)) is False
    assert calls == ["first", "third"] and out.read_text(encoding="utf-8") == "third"


def test_a_failed_make_stores_nothing_and_no_store_only_makes(tmp_path):
    out, calls = tmp_path / "out.txt", []

    def fail():
        raise ValueError("bad input")

    try:
        reuse_or_make(tmp_path / "store", "P1", "k", [out], fail)
    except ValueError:
        pass
    assert not (tmp_path / "store" / "P1" / "key").exists()
    assert reuse_or_make(None, "P1", "k", [out], make_writing(out, "x", calls)) is False
    assert reuse_or_make(None, "P1", "k", [out], make_writing(out, "x", calls)) is False
    assert calls == ["x", "x"]


def test_the_key_follows_file_contents_not_their_times(tmp_path):
    coords = tmp_path / "coords.h5"
    coords.write_bytes(b"tiles")
    key = reuse_key({}, [coords])
    os.utime(coords, (1, 1))  # re-tiled with the same tiles
    assert reuse_key({}, [coords]) == key
    coords.write_bytes(b"other tiles")
    assert reuse_key({}, [coords]) != key
    assert file_identity(tmp_path / "missing") == [str(tmp_path / "missing")]


def test_a_dicom_folder_is_known_by_its_files(tmp_path):
    folder = tmp_path / "ct"
    folder.mkdir()
    (folder / "1.dcm").write_bytes(b"a")
    before = file_identity(folder)
    (folder / "2.dcm").write_bytes(b"b")
    assert file_identity(folder) != before
