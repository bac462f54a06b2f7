"""English and German for the privacy page, its router's messages and the
disclosure, from gettext catalogs (locale/<lang>/LC_MESSAGES/printernizer_stats.mo).

At run time only the standard library's `gettext` reads the compiled catalogs;
Babel is needed only to extract and compile them (`python -m
printernizer_stats.sdk.i18n_catalog`). English is the source language: its
"translation" is the message itself.
"""

from __future__ import annotations

import functools
import gettext
import re
from pathlib import Path
from typing import Any

from printernizer_stats.common.consent_levels import ConsentLevel
from printernizer_stats.common.contract import (
    CURRENT_SCHEMA_VERSION,
    NEVER_COLLECTED,
    disclosure,
    free_text_violations,
)

DOMAIN = "printernizer_stats"
LOCALE_DIR = Path(__file__).with_name("locale")
SOURCE_LANGUAGE = "en"
LANGUAGES = ("en", "de")

# One language range of Accept-Language, with its optional weight.
_RANGE = re.compile(r"\s*([A-Za-z]{1,8}(?:-[A-Za-z0-9]{1,8})*|\*)\s*(?:;\s*q\s*=\s*([0-9.]{1,5}))?\s*")


@functools.cache
def translations(language: str) -> gettext.NullTranslations:
    """The catalog of a supported language (English: the messages as they are)."""
    if language not in LANGUAGES or language == SOURCE_LANGUAGE:
        return gettext.NullTranslations()
    return gettext.translation(DOMAIN, LOCALE_DIR, [language], fallback=True)


def gettext_for(language: str) -> Any:
    """`_` for one language."""
    return translations(language).gettext


def accepted_languages(header: str | None) -> list[str]:
    """The primary language tags of an Accept-Language header, best first
    (weight 0 and unreadable parts left out; at most 20 ranges are read)."""
    weighted: list[tuple[float, int, str]] = []
    for position, part in enumerate((header or "").split(",")[:20]):
        match = _RANGE.fullmatch(part)
        if match is None:
            continue
        try:
            weight = float(match[2]) if match[2] is not None else 1.0
        except ValueError:
            continue
        if 0 < weight <= 1:
            weighted.append((-weight, position, match[1].split("-")[0].lower()))
    return [tag for _, _, tag in sorted(weighted)]


def choose_language(lang: str | None, accept_language: str | None) -> str:
    """`lang` when it names a supported language (`de`, `de-AT`), else the best
    supported one of Accept-Language, else English."""
    if lang:
        primary = lang.strip().split("-")[0].split("_")[0].lower()
        if primary in LANGUAGES:
            return primary
    for tag in accepted_languages(accept_language):
        if tag in LANGUAGES:
            return tag
    return SOURCE_LANGUAGE


def disclosure_document(language: str = SOURCE_LANGUAGE) -> dict[str, Any]:
    """What a report contains and why, from which consent level each field is
    shared, and what it can never contain, generated from the contract, in
    `language` (camelCase keys and enum names, like the agent's JSON)."""
    _ = gettext_for(language)
    return {
        "schemaVersion": CURRENT_SCHEMA_VERSION,
        "language": language,
        "fields": [
            {
                "field": item.path,
                "why": _(item.why) if item.why else "",
                "since": item.since_schema_version,
                "level": ConsentLevel.Name(item.level),  # type: ignore[arg-type]
            }
            for item in disclosure()
        ],
        "neverCollected": [_(line) for line in NEVER_COLLECTED],
        "freeTextFields": free_text_violations(),
    }


def disclosure_messages() -> list[str]:
    """Every text of the disclosure (for the catalog): the contract's "Why:"
    comments and the never-collected lines."""
    found = dict.fromkeys(item.why for item in disclosure() if item.why)
    found.update(dict.fromkeys(NEVER_COLLECTED))
    return list(found)


def catalog_messages(language: str) -> dict[str, str]:
    """The whole catalog of `language`, msgid -> translation (empty for English:
    the page then shows its msgids)."""
    if language == SOURCE_LANGUAGE or language not in LANGUAGES:
        return {}
    catalog: dict[Any, str] = getattr(translations(language), "_catalog", {})
    return {key: value for key, value in catalog.items() if isinstance(key, str) and key and value}
