"""HTML and Markdown from data, safely: every page is a Jinja2 template with autoescape (the templates
live in ``pipelines/core/templates/``, found from any working directory), Markdown is rendered with raw
HTML off, and text quoted into Markdown is escaped so it stays text.

Values quoted from data (a run id, a listing title, a category, a reviewer's name or reason) are
untrusted: they reach a page only as escaped text, never as markup.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

TEMPLATES = Path(__file__).resolve().parent / "templates"

# The plugin's own pages: no script at all, styles inline (the pages are self-contained files too),
# images only from the page itself; shown in Airflow's run page as an iframe of the same origin.
PAGE_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'self'"
)


@cache
def _env():
    from jinja2 import Environment, FileSystemLoader, Undefined

    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES)),
        autoescape=True,  # every template, whatever its name
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["f4"] = lambda x: "n/a" if x is None or isinstance(x, Undefined) else f"{float(x):.4f}"
    return env


def render(template: str, **ctx) -> str:
    """``pipelines/core/templates/<template>`` rendered with ``ctx`` (autoescaped)."""
    return _env().get_template(template).render(**ctx)


def markdown_html(md: str):
    """Markdown to HTML with raw HTML off (a tag in the text is shown as text), tables on; returned
    as ``Markup`` for a template to place as is."""
    from markdown_it import MarkdownIt
    from markupsafe import Markup

    return Markup(MarkdownIt("commonmark", {"html": False}).enable("table").render(md))


_MD_SPECIAL = re.compile(r"([\\`*\[\]<>&!|#~])")


def md_text(value) -> str:
    """``value`` as literal text inside Markdown: one line, its Markdown punctuation (links, images,
    emphasis, code, tables, raw HTML) backslash-escaped, so any CommonMark renderer shows it as
    typed, whether or not that renderer lets raw HTML through."""
    text = " ".join(str(value).split())
    return _MD_SPECIAL.sub(r"\\\1", text)


_URL_SAFE = ":/?#[]@!$&'*+,;=%~-._"  # kept as is in a link's target; "(", ")", "<", ">", "\\" and the rest encoded


def http_url(url) -> str | None:
    """``url`` when it is an absolute http(s) URL (a link's target), else None: no ``javascript:``,
    no relative or scheme-less targets from settings or records."""
    from urllib.parse import urlsplit

    text = str(url or "").strip()
    try:
        parts = urlsplit(text)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc or any(c.isspace() for c in text):
        return None
    return text


def md_link(text, url) -> str:
    """A Markdown link ``[text](url)``: ``text`` escaped (md_text), ``url`` only an http(s) URL with the
    characters that would end a link destination percent-encoded; "" when ``url`` is not one."""
    from urllib.parse import quote

    target = http_url(url)
    if target is None:
        return ""
    return f"[{md_text(text)}]({quote(target, safe=_URL_SAFE)})"
