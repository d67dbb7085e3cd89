"""Standard output as scripts meet it: an ASCII-only locale, a reader that quits early, a full disk.

- `PYTHONIOENCODING=ascii` or a C locale: the arrows, crosses and ticks ftplan prints become ASCII
  stand-ins (`->`, `x`, `ok`) instead of a UnicodeEncodeError.
- `ftplan estimate | head -1`: the reader has what it wanted, so the command exits 0, silently (rich
  turns a broken pipe into SystemExit(1); Python's own writes raise BrokenPipeError).
- `>/dev/full`: one line on stderr and exit 3 (the environment), not a traceback.
"""

from __future__ import annotations

import codecs
import errno
import os
import sys
import unicodedata

# what ftplan prints outside ASCII, and the nearest ASCII; anything else falls back to its decomposition
# (é -> e) or "?"
FALLBACK = {
    "→": "->", "←": "<-", "↑": "^", "↓": "v", "×": "x", "✓": "ok", "✗": "x", "✔": "ok", "✘": "x", "·": "-",
    "•": "*", "—": "-", "–": "-", "…": "...", "≈": "~", "≤": "<=", "≥": ">=", "±": "+/-", "≠": "!=",
    "µ": "u", "Δ": "d", "°": " deg", "“": '"', "”": '"', "‘": "'", "’": "'", "█": "#", "▏": "|", "│": "|",
    "─": "-", "━": "-", "┃": "|", "⚠": "!",
}
# output that could not be written: the disk or the device, not the input
WRITE_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO})
_HANDLER = "ftplan-ascii"


def _stand_in(exc: UnicodeEncodeError) -> tuple[str, int]:
    text = exc.object[exc.start:exc.end]
    out = []
    for char in text:
        ascii_form = unicodedata.normalize("NFKD", char).encode("ascii", "ignore").decode()
        out.append(FALLBACK.get(char) or ascii_form or "?")
    return "".join(out), exc.end


codecs.register_error(_HANDLER, _stand_in)


def fallback_characters() -> None:
    """Where stdout or stderr cannot encode what ftplan prints, print its ASCII stand-ins instead."""
    for stream in (sys.stdout, sys.stderr):
        encoding = getattr(stream, "encoding", None) or "utf-8"
        try:
            "→×✓·".encode(encoding)
            continue
        except (UnicodeEncodeError, LookupError):
            pass
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors=_HANDLER)


def silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush of what is still buffered cannot fail
    again (a broken pipe, a full disk) and print 'Exception ignored' after the one-line error."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # a stream without a descriptor (a test's capture)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def broken_pipe(exc: BaseException) -> bool:
    """A BrokenPipeError, or rich's SystemExit for one (raised while handling it)."""
    return isinstance(exc, BrokenPipeError) or (isinstance(exc, SystemExit) and isinstance(exc.__context__,
                                                                                            BrokenPipeError))
