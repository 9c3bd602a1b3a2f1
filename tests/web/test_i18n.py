"""Languages: negotiation, catalogues in step, and no text outside the catalogues."""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest

from sandbox.jobs import State
from sandbox.web import i18n

TEMPLATES = Path(i18n.__file__).resolve().parent / "templates"
KEY_CALL = re.compile(r"""\bt(?:\.maybe)?\(\s*'([A-Za-z0-9_.-]+)'\s*[,)]""")
PREFIX_CALL = re.compile(r"""\bt(?:\.maybe)?\(\s*'([A-Za-z0-9_.-]+\.)'\s*~""")


@pytest.mark.parametrize(
    ("header", "cookie", "expected"),
    [
        ("zh-CN,zh;q=0.9,en;q=0.8", None, "zh-CN"),
        ("zh-TW", None, "zh-CN"),
        ("en-GB,en;q=0.9", None, "en"),
        ("fr-FR,zh;q=0.5,en;q=0.4", None, "zh-CN"),  # best supported by q
        ("en;q=0.2,zh-CN;q=0.8", None, "zh-CN"),
        ("de-DE,fr;q=0.8", None, "en"),
        ("", None, "en"),
        (None, None, "en"),
        ("zh-CN;q=0,en", None, "en"),  # q=0 means "not this"
        ("zh-CN;q=oops", None, "en"),
        ("zh-CN", "en", "en"),  # the switch's cookie wins
        ("en", "zh-CN", "zh-CN"),
        ("en", "klingon", "en"),  # an unknown cookie is ignored
    ],
)
def test_negotiate(header: str | None, cookie: str | None, expected: str) -> None:
    assert i18n.negotiate(header, cookie) == expected


def test_catalogues_have_the_same_keys_and_placeholders() -> None:
    en, zh = i18n.catalogue("en"), i18n.catalogue("zh-CN")
    assert sorted(en) == sorted(zh)
    for key in en:
        slots = set(re.findall(r"{(\w+)}", en[key]))
        assert slots == set(re.findall(r"{(\w+)}", zh[key])), key
        assert en[key].strip() and zh[key].strip(), key


def test_chinese_catalogue_is_chinese() -> None:
    zh = i18n.catalogue("zh-CN")
    han = [k for k, v in zh.items() if re.search(r"[\u4e00-\u9fff]", v)]
    assert len(han) > 0.8 * len(zh)


def test_every_key_a_template_uses_is_in_both_catalogues() -> None:
    en, zh = i18n.catalogue("en"), i18n.catalogue("zh-CN")
    used: set[str] = set()
    prefixes: set[str] = set()
    for path in TEMPLATES.glob("*.html"):
        text = path.read_text(encoding="utf-8")
        used |= set(KEY_CALL.findall(text))
        prefixes |= set(PREFIX_CALL.findall(text))
    assert len(used) > 150
    missing = sorted(k for k in used if k not in en or k not in zh)
    assert missing == []
    for prefix in prefixes:  # dynamic keys: at least one entry per family
        assert any(k.startswith(prefix) for k in en), prefix


def test_every_job_state_has_a_label() -> None:
    t = i18n.Translator("zh-CN")
    for state in State:
        assert t.has(f"state.{state.value}"), state


def test_translator_formats_and_falls_back() -> None:
    t = i18n.Translator("zh-CN")
    assert t("flash.signed_in", name="supervisor-li") == "已登录：supervisor-li。"
    assert t("no.such.key") == "no.such.key"
    assert t.maybe("state.nope", "raw") == "raw"
    assert i18n.Translator("xx").locale == "en"


# What may appear in a template outside {{ }} / {% %} and tags: punctuation and
# symbols only (ε δ ρ ± …); every word comes from a catalogue.
ALLOWED_TEXT = re.compile(r"^[\s\-–—/·:;,.!?%#()\[\]ερδ±…×|]*$")


def _visible_text(source: str) -> str:
    text = re.sub(r"{#.*?#}", " ", source, flags=re.S)
    text = re.sub(r"{%.*?%}", " ", text, flags=re.S)
    text = re.sub(r"{{.*?}}", " ", text, flags=re.S)
    text = re.sub(r"<(script|style)\b.*?</\1>", " ", text, flags=re.S)
    text = re.sub(r"<[^>]*>", " ", text, flags=re.S)
    return html.unescape(text)


@pytest.mark.parametrize("path", sorted(TEMPLATES.glob("*.html")), ids=lambda p: p.name)
def test_templates_hold_no_text(path: Path) -> None:
    leftover = _visible_text(path.read_text(encoding="utf-8"))
    words = [w for w in leftover.split() if not ALLOWED_TEXT.match(w)]
    assert words == [], f"{path.name}: text outside the catalogues: {words}"


@pytest.mark.parametrize("path", sorted(TEMPLATES.glob("*.html")), ids=lambda p: p.name)
def test_templates_hold_no_text_in_attributes(path: Path) -> None:
    source = path.read_text(encoding="utf-8")
    for attr in ("title", "placeholder", "aria-label", "alt"):
        for value in re.findall(rf'\b{attr}="([^"]*)"', source):
            stripped = re.sub(r"{{.*?}}", "", value).strip()
            assert ALLOWED_TEXT.match(stripped) or stripped.startswith("jy_"), (attr, value)


@pytest.mark.parametrize("path", sorted(TEMPLATES.glob("*.html")), ids=lambda p: p.name)
def test_forms_that_post_carry_the_csrf_token(path: Path) -> None:
    source = path.read_text(encoding="utf-8")
    for form in re.findall(r"<form\b[^>]*>.*?</form>", source, flags=re.S):
        if 'method="post"' in form:
            assert '<input type="hidden" name="csrf" value="{{ csrf }}">' in form


def test_no_asset_comes_from_elsewhere() -> None:
    root = TEMPLATES.parent
    for path in [*TEMPLATES.glob("*.html"), *(root / "static").iterdir()]:
        text = path.read_text(encoding="utf-8")
        urls = re.findall(r"(?:https?:)?//[\w.-]+\.\w+[^\s\"')]*", text)
        urls = [u for u in urls if not u.startswith("http://www.w3.org/2000/svg")]
        assert urls == [], (path.name, urls)
