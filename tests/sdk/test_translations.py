"""The privacy page's and the disclosure's translations (gettext catalogs kept
with Babel): nothing untranslated, nothing stale, no text outside the catalog."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from typing import ClassVar

import pytest
from babel.messages.extract import extract_from_file
from babel.messages.pofile import read_po
from printernizer_stats.common.contract import NEVER_COLLECTED, disclosure
from printernizer_stats.sdk import i18n_catalog
from printernizer_stats.sdk.fastapi import _script_messages, render_page
from printernizer_stats.sdk.i18n import (
    LANGUAGES,
    accepted_languages,
    choose_language,
    disclosure_document,
    gettext_for,
)

WEB = Path(i18n_catalog.PACKAGE_DIR) / "web"
PLACEHOLDER = re.compile(r"\{\{.*?\}\}")
# Literals a script may hold outside _(): ids, tags, paths, enum names, types... never words for people.
PROSE = re.compile(r"[A-Za-z]\s+[A-Za-z]|[A-Z][a-z]")


def test_the_catalogs_are_current_complete_and_compiled() -> None:
    assert i18n_catalog.problems() == []


@pytest.mark.parametrize("language", [lang for lang in LANGUAGES if lang != "en"])
def test_every_message_of_the_template_is_translated(language: str) -> None:
    with i18n_catalog.TEMPLATE.open("rb") as file:
        template = read_po(file)
    with i18n_catalog.po_path(language).open("rb") as file:
        translated = {message.id: message for message in read_po(file) if message.id}
    wanted = [message.id for message in template if message.id]
    assert len(wanted) > 100
    untranslated = [m for m in wanted if m not in translated or not translated[m].string]
    assert untranslated == []
    assert [m for m in wanted if translated[m].fuzzy] == []


def test_the_disclosure_is_in_the_catalog_and_translated() -> None:
    _ = gettext_for("de")
    texts = [item.why for item in disclosure() if item.why] + list(NEVER_COLLECTED)
    assert [text for text in texts if _(text) == text] == []
    german = disclosure_document("de")
    assert len(german["fields"]) == len(disclosure())


class _Text(HTMLParser):
    """Text and people-facing attributes of a page, outside scripts."""

    ATTRIBUTES: ClassVar[set[str]] = {"title", "alt", "aria-label", "placeholder"}

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self._script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._script = tag in ("script", "style")
        self.found += [value for name, value in attrs if name in self.ATTRIBUTES and value]

    def handle_endtag(self, tag: str) -> None:
        self._script = False

    def handle_data(self, data: str) -> None:
        if not self._script:
            self.found.append(data)


def test_no_text_of_the_page_is_outside_the_catalog() -> None:
    template = (WEB / "privacy.html").read_text(encoding="utf-8")
    parser = _Text()
    parser.feed(PLACEHOLDER.sub("", template))
    leftovers = [text.strip() for text in parser.found if re.search(r"[A-Za-z]", text)]
    assert leftovers == []


def _literals(script: str) -> list[tuple[int, str]]:
    """(offset, text) of every string and template literal of a script, comments
    skipped (template expressions left out of the text)."""
    found: list[tuple[int, str]] = []
    i = 0
    while i < len(script):
        two = script[i : i + 2]
        if two == "//":
            i = script.find("\n", i)
            i = len(script) if i < 0 else i
        elif two == "/*":
            i = script.index("*/", i) + 2
        elif script[i] in "\"'`":
            quote, start, text = script[i], i, []
            i += 1
            while script[i] != quote:
                if script[i] == "\\":
                    text.append(script[i : i + 2])
                    i += 2
                elif quote == "`" and script[i : i + 2] == "${":
                    depth, i = 1, i + 2
                    while depth:
                        depth += {"{": 1, "}": -1}.get(script[i], 0)
                        i += 1
                else:
                    text.append(script[i])
                    i += 1
            found.append((start, "".join(text)))
            i += 1
        else:
            i += 1
    return found


def test_no_text_of_the_script_is_outside_the_catalog() -> None:
    script = (WEB / "privacy.js").read_text(encoding="utf-8")
    translated = {m.start(1) for m in re.finditer(r'\b_\(\s*(")', script)}
    literals = [text for offset, text in _literals(script) if offset not in translated]
    assert "use strict" in literals
    assert len(literals) > 20
    prose = [text for text in literals if text != "use strict" and PROSE.search(text)]
    assert prose == []

    # Every _() call gives its message as a literal, so the catalog can hold it.
    def in_comment(offset: int) -> bool:
        return script[script.rfind("\n", 0, offset) + 1 : offset].lstrip().startswith("//")

    calls = [m.start() for m in re.finditer(r"(?<![\w.])_\(", script) if not in_comment(m.start())]
    definition = script.index("function _(") + len("function ")
    assert [c for c in calls if c != definition and script[c + 2] != '"'] == []


def test_the_page_embeds_exactly_the_messages_babel_extracts_from_the_script() -> None:
    extracted = {
        message if isinstance(message, str) else message[0]
        for _line, message, _comments, _context in extract_from_file(
            "javascript", str(WEB / "privacy.js"), keywords=i18n_catalog.KEYWORDS
        )
    }
    assert set(_script_messages()) == extracted


def test_the_german_page_has_no_english_left() -> None:
    _ = gettext_for("de")
    german = render_page("de")
    english_only = [m for m in _script_messages() if _(m) != m and f'"{m}": "{m}"' in german]
    assert english_only == []
    assert "Nutzungsstatistiken" in german
    assert 'lang="de"' in german


@pytest.mark.parametrize(
    ("lang", "header", "chosen"),
    [
        (None, None, "en"),
        (None, "de-DE,de;q=0.9,en;q=0.8", "de"),
        (None, "fr-FR, de;q=0.5", "de"),
        (None, "fr-FR, en;q=0.1, de;q=0.5", "de"),
        (None, "de;q=0, en", "en"),
        (None, "*", "en"),
        (None, "garbage;;;,,", "en"),
        ("de", "en", "de"),
        ("de_AT", None, "de"),
        ("fr", "de", "de"),
        ("EN", "de", "en"),
    ],
)
def test_the_language_comes_from_lang_then_accept_language(
    lang: str | None, header: str | None, chosen: str
) -> None:
    assert choose_language(lang, header) == chosen


def test_accept_language_is_read_by_weight_then_order() -> None:
    assert accepted_languages("en;q=0.5, de-CH, fr;q=0.9") == ["de", "fr", "en"]
    assert accepted_languages("x" * 5000) == []
