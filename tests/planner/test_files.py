"""Atomic writes: a failed write keeps the user's file and leaves no temporary behind."""

from __future__ import annotations

import os

import pytest

from planner.files import write_text_atomic


def test_writes_and_replaces(tmp_path) -> None:
    target = tmp_path / "sub" / "report.json"
    assert write_text_atomic(target, "one\n") == target
    write_text_atomic(target, "two\n")
    assert target.read_text() == "two\n" and os.listdir(target.parent) == ["report.json"]


def test_a_failed_rename_keeps_the_old_file(tmp_path, monkeypatch) -> None:
    target = tmp_path / "train.yaml"
    target.write_text("the user's config\n")

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError, match="No space"):
        write_text_atomic(target, "new\n")
    assert target.read_text() == "the user's config\n" and os.listdir(tmp_path) == ["train.yaml"]
