"""Languages of the console: English and Simplified Chinese, from message catalogues.

Every piece of text a page shows comes from ``locales/<locale>.json`` (flat
``key -> text``; ``{name}`` placeholders are filled with ``str.format``). The locale is
the ``jinyu_lang`` cookie when set by the switch on every page, otherwise the best
match of the browser's ``Accept-Language`` header, otherwise English. A key missing
from a catalogue falls back to English, then to the key itself (a test keeps the two
catalogues' keys identical).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

LOCALES: tuple[str, ...] = ("en", "zh-CN")
DEFAULT_LOCALE = "en"
COOKIE = "jinyu_lang"
LOCALE_DIR = Path(__file__).resolve().parent / "locales"

__all__ = ["COOKIE", "DEFAULT_LOCALE", "LOCALES", "Translator", "catalogue", "negotiate"]


@lru_cache(maxsize=len(LOCALES))
def catalogue(locale: str) -> dict[str, str]:
    """The message catalogue of one locale (read once)."""
    if locale not in LOCALES:
        raise ValueError(f"unknown locale {locale!r}")
    data: Any = json.loads((LOCALE_DIR / f"{locale}.json").read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise ValueError(f"{locale}.json must map keys to strings")
    return dict(data)


def _match(tag: str) -> str | None:
    tag = tag.strip().lower()
    if tag == "zh" or tag.startswith("zh-"):
        return "zh-CN"  # the only Chinese we have is Simplified
    if tag == "en" or tag.startswith("en-"):
        return "en"
    return None


def negotiate(accept_language: str | None, cookie: str | None = None) -> str:
    """The locale for a request: the switch's cookie, else Accept-Language, else English."""
    if cookie in LOCALES:
        return str(cookie)
    ranked: list[tuple[float, int, str]] = []
    for i, part in enumerate((accept_language or "").split(",")[:20]):
        tag, _, params = part.partition(";")
        q = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                q = float(params[2:])
            except ValueError:
                q = 0.0
        if q > 0:
            ranked.append((-q, i, tag))
    for _, _, tag in sorted(ranked):
        found = _match(tag)
        if found is not None:
            return found
    return DEFAULT_LOCALE


class Translator:
    """``t("key", name=value)``: the text of a key in one locale."""

    def __init__(self, locale: str) -> None:
        self.locale = locale if locale in LOCALES else DEFAULT_LOCALE
        self._messages = catalogue(self.locale)
        self._fallback = catalogue(DEFAULT_LOCALE)

    def has(self, key: str) -> bool:
        return key in self._messages or key in self._fallback

    def __call__(self, key: str, **values: Any) -> str:
        text = self._messages.get(key) or self._fallback.get(key) or key
        return text.format(**values) if values else text

    def maybe(self, key: str, default: str) -> str:
        """The text of ``key`` if a catalogue has it, else ``default`` (e.g. a raw code)."""
        return self(key) if self.has(key) else default

    @property
    def html_lang(self) -> str:
        return self.locale

    @property
    def other(self) -> str:
        """The locale the switch offers."""
        return "en" if self.locale == "zh-CN" else "zh-CN"
