"""planner.files: what ftplan agrees to write over, and atomic writes that keep the user's file on failure."""

from __future__ import annotations

import os
import stat

import pytest

from planner.errors import FtplanError
from planner.files import check_output, model_input, write_output, write_text_atomic


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
    with pytest.raises(FtplanError, match="could not write it \\(No space left on device\\); the previous file"):
        write_output(target, "new\n", flag="--out", existing="replace")
    assert target.read_text() == "the user's config\n" and os.listdir(tmp_path) == ["train.yaml"]


def test_an_existing_file_needs_force(tmp_path) -> None:
    target = tmp_path / "notes.txt"
    target.write_bytes(b"not ftplan's\n")
    with pytest.raises(FtplanError, match=r"--out .*notes\.txt: the file exists; add --force"):
        write_output(target, "report\n", flag="--out")
    assert target.read_bytes() == b"not ftplan's\n"
    write_output(target, "report\n", flag="--out", existing="replace")
    assert target.read_text() == "report\n"


def test_a_replaced_file_keeps_its_permissions(tmp_path) -> None:
    target = tmp_path / "private.json"
    target.write_text("old\n")
    target.chmod(0o600)
    write_output(target, "new\n", existing="replace")
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_a_symlink_to_a_file_is_written_through(tmp_path) -> None:
    real = tmp_path / "real.json"
    real.write_text("old\n")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    write_output(link, "new\n", existing="replace")
    assert link.is_symlink() and real.read_text() == "new\n"
    assert sorted(os.listdir(tmp_path)) == ["link.json", "real.json"]


@pytest.mark.parametrize("existing", ["refuse", "replace", "rename"])
def test_a_fifo_is_never_opened_or_replaced(tmp_path, existing) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(FtplanError, match=r"is a FIFO \(named pipe\); ftplan writes only regular files.*leave out --out"):
        write_output(fifo, "x\n", flag="--out", existing=existing)  # opening it would block: the test would hang
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_a_character_device_stays_a_device(tmp_path) -> None:
    """What `--out /dev/null` as root did: the rename turned the device into a regular file. A copy of the
    null device's node (made in tmp_path; the real /dev/null is never touched) must be refused."""
    node = tmp_path / "null"
    try:
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except (PermissionError, OSError):
        pytest.skip("creating a device node needs root")
    link = tmp_path / "to-null"
    link.symlink_to(node)
    for path in (node, link):
        with pytest.raises(FtplanError, match="character device"):
            write_output(path, "x\n", flag="--out", existing="replace")
    assert stat.S_ISCHR(os.lstat(node).st_mode) and link.is_symlink()


@pytest.mark.parametrize("existing", ["refuse", "replace", "rename"])
def test_folders_and_symlinks_to_them_are_refused(tmp_path, existing) -> None:
    folder = tmp_path / "reports"
    folder.mkdir()
    link = tmp_path / "latest"
    link.symlink_to(folder)
    with pytest.raises(FtplanError, match="reports: is a folder; give the path of a file"):
        check_output(folder, flag="--out", existing=existing)
    with pytest.raises(FtplanError, match="latest: is a symlink to a folder"):
        check_output(link, flag="--out", existing=existing)
    assert link.is_symlink() and folder.is_dir() and not any(folder.iterdir())


def test_dangling_symlinks_and_loops_are_refused(tmp_path) -> None:
    dangling = tmp_path / "out.json"
    dangling.symlink_to(tmp_path / "elsewhere" / "x.json")
    with pytest.raises(FtplanError, match="which does not exist; remove the link"):
        check_output(dangling, flag="--out", existing="replace")
    assert check_output(dangling, existing="rename").name == "out-1.json"  # the TUI never follows it
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(FtplanError, match="is a symlink loop"):
        check_output(loop, flag="--out")


def test_a_path_under_a_file(tmp_path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text("{}\n")
    for path in (data / "report.json", data / "more" / "report.json"):
        with pytest.raises(FtplanError, match=r"train\.jsonl is a file, not a folder"):
            write_output(path, "x\n", flag="--out")
    assert data.read_text() == "{}\n"


def test_too_long_names_fail_before_any_write_and_the_message_stays_short(tmp_path) -> None:
    long = tmp_path / ("r" * 300 + ".json")
    with pytest.raises(FtplanError, match=r"the file name is too long \(305 bytes; this filesystem takes at most") as info:
        check_output(long, flag="--out")
    assert len(str(info.value)) < 400
    # the temporary is short-named: a name that just fits is written
    fits = tmp_path / ("r" * 250 + ".json")
    assert write_output(fits, "x\n") == fits and os.listdir(tmp_path) == [fits.name]


def test_an_input_is_never_written_over_even_with_force(tmp_path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_bytes(b'{"text": "mine"}\n')
    hard = tmp_path / "hard.jsonl"
    os.link(data, hard)
    soft = tmp_path / "soft.jsonl"
    soft.symlink_to(data)
    for path in (data, hard, soft):
        with pytest.raises(FtplanError, match="that is the input file \\(--data\\) of this run"):
            write_output(path, "report\n", flag="--out", inputs={"--data": str(data), "--model": None},
                         existing="replace")
    assert data.read_bytes() == b'{"text": "mine"}\n'


def test_rename_picks_a_free_name(tmp_path) -> None:
    (tmp_path / "plan.json").write_text("mine\n")
    written = write_output(tmp_path / "plan.json", "new\n", existing="rename")
    assert written.name == "plan-1.json" and (tmp_path / "plan.json").read_text() == "mine\n"


def test_missing_folders_are_created_only_when_writing(tmp_path) -> None:
    target = tmp_path / "a" / "b" / "report.json"
    assert check_output(target, flag="--out") == target and not (tmp_path / "a").exists()
    write_output(target, "x\n", flag="--out")
    assert target.read_text() == "x\n"


def test_the_model_input_is_its_config_json(tmp_path) -> None:
    (tmp_path / "config.json").write_text("{}")
    assert model_input(str(tmp_path)) == tmp_path / "config.json"
    assert model_input(str(tmp_path / "config.json")) == tmp_path / "config.json"
    assert model_input("tiny-llama") is None and model_input(None) is None
