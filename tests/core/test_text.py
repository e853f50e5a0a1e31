"""The one sanitizer for text another node controls (core.text): every class of
character that can drive or fool a terminal is escaped, everything else is left."""

from __future__ import annotations

import json
import sys
import unicodedata

import pytest

from core.text import first_unsafe, json_safe, safe_line, safe_text, unsafe_reason

DANGEROUS_CATEGORIES = ("Cc", "Cf", "Zl", "Zp", "Cs")
INVISIBLE_BLANKS = ("\u115f", "\u1160", "\u3164", "\uffa0", "\u034f")

# One of each class the issue names: C0, ESC sequences, DEL, C1 (CSI, OSC), bidi
# overrides/isolates/marks, zero-width characters, separators, fillers, tags, surrogates.
EVERY_CLASS = (
    "a\x00b\x07c\x08d\re\x1b]0;TITLE\x07\x1b[2J\x1b[31mf\x7fg\x9b31mh\x9d0;t\x07"
    "i\u202ej\u202ak\u2066l\u2069m\u200en\u200fo\u061cp\u200bq\u200cr\u200ds\u2060t"
    "\ufeffu\u00adv\u2028w\u2029x\u3164y\u115fz\U000e0041\ud800!"
)


def _visible(text: str) -> bool:
    """Only characters a terminal draws as themselves (newline and tab aside)."""
    return all(
        ch in "\n\t"
        or (unicodedata.category(ch) not in DANGEROUS_CATEGORIES and ch not in INVISIBLE_BLANKS)
        for ch in text
    )


def test_every_control_format_separator_and_surrogate_code_point_is_escaped() -> None:
    missed = []
    for code in range(sys.maxunicode + 1):
        char = chr(code)
        if char in "\n\t":
            continue
        if unicodedata.category(char) in DANGEROUS_CATEGORIES or char in INVISIBLE_BLANKS:
            shown = safe_text(f"x{char}y")
            if not _visible(shown) or shown == f"x{char}y":
                missed.append(f"U+{code:04X}")
    assert missed == []


def test_a_hostile_string_of_every_class_comes_out_inert_and_readable() -> None:
    shown = safe_text(EVERY_CLASS)
    assert _visible(shown)
    assert "\\x1b]0;TITLE\\x07" in shown and "\\x9b31m" in shown and "\\u202e" in shown
    assert "\\u200b" in shown and "\\u3164" in shown and "\\U000e0041" in shown
    assert shown.encode("utf-8")  # no lone surrogate left: it can be written out
    line = safe_line(EVERY_CLASS + "\nnext\tcol")
    assert _visible(line) and "\n" not in line and "\t" not in line
    assert line.endswith(" next col")


def test_ordinary_text_is_returned_as_it_is() -> None:
    for text in ("hello", "zwei Zeilen\nund\tTab", "日本語 ✓✓ read", "emoji 👩\u200d👩\u200d👧"):
        assert safe_text(text) == text
        assert first_unsafe(text) is None


def test_a_zero_width_joiner_outside_an_emoji_sequence_is_escaped() -> None:
    assert safe_text("pay\u200dpal") == "pay\\u200dpal"
    assert safe_text("\u200d👩") == "\\u200d👩"
    assert first_unsafe("pay\u200dpal") == (3, "\u200d")


def test_safe_text_is_idempotent() -> None:
    once = safe_text(EVERY_CLASS)
    assert safe_text(once) == once and safe_line(safe_line(EVERY_CLASS)) == safe_line(EVERY_CLASS)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("a\x1bb", "a control character (U+001B at 1)"),
        ("\u202eevil", "an invisible or format character (U+202E at 0)"),
        ("x\u3164", "an invisible or format character (U+3164 at 1)"),
        ("fine\n\tok", None),
    ],
)
def test_unsafe_reason_names_the_first_character(text: str, reason: str | None) -> None:
    assert unsafe_reason(text) == reason


def test_json_output_means_the_same_and_shows_no_raw_control() -> None:
    data = {"body": EVERY_CLASS.replace("\ud800", ""), "name": "\u202eevil\U000e0041"}
    dumped = json_safe(json.dumps(data, ensure_ascii=False))
    assert _visible(dumped)
    assert json.loads(dumped) == data
