"""A training config read within bounds: the file, its text and what it expands to.

A config is a few kilobytes and a few levels deep, so anything far beyond that is refused in one line
(exit 2) before it costs time or memory:

- only a regular file is read: a FIFO would block forever, /dev/zero never ends, a folder is no config;
  it is opened non-blocking and checked on the open file, so a rename after a check cannot swap it;
- at most MAX_BYTES; UTF-8 (a BOM is fine), with UTF-16/32 and other bytes named, not a traceback;
- a YAML document is measured on its event stream before any node is built: more than MAX_VALUES values
  once its aliases and merge keys are expanded (a 365-byte "billion laughs" file expands to 387 million),
  more than MAX_DEPTH levels, or a value that contains itself is refused. Building the values comes only
  after, so a merge-key bomb never runs either;
- JSON gets the same depth limit (its parser stops near Python's recursion limit with a RecursionError).
"""

from __future__ import annotations

import codecs
import json
import os
import stat
from pathlib import Path

from planner.errors import FtplanError, shortened
from planner.files import FILE_KINDS, path_error

MAX_BYTES = 1 << 20  # LLaMA-Factory's, TRL's and axolotl's examples are all under 20 KiB
MAX_VALUES = 20_000  # scalars, lists and mappings after expansion; the largest examples have a few hundred
MAX_DEPTH = 64  # levels of nesting; examples reach 5 (an axolotl dataset entry with a field mapping)

_WIDE = ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"), (codecs.BOM_UTF16_LE, "UTF-16"),
         (codecs.BOM_UTF16_BE, "UTF-16"))


def read_text(path: Path, what: str = "a training config", limit: int = MAX_BYTES) -> str:
    """The text of the regular file `path` (at most `limit` bytes of UTF-8); `what` it should be, for messages."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise path_error(exc, str(path), f"give the path of {what}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = FILE_KINDS.get(stat.S_IFMT(mode), "special file")
        raise FtplanError(f"{path}: is a {kind}, not a regular file; give the path of {what}")
    with os.fdopen(fd, "rb") as fh:
        try:
            data = fh.read(limit + 1)
        except OSError as exc:
            raise FtplanError(f"{path}: cannot read it ({exc.strerror or exc}); check the file") from None
    if len(data) > limit:
        raise FtplanError(f"{path}: larger than {limit >> 20} MiB, far beyond {what} (a few KiB); check the path")
    for bom, name in _WIDE:  # UTF-32-LE starts with the UTF-16-LE mark: the longer marks first
        if data.startswith(bom):
            raise FtplanError(f"{path}: {name} text; save it as UTF-8")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FtplanError(f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start:,}); "
                          "save it as UTF-8") from None


def parse_json(text: str, path: Path):
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FtplanError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except RecursionError:
        raise _too_deep(path) from None
    except ValueError:  # an integer of more than 4,300 digits (CVE-2020-10735)
        raise FtplanError(f"{path}: not valid JSON (a number of more than 4,300 digits); fix the file") from None
    if isinstance(data, (dict, list)):
        _measure(data, path)
    return data


def parse_yaml(text: str, path: Path):
    import yaml

    loader_class = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: ten times faster where built
    loader = None
    try:
        _measure_events(yaml.parse(text, Loader=loader_class), path)  # before any node is built
        loader = loader_class(text)
        node = loader.get_single_node()
        if node is None:
            return None
        try:
            return loader.construct_document(node)
        except (ValueError, TypeError, OverflowError) as exc:  # a tagged or typed scalar that is no such value
            if isinstance(exc, FtplanError):
                raise
            raise FtplanError(f"{path}: not valid YAML: a value cannot be read ({shortened(str(exc), 100)}); "
                              "fix the file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        if "nesting depth" in problem:  # libyaml's own limit, at 1,000 levels
            raise _too_deep(path) from None
        raise FtplanError(f"{path}: not valid YAML{where}: {problem}") from None
    except RecursionError:  # the pure-Python composer recurses once per level
        raise _too_deep(path) from None
    finally:
        if loader is not None:
            loader.dispose()


class _Open:
    """A collection whose end event has not come yet."""

    __slots__ = ("anchor", "deepest", "start")

    def __init__(self, anchor: str | None, start: int, level: int) -> None:
        self.anchor, self.start, self.deepest = anchor, start, level


def _measure_events(events, path: Path) -> None:
    """Refuse a YAML document that expands past MAX_VALUES values or MAX_DEPTH levels, or contains itself, from
    its event stream: every scalar and collection counts one, every alias the expanded size of what it names
    (merge keys included), so a 365-byte file that expands to 387 million values stops after a few hundred
    events, and nothing is ever expanded."""
    import yaml

    total = 0
    anchors: dict[str, tuple[int, int]] = {}  # anchor -> (values it expands to, levels of collections it spans)
    stack: list[_Open] = []
    for event in events:
        level = len(stack)
        if isinstance(event, yaml.AliasEvent):
            if any(frame.anchor == event.anchor for frame in stack):
                raise FtplanError(f"{path}: a YAML alias refers to a value that contains it (a value that "
                                  "contains itself); remove the alias")
            size, levels = anchors.get(event.anchor, (1, 0))  # an undefined one: the composer says so
            total += size
            if stack:
                stack[-1].deepest = max(stack[-1].deepest, level + levels)
        elif isinstance(event, yaml.ScalarEvent):
            total += 1
            if event.anchor is not None:
                anchors[event.anchor] = (1, 0)  # a scalar nests nothing
        elif isinstance(event, yaml.CollectionStartEvent):
            total += 1
            stack.append(_Open(event.anchor, total - 1, level + 1))
            if level + 1 > MAX_DEPTH:
                raise _too_deep(path)
        elif isinstance(event, yaml.CollectionEndEvent):
            frame = stack.pop()
            if frame.anchor is not None:
                anchors[frame.anchor] = (total - frame.start, frame.deepest - level + 1)
            if stack:
                stack[-1].deepest = max(stack[-1].deepest, frame.deepest)
        else:
            continue
        if total > MAX_VALUES or (stack and stack[-1].deepest > MAX_DEPTH):
            raise (_too_deep(path) if total <= MAX_VALUES else _too_many(path))


def _measure(data, path: Path) -> None:
    """The same limits for a parsed JSON document (no aliases: each value is where it is)."""
    total, stack = 0, [(data, 1)]
    while stack:
        value, level = stack.pop()
        kids = list(value.values()) if isinstance(value, dict) else value
        total += len(kids) * (2 if isinstance(value, dict) else 1)  # a key and its value
        if total > MAX_VALUES:
            raise _too_many(path)
        if level > MAX_DEPTH:
            raise _too_deep(path)
        stack.extend((k, level + 1) for k in kids if isinstance(k, (dict, list)))


def _too_many(path: Path) -> FtplanError:
    return FtplanError(f"{path}: expands to more than {MAX_VALUES:,} values (YAML aliases that repeat each other, "
                       "or a huge list); a training config has a few hundred: fix the file")


def _too_deep(path: Path) -> FtplanError:
    return FtplanError(f"{path}: nested more than {MAX_DEPTH} levels deep; a training config has a few: fix the file")
