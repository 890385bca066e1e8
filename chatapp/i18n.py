"""The visitor's language: which catalogue a page speaks, and its direction.

The catalogues are the JSON files in static/i18n/, one per language, read by
the server for the page's markup and by the browser for everything the
scripts say (plurals by Intl.PluralRules there). Knows no Flask.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from collections.abc import Sequence
from pathlib import Path

CATALOGUES = Path(__file__).parent / "static" / "i18n"
DEFAULT = "en"
LANGUAGES = ("en", "de", "fr", "es", "nb", "ar")
RIGHT_TO_LEFT = frozenset(("ar",))
# Other names browsers and WordPress use for a language we have.
ALIASES = {"no": "nb", "nn": "nb"}
_TAG = re.compile(r"^[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{1,8})*$")


def supported(tag: str | None) -> str | None:
    """Map a language tag (`de-AT`, `nb_NO`, `AR`) to a catalogue we have, or None."""
    if not tag or not _TAG.match(tag.strip()):
        return None
    primary = re.split(r"[-_]", tag.strip())[0].lower()
    primary = ALIASES.get(primary, primary)
    return primary if primary in LANGUAGES else None


def pick(
    requested: str | None, best_match: Callable[[Sequence[str]], str | None]
) -> str:
    """Choose the page's language: `?lang=` first, then Accept-Language, else English.

    `?lang=` carries, in turn, the widget's data-lang, the WordPress site's
    locale or the host page's <html lang>; an unsupported one falls through.
    """
    chosen = supported(requested)
    if chosen is not None:
        return chosen
    offered = [*LANGUAGES, *ALIASES]
    return supported(best_match(offered)) or DEFAULT


def direction(language: str) -> str:
    """Return the writing direction of a language: "rtl" or "ltr"."""
    return "rtl" if language in RIGHT_TO_LEFT else "ltr"


@functools.cache
def catalogue(language: str) -> dict[str, str | dict[str, str]]:
    """Return a language's words by key (read once per process)."""
    path = CATALOGUES / f"{language}.json"
    words: dict[str, str | dict[str, str]] = json.loads(path.read_text("utf-8"))
    return words


def words_of(language: str) -> Callable[[str], str]:
    """Return `t(key)` for the page's markup: a word of `language` (no plurals)."""
    words = catalogue(language)

    def t(key: str) -> str:
        value = words[key]  # a missing key is a bug the catalogue test catches
        if not isinstance(value, str):
            raise TypeError(f"{key} has plural forms; the script words it")
        return value

    return t
