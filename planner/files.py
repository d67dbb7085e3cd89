"""Every file ftplan writes goes through here: checked before the work starts, then written atomically.

The rules, the same for `diagnose --out`, `preflight --fix`, the TUI's exports and saves, the calibration
cache and the benchmarks' documents:

- Only a regular file, a symlink to one, or a missing path is written. A folder, a device, a FIFO or a
  socket (or a symlink to one) is refused: renaming a temporary over `/dev/null` would turn the device into a
  plain file, and a FIFO would block the run at its very end. A symlink is written through: its target is
  replaced and the link kept, as `>` in a shell does.
- An input of the same run (`--data`, the training config, the model's config.json) is never written over,
  not even with `--force`: that is the one mistake a user cannot undo.
- A file that exists is replaced only when the caller says so (`existing="replace"`: `--force`, or a file
  that is ftplan's own, such as the calibration cache); the TUI picks a free name instead (`"rename"`).
- `check_output` applies the rules without writing, so a command checks its outputs before a run that may
  take minutes; `write_output` applies them again (the path may have changed meanwhile) and writes through a
  temporary file in the target's folder renamed over it: a reader never sees half a file, and a failed write
  leaves the previous file as it was and no temporary behind.

Problems are FtplanErrors (one line, naming the flag and the path, exit code 2), never tracebacks.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from planner.errors import FtplanError, shortened

Existing = Literal["refuse", "replace", "rename"]
Inputs = Mapping[str, "str | Path | None"]

# what a path that is not a regular file is, in messages (planner.spec says it of a --model path too)
FILE_KINDS = {stat.S_IFDIR: "folder", stat.S_IFCHR: "character device", stat.S_IFBLK: "block device",
          stat.S_IFIFO: "FIFO (named pipe)", stat.S_IFSOCK: "socket"}


def check_output(path: str | Path, *, flag: str | None = None, inputs: Inputs | None = None,
                 existing: Existing = "refuse") -> Path:
    """The path to write `path` to, after checking it can be written under the rules above; raises FtplanError.

    `flag` names the setting in messages (`--out`); `inputs` maps a description of each input of the run
    ("--data", "the config") to its path (None, or a path that does not exist, is skipped). With `"rename"` the
    answer is `path`, or `path-1`, `path-2`... when that exists, so nothing is overwritten.
    """
    where = f"{flag} {_shown(path)}" if flag else _shown(path)
    if not str(path).strip():
        raise FtplanError(f"{flag or 'output file'}: empty; give a file name")
    target = Path(path).expanduser()
    _check_lengths(target, where)
    try:
        info = os.stat(target)  # follows symlinks: what matters is what would be written
    except FileNotFoundError:
        info = None
    except OSError as exc:
        raise _unreachable(target, exc, where) from None
    if info is None:
        if os.path.islink(target):
            if existing == "rename":
                return _free_name(target, flag, inputs)
            raise FtplanError(f"{where}: is a symlink to {_shown(os.readlink(target))}, which does not exist; "
                              "remove the link or choose another path")
        _check_folder(target.parent, where)
        return target
    kind = FILE_KINDS.get(stat.S_IFMT(info.st_mode))
    if kind is not None:
        link = f"a symlink to a {kind} ({_shown(os.path.realpath(target))})" if os.path.islink(target) else (
            f"a {kind}")
        fix = ("give the path of a file, e.g. one inside it" if kind == "folder"
               else f"ftplan writes only regular files, so choose a file path{_leave_out(flag)}")
        raise FtplanError(f"{where}: is {link}; {fix}")
    for label, source in (inputs or {}).items():
        if source is not None and _same_file(target, source):
            raise FtplanError(f"{where}: that is the input file ({label}) of this run; choose another path "
                              "(ftplan never writes over its inputs)")
    if existing == "rename":
        return _free_name(target, flag, inputs)
    if existing == "refuse":
        raise FtplanError(f"{where}: the file exists; add --force to replace it, or choose another path")
    _check_folder(Path(os.path.realpath(target)).parent, where)
    return target


def write_output(path: str | Path, text: str, *, flag: str | None = None, inputs: Inputs | None = None,
                 existing: Existing = "refuse") -> Path:
    """Check `path` (`check_output`), then write `text` (UTF-8) to it atomically; returns the path written."""
    target = check_output(path, flag=flag, inputs=inputs, existing=existing)
    real = Path(os.path.realpath(target))  # through a symlink: the target is replaced, the link kept
    # a short fixed-length name: `.<long name>.tmp` would fail where the name itself just fits
    tmp = real.with_name(f".ftplan-{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        real.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())  # else a crash after the rename can leave an empty file in its place
        _keep_owner_and_mode(real, tmp)
        os.replace(tmp, real)
    except (OSError, UnicodeError) as exc:  # UnicodeError: a lone surrogate from a non-UTF-8 name in `text`
        where = f"{flag} {_shown(path)}" if flag else _shown(path)
        raise FtplanError(f"{where}: could not write it ({getattr(exc, 'strerror', None) or exc}); "
                          + ("the previous file is unchanged" if real.exists() else "nothing was written")) from None
    finally:
        tmp.unlink(missing_ok=True)
    return target


def write_text_atomic(path: str | Path, text: str, *, what: str | None = None) -> Path:
    """Write a file that is ftplan's own (the calibration cache, the benchmarks' documents): replaced without
    asking, under every other rule of `write_output`; `what` names it in messages."""
    return write_output(path, text, flag=what, existing="replace")


def model_input(model: str | None) -> Path | None:
    """The config.json a local `--model` reads, as planner.spec.resolve_model finds it (None for a preset or
    a hub id): an input that an output must not overwrite."""
    if not model:
        return None
    try:
        path = Path(model).expanduser()
        return path / "config.json" if path.is_dir() else path if path.is_file() else None
    except (OSError, RuntimeError, ValueError):  # a name too long, "~nobody": resolve_model says why, in one line
        return None


def _shown(path: str | Path) -> str:
    return shortened(str(path))  # a hostile 10,000-character name must not become a 10,000-character line


def _leave_out(flag: str | None) -> str:
    return f" (or leave out {flag} to write nothing)" if flag and flag.startswith("--") else ""


def _name_max(folder: Path) -> int:
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def _check_lengths(target: Path, where: str) -> None:
    """Names past the filesystem's limit, found now rather than by a failed write after the run."""
    limit = _name_max(target.parent)
    for part in target.parts:
        size = len(os.fsencode(part))
        if size > limit:
            name = "the file name" if part == target.name else f"the folder name {_shown(part)}"
            raise FtplanError(f"{where}: {name} is too long ({size} bytes; this filesystem takes at most "
                              f"{limit}); choose a shorter name")
    size = len(os.fsencode(str(target.absolute())))
    if size >= 4096:  # PATH_MAX on Linux, including the terminating NUL
        raise FtplanError(f"{where}: the path is too long ({size} bytes; at most 4095); choose a shorter path")


