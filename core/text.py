"""Text that came from another node, made safe for a terminal: the one sanitizer.

Every string a remote node controls (a chat body, a refusal reason, a name, a preview,
a search snippet, a call's peer name) reaches a terminal -- the TUI or any ``mesh``
command -- only through :func:`safe_text` (or :func:`safe_line` where one line is
drawn). What it escapes, each as a visible ``\\xNN`` / ``\\uNNNN`` / ``\\UNNNNNNNN``:

- C0 controls (ESC, NUL, BEL, CR, backspace, ...) and DEL; newline and tab are text in
  :func:`safe_text`, and become one space in :func:`safe_line`;
- C1 controls U+0080-U+009F (CSI U+009B, OSC U+009D, ...), which many terminals obey;
- format characters (Unicode category Cf): bidi embeddings, overrides and isolates
  (U+202A-U+202E, U+2066-U+2069, U+200E/F, U+061C), zero-width space and joiners,
  word joiner, BOM, soft hyphen, tag characters, ...; a zero-width joiner between two
  pictographs (an emoji sequence such as a family) is kept;
- line and paragraph separators (U+2028, U+2029), lone surrogates (a JSON reply can
  carry them; they cannot even be encoded), and invisible "letters" that pass for
  blanks (Hangul fillers U+115F, U+1160, U+3164, U+FFA0) and the combining grapheme
  joiner U+034F.

:func:`first_unsafe` finds the first such character (to refuse a message outright), and
:func:`json_safe` escapes C1 controls in JSON text (``json.dumps`` leaves them raw).
"""

from __future__ import annotations

import re

__all__ = ["first_unsafe", "json_safe", "safe_line", "safe_text", "unsafe_reason"]

# Unicode general category Cf (format) as of Unicode 15 (Python 3.11), plus Zl/Zp,
# surrogates and the invisible blanks named above. A test checks this table against
# unicodedata for every code point, so a newer Unicode cannot slip one through.
_FORMAT = (
    "\u00ad\u034f\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u115f\u1160"
    "\u180e\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u206f\u3164\ufeff\uffa0"
    "\ufff9-\ufffb\ud800-\udfff"
    "\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3"
    "\U0001d173-\U0001d17a\U000e0001\U000e0020-\U000e007f"
)
_CONTROLS = "\x00-\x08\x0b-\x1f\x7f-\x9f"
_UNSAFE_TEXT = re.compile(f"[{_CONTROLS}{_FORMAT}]")
_UNSAFE_LINE = re.compile(f"[\t\n{_CONTROLS}{_FORMAT}]")
_ZWJ = "\u200d"
_JSON_UNESCAPED = re.compile(f"[\x7f-\x9f{_FORMAT}]")  # json.dumps leaves these raw


def _escaped(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _pictograph(char: str) -> bool:
    """Whether ``char`` can sit either side of a joiner in an emoji sequence."""
    code = ord(char)
    return (
        0x1F000 <= code <= 0x1FAFF
        or 0x2600 <= code <= 0x27BF
        or code == 0xFE0F  # emoji presentation selector
        or 0x1F3FB <= code <= 0x1F3FF  # skin tones
    )


def _joins_pictographs(text: str, at: int) -> bool:
    """Whether ``text[at]`` is a zero-width joiner inside an emoji sequence."""
    return (
        text[at] == _ZWJ
        and 0 < at < len(text) - 1
        and _pictograph(text[at - 1])
        and _pictograph(text[at + 1])
    )


def _sub(pattern: re.Pattern[str], text: str) -> str:
    def one(found: re.Match[str]) -> str:
        char = found.group()
        if char in "\t\n":
            return " "
        return char if _joins_pictographs(text, found.start()) else _escaped(char)

    return pattern.sub(one, text)


def safe_text(text: str) -> str:
    """``text`` with every character that could drive or fool a terminal escaped;
    newlines and tabs kept (a message body)."""
    if not isinstance(text, str):
        text = str(text)
    if _UNSAFE_TEXT.search(text) is None:  # the common case: no copy
        return text
    return _sub(_UNSAFE_TEXT, text)


def safe_line(text: object) -> str:
    """:func:`safe_text` for one line (a name, a reason, a preview, a status): newlines
    and tabs become spaces too."""
    value = text if isinstance(text, str) else str(text)
    if _UNSAFE_LINE.search(value) is None:
        return value
    return _sub(_UNSAFE_LINE, value)


def first_unsafe(text: str) -> tuple[int, str] | None:
    """(position, character) of the first character :func:`safe_text` would escape
    (newline and tab are text), or None."""
    for found in _UNSAFE_TEXT.finditer(text):
        if not _joins_pictographs(text, found.start()):
            return found.start(), found.group()
    return None


def unsafe_reason(text: str) -> str | None:
    """What :func:`first_unsafe` found, for an error: ``a control character (U+001B at
    3)`` or ``an invisible or format character (U+202E at 0)``; None when nothing."""
    found = first_unsafe(text)
    if found is None:
        return None
    at, char = found
    what = "a control character" if ord(char) < 0xA0 else "an invisible or format character"
    return f"{what} (U+{ord(char):04X} at {at})"


def json_safe(dumped: str) -> str:
    """JSON text (``ensure_ascii=False``) with DEL, C1 controls and every character
    :func:`safe_text` escapes written as ``\\uNNNN`` (pairs above U+FFFF); they can occur
    only inside strings, so the JSON means the same, and a terminal shows it inert."""

    def one(found: re.Match[str]) -> str:
        code = ord(found.group())
        if code < 0x10000:
            return f"\\u{code:04x}"
        code -= 0x10000
        return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"

    return _JSON_UNESCAPED.sub(one, dumped)
