"""Text that machines and BMCs supply (installer messages, FRU strings, hostnames), made
safe to show on a terminal or in a log line.

It is stored as given. A terminal obeys what such text may carry: ESC [2J clears the
screen, ESC ] 0; sets the window title, some sequences make the terminal type an answer
into the shell, and bidi controls reorder what is shown; a newline in a log message forges
a log line. C0, DEL, C1 and the bidi controls are shown as escapes instead, so that the
reader still sees that something was there.
"""

from __future__ import annotations

_BIDI = (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
_CONTROLS = (*range(0x20), 0x7F, *range(0x80, 0xA0), *_BIDI)
_ESCAPED = {c: f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}" for c in _CONTROLS} | {
    ord("\t"): "\\t",
    ord("\n"): "\\n",
    ord("\r"): "\\r",
}
# Text that may run over several lines of its own (a CLI status line with a log tail).
_ESCAPED_BUT_NEWLINES = {c: text for c, text in _ESCAPED.items() if c != ord("\n")}


def printable(value: str) -> str:
    """``value`` on one line, every control character shown as an escape (``\\x1b``)."""
    return value.translate(_ESCAPED)


def printable_lines(value: str) -> str:
    """``value`` with its newlines kept and every other control character escaped."""
    return value.translate(_ESCAPED_BUT_NEWLINES)
