"""Keeping the privacy page's translations (a tool for maintainers; needs Babel,
from the project's `dev` extra):

    python -m printernizer_stats.sdk.i18n_catalog update   # extract, merge into each .po, compile .mo
    python -m printernizer_stats.sdk.i18n_catalog check    # fail when anything is stale or untranslated

The messages come from four places: the router's Python (`_("...")`), the
page's markup (`{{ _("...") }}`), its script (`_("...")`) and the disclosure,
whose texts are the contract's "Why:" comments and the never-collected lines
(read from the compiled contract, so a changed comment shows up here).

The compiled `.mo` files are committed beside their `.po`: an editable install
(how this repository installs its distributions) runs no build step, and the
running code then needs nothing but the standard library's gettext. `check`
(and the test suite) fails when a `.mo` does not match its `.po`.
"""

from __future__ import annotations

import gettext
import io
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .i18n import DOMAIN, LANGUAGES, LOCALE_DIR, SOURCE_LANGUAGE, disclosure_messages

PACKAGE_DIR = Path(__file__).parent
TEMPLATE = LOCALE_DIR / f"{DOMAIN}.pot"
SOURCES: tuple[tuple[str, str], ...] = (
    ("fastapi.py", "python"),
    ("web/privacy.html", "printernizer_stats.sdk.i18n_catalog:extract_page"),
    ("web/privacy.js", "javascript"),
)
KEYWORDS = {"_": None}
_PAGE_MESSAGE = re.compile(r'\{\{\s*_\("((?:[^"\\]|\\.)*)"\)\s*\}\}')
DISCLOSURE_COMMENT = "from the report's definition (proto/): a Why: comment or a never-collected line"


def extract_page(
    fileobj: Any, keywords: Any, comment_tags: Any, options: Any
) -> Iterator[tuple[int, str, str, list[str]]]:
    """A Babel extractor for the page's markup: every `{{ _("...") }}`."""
    import json

    text = fileobj.read().decode("utf-8")
    for match in _PAGE_MESSAGE.finditer(text):
        yield text.count("\n", 0, match.start()) + 1, "_", json.loads(f'"{match[1]}"'), []


def po_path(language: str) -> Path:
    return LOCALE_DIR / language / "LC_MESSAGES" / f"{DOMAIN}.po"


def mo_path(language: str) -> Path:
    return po_path(language).with_suffix(".mo")


def translated_languages() -> list[str]:
    return [language for language in LANGUAGES if language != SOURCE_LANGUAGE]


def extract() -> Any:
    """The template catalog (babel.messages.Catalog) of every message, as the sources say now."""
    from babel.messages.catalog import Catalog
    from babel.messages.extract import extract_from_file

    template = Catalog(project="printernizer-stats-sdk", domain=DOMAIN, fuzzy=False)
    for relative, method in SOURCES:
        for lineno, message, comments, _context in extract_from_file(
            method, str(PACKAGE_DIR / relative), keywords=KEYWORDS
        ):
            if isinstance(message, tuple):
                message = message[0]
            template.add(message, locations=[(relative, lineno)], auto_comments=comments)
    for message in disclosure_messages():
        template.add(message, auto_comments=[DISCLOSURE_COMMENT])
    return template


def _read_po(path: Path) -> Any:
    from babel.messages.pofile import read_po

    with path.open("rb") as file:
        return read_po(file, domain=DOMAIN)


def _write_po(path: Path, catalog: Any) -> None:
    from babel.messages.pofile import write_po

    buffer = io.BytesIO()
    write_po(buffer, catalog, width=100, omit_header=False, sort_output=False, include_previous=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())


def _mo_bytes(catalog: Any) -> bytes:
    from babel.messages.mofile import write_mo

    buffer = io.BytesIO()
    write_mo(buffer, catalog)
    return buffer.getvalue()


def update() -> None:
    """Write the template, merge it into each language's .po, compile each .mo."""
    from babel.messages.catalog import Catalog

    template = extract()
    _write_po(TEMPLATE, template)
    for language in translated_languages():
        path = po_path(language)
        catalog = _read_po(path) if path.exists() else Catalog(locale=language, domain=DOMAIN)
        catalog.update(template, no_fuzzy_matching=True)
        catalog.obsolete.clear()
        _write_po(path, catalog)
        mo_path(language).write_bytes(_mo_bytes(_read_po(path)))


def problems() -> list[str]:
    """What is stale or missing: the template against the sources, every
    message's translation, and each .mo against its .po."""
    found: list[str] = []
    wanted = {message.id for message in extract() if message.id}
    stored = {message.id for message in _read_po(TEMPLATE) if message.id} if TEMPLATE.exists() else set()
    found += [f"not in {TEMPLATE.name}: {m!r}" for m in sorted(wanted - stored)]
    found += [f"in {TEMPLATE.name} but no longer used: {m!r}" for m in sorted(stored - wanted)]
    for language in translated_languages():
        catalog = _read_po(po_path(language))
        by_id = {message.id: message for message in catalog if message.id}
        for msgid in sorted(wanted):
            message = by_id.get(msgid)
            if message is None or not message.string:
                found.append(f"{language}: untranslated {msgid!r}")
            elif message.fuzzy:
                found.append(f"{language}: fuzzy {msgid!r}")
        compiled = mo_path(language)
        if not compiled.exists():
            found.append(f"{language}: {compiled.name} is missing")
            continue
        with compiled.open("rb") as file:
            in_mo = dict(gettext.GNUTranslations(file)._catalog)  # type: ignore[attr-defined]
        in_po = {m.id: m.string for m in catalog if m.id and m.string and not m.fuzzy}
        in_mo = {key: value for key, value in in_mo.items() if key}
        if in_mo != in_po:
            found.append(f"{language}: {compiled.name} does not match {po_path(language).name} (run update)")
    return found


def main(argv: list[str]) -> int:
    if argv[1:] == ["update"]:
        update()
        remaining = problems()
    elif argv[1:] == ["check"]:
        remaining = problems()
    else:
        print(__doc__, file=sys.stderr)
        return 2
    for problem in remaining:
        print(problem, file=sys.stderr)
    return 1 if remaining else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