def _check_folder(folder: Path, where: str) -> None:
    """The nearest existing folder above a missing file must be a folder ftplan may create files in."""
    while not os.path.lexists(folder) and folder != folder.parent:
        folder = folder.parent
    try:
        info = os.stat(folder)
    except OSError as exc:
        raise _unreachable(folder, exc, where) from None
    if not stat.S_ISDIR(info.st_mode):
        raise _not_a_folder(folder, where)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise FtplanError(f"{where}: cannot create files in {_shown(folder)} (permission denied or a read-only "
                          "filesystem); choose a path in a folder you can write")


def path_error(exc: OSError, where: str, fix: str) -> FtplanError:
    """Why a path cannot even be looked at, as the user can fix it (a symlink loop or a name too long is not "no
    such file"); `fix` is what to do instead, for the cases with no fix of their own."""
    if exc.errno == errno.ELOOP:
        return FtplanError(f"{where}: is a symlink loop; fix the link or {fix}")
    if exc.errno == errno.ENAMETOOLONG:
        return FtplanError(f"{where}: the path is too long for this filesystem; {fix}")
    return FtplanError(f"{where}: cannot use it ({exc.strerror or exc}); {fix}")


def _unreachable(path: Path, exc: OSError, where: str) -> FtplanError:
    """Why a path cannot even be looked up: a file where a folder should be, a symlink loop, permissions."""
    if exc.errno == errno.ENOTDIR:
        for folder in reversed(path.parents):  # the first one from the top that is something else
            if os.path.exists(folder) and not os.path.isdir(folder):
                return _not_a_folder(folder, where)
    return path_error(exc, where, "choose another path")


def _not_a_folder(folder: Path, where: str) -> FtplanError:
    kind = FILE_KINDS.get(stat.S_IFMT(os.stat(folder).st_mode), "file")
    return FtplanError(f"{where}: {_shown(folder)} is a {kind}, not a folder; choose a path in a folder")


def _same_file(target: Path, source: str | Path) -> bool:
    try:
        return os.path.samefile(target, Path(source).expanduser())  # hard links and symlinks included
    except (OSError, ValueError):
        return False  # an input that does not exist cannot be overwritten


def _free_name(target: Path, flag: str | None, inputs: Inputs | None) -> Path:
    candidate, n = target, 0
    while os.path.lexists(candidate):  # a dangling symlink is taken too: writing through it is never wanted
        n += 1
        candidate = target.with_name(f"{target.stem}-{n}{target.suffix}")
    return check_output(candidate, flag=flag, inputs=inputs, existing="refuse")


def _keep_owner_and_mode(real: Path, tmp: Path) -> None:
    """A replaced file keeps its permissions (a private report stays private) and, where allowed, its owner."""
    try:
        info = os.stat(real)
    except FileNotFoundError:
        return
    os.chmod(tmp, stat.S_IMODE(info.st_mode))
    with contextlib.suppress(OSError):  # only root may give a file away: otherwise the writer owns it
        os.chown(tmp, info.st_uid, info.st_gid)
