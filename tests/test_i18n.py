"""The message catalogues: complete in every language, every word the page
uses is in them, and the language is picked in SPEC's order."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from chatapp import create_app
from chatapp import i18n

ROOT = Path(__file__).resolve().parents[1]
STATIC = ROOT / "chatapp" / "static"
SCRIPTS = [*sorted((STATIC / "chat").glob("*.js")), STATIC / "widget.js"]
TEMPLATES = sorted((ROOT / "chatapp" / "templates").glob("*.html"))
PLACEHOLDER = re.compile(r"\{(\w+)\}")
# The plural categories Intl.PluralRules gives for each language's integers.
PLURALS = {
    "en": {"one", "other"},
    "de": {"one", "other"},
    "nb": {"one", "other"},
    "fr": {"one", "many", "other"},
    "es": {"one", "many", "other"},
    "ar": {"zero", "one", "two", "few", "many", "other"},
}
# Keys built at run time: `t(\`stream.${code}\`)`, `t(\`feedback.${rating}\`)`.
DYNAMIC = {
    "stream": [
        "provider_rate_limited",
        "provider_timeout",
        "provider_unavailable",
        "provider_error",
        "internal",
        "content_blocked",
        "moderation_unavailable",
        "lost",
    ],
    "feedback": ["up", "down"],
}

ENGLISH = i18n.catalogue("en")


def test_every_language_spec_names_has_a_catalogue() -> None:
    assert set(i18n.LANGUAGES) >= {"en", "de", "fr", "es", "nb", "ar"}
    files = {p.stem for p in (STATIC / "i18n").glob("*.json")}
    assert files == set(i18n.LANGUAGES)


@pytest.mark.parametrize("lang", i18n.LANGUAGES)
def test_a_catalogue_has_every_key_and_no_other(lang: str) -> None:
    words = json.loads((STATIC / "i18n" / f"{lang}.json").read_text("utf-8"))
    assert sorted(set(ENGLISH) - set(words)) == [], f"{lang} lacks these keys"
    assert sorted(set(words) - set(ENGLISH)) == [], f"{lang} has unknown keys"


@pytest.mark.parametrize("lang", i18n.LANGUAGES)
def test_translations_keep_placeholders_and_plural_forms(lang: str) -> None:
    words = i18n.catalogue(lang)
    for key, english in ENGLISH.items():
        value = words[key]
        if isinstance(english, str):
            assert isinstance(value, str), key
            assert value.strip(), key
            assert set(PLACEHOLDER.findall(value)) == set(
                PLACEHOLDER.findall(english)
            ), key
            continue
        assert isinstance(value, dict), f"{key} needs plural forms"
        assert set(value) >= PLURALS[lang], f"{key} lacks plural forms in {lang}"
        allowed = {p for form in english.values() for p in PLACEHOLDER.findall(form)}
        for form in value.values():
            assert set(PLACEHOLDER.findall(form)) <= allowed, key
        assert "{n}" in value["other"], key


def sources() -> str:
    return "\n".join(p.read_text("utf-8") for p in [*SCRIPTS, *TEMPLATES])


def test_every_word_the_page_asks_for_is_in_the_catalogue() -> None:
    asked = set(re.findall(r"\bt\(\s*['\"]([\w.]+)['\"]", sources()))
    asked |= {f"{prefix}.{name}" for prefix, names in DYNAMIC.items() for name in names}
    assert len(asked) > 60
    assert sorted(asked - set(ENGLISH)) == []


def test_no_catalogue_word_is_dead() -> None:
    named = set(re.findall(r"['\"]([a-z_]+\.[a-z_.]+)['\"]", sources()))
    named |= {f"{prefix}.{name}" for prefix, names in DYNAMIC.items() for name in names}
    # The widget's words are read by prefix when /widget.js is served.
    unused = {k for k in set(ENGLISH) - named if not k.startswith("widget.")}
    assert sorted(unused) == []


@pytest.mark.parametrize(
    ("query", "accept", "lang", "direction"),
    [
        ("", "", "en", "ltr"),
        ("", "de-DE,de;q=0.9,en;q=0.5", "de", "ltr"),
        ("", "ja, fr-CA;q=0.8", "fr", "ltr"),
        ("", "no", "nb", "ltr"),
        ("", "ar-EG", "ar", "rtl"),
        ("", "ja", "en", "ltr"),
        ("?lang=es", "de", "es", "ltr"),  # ?lang= before Accept-Language
        ("?lang=nb_NO", "", "nb", "ltr"),  # a WordPress locale
        ("?lang=ar", "en", "ar", "rtl"),
        ("?lang=ja", "de", "de", "ltr"),  # unsupported: falls through
        ("?lang=%3Cscript%3E", "", "en", "ltr"),
    ],
)
@pytest.mark.parametrize("path", ["/", "/embed"])
def test_the_page_speaks_the_chosen_language(
    path: str, query: str, accept: str, lang: str, direction: str
) -> None:
    client = create_app({"SECRET_KEYS": ("test-key",)}).test_client()
    headers = {"Accept-Language": accept} if accept else {}
    response = client.get(path + query, headers=headers)
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    assert f'<html lang="{lang}" dir="{direction}"' in html
    assert f"/static/i18n/{lang}.json" in html
    assert "Accept-Language" in response.headers["Vary"]
    title = i18n.catalogue(lang)["page.title"]
    assert f"<title>{title}</title>" in html


def test_the_widget_script_carries_its_words_in_every_language() -> None:
    client = create_app({"SECRET_KEYS": ("test-key",)}).test_client()
    script = client.get("/widget.js").get_data(as_text=True)
    match = re.search(r"const WORDS = (\{.*?\});\n", script)
    assert match is not None
    words = json.loads(match.group(1))
    assert set(words) == set(i18n.LANGUAGES)
    assert words["de"]["close"] == i18n.catalogue("de")["widget.close"]
    assert words["ar"]["title"] == i18n.catalogue("ar")["widget.title"]
