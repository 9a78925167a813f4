"""GX Data Docs that render offline: the pages GX writes load Bootstrap, jQuery, Font Awesome,
bootstrap-table, Vega and more from CDNs, so a machine without internet access shows them unstyled,
with an empty Status column and an empty index. After every build, ``localize_site`` points each page
at copies served from the site itself:

* Bootstrap 4.5 (``xstatic-bootstrap``; GX targets 4.3), jQuery 3.7.1 (``xstatic-jquery``) and
  Font Awesome 6.6 (``fontawesomefree``) are copied into ``static/meli-vendor/``;
* bootstrap-table (not packaged on PyPI) is replaced by ``meli-table.js``, a small renderer of the
  same call (columns, data, row attributes, formatters) without sorting, filtering or paging;
* Vega, the date picker, the filter-control extension and the dark theme are dropped (our suites
  render no charts), and GX's logo comes from the site's own ``static/images``.

Pages are rewritten in place (atomically) and only once; links to websites (``<a href>``) stay.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

from pipelines.core.fs import atomic_write_bytes

log = logging.getLogger(__name__)

VENDOR = "meli-vendor"
MARKER = "<!-- meli: assets served locally -->"

_TABLE_JS = r"""/* meli-retrain: renders GX's bootstrap-table calls offline (no sorting, filtering, paging). */
(function ($) {
  function fn(f) { return typeof f === "function" ? f : (f && window[f]) || null; }
  $.fn.bootstrapTable = function (opts) {
    if (typeof opts === "string") { return this; }  // methods (clearFilterControl, resetSearch)
    return this.each(function () {
      var $t = $(this), cols = (opts.columns || []).filter(function (c) { return c.visible !== false; });
      var $tr = $("<tr>");
      cols.forEach(function (c) {
        $tr.append($("<th>").addClass("text-" + (c.align || "left")).html(c.title || c.field));
      });
      var $body = $("<tbody>"), attrs = fn(opts.rowAttributes), style = fn(opts.rowStyle);
      (opts.data || []).forEach(function (row, i) {
        var $r = $("<tr>");
        if (attrs) { var a = attrs(row, i) || {}; Object.keys(a).forEach(function (k) { $r.attr(k, a[k]); }); }
        if (style) { $r.css((style(row, i) || {}).css || {}); }
        cols.forEach(function (c) {
          var v = row[c.field], f = fn(c.formatter);
          if (f) { v = f(v, row, i); }
          $r.append($("<td>").addClass("text-" + (c.align || "left")).html(v == null ? "" : v));
        });
        $r.on("click", function () { $t.trigger("click-row.bs.table", [row, $r]); });
        $body.append($r);
      });
      $t.empty().append($("<thead>").append($tr), $body).addClass("table table-hover");
    });
  };
})(jQuery);
"""

# (pattern of a tag that loads from a CDN, replacement: a vendor file, or None to drop the tag)
_TAGS: list[tuple[re.Pattern, str | None]] = [
    (re.compile(r"<link[^>]*bootstrapcdn\.com/bootstrap/[^>]*bootstrap\.min\.css[^>]*>"), "css:bootstrap.min.css"),
    (re.compile(r"<link[^>]*font-awesome/[^>]*all\.min\.css[^>]*>"), "css:fontawesome/css/all.min.css"),
    (re.compile(r"<script[^>]*code\.jquery\.com/jquery-[^>]*>\s*</script>"), "js:jquery.min.js"),
    (
        re.compile(r"<script[^>]*bootstrapcdn\.com/bootstrap/[^>]*bootstrap\.min\.js[^>]*>\s*</script>"),
        "js:bootstrap.bundle.min.js",
    ),
    (
        re.compile(r"<script[^>]*unpkg\.com/bootstrap-table@[^>]*/dist/bootstrap-table\.min\.js[^>]*>\s*</script>"),
        "js:meli-table.js",
    ),
    (re.compile(r"<script[^>]*\ssrc=\"https?://[^>]*>\s*</script>"), None),  # vega, popper (in the bundle), ...
    (re.compile(r"<link[^>]*\shref=\"https?://[^\"]*\.css\"[^>]*>"), None),  # bootstrap-table, datepicker, dark
]
_S3_IMAGE = re.compile(r"https://great-expectations-web-assets\.s3[^\"')]*?/([A-Za-z0-9_.-]+\.(?:png|svg|gif))[^\"')]*")


def _vendor_sources() -> dict[str, Path]:
    import fontawesomefree
    import xstatic.pkg.bootstrap as bootstrap
    import xstatic.pkg.jquery as jquery

    fa = Path(fontawesomefree.__file__).parent / "static" / "fontawesomefree"
    return {
        "bootstrap.min.css": Path(bootstrap.BASE_DIR) / "css" / "bootstrap.min.css",
        "bootstrap.bundle.min.js": Path(bootstrap.BASE_DIR) / "js" / "bootstrap.bundle.min.js",
        "jquery.min.js": Path(jquery.BASE_DIR) / "jquery.min.js",
        "fontawesome/css/all.min.css": fa / "css" / "all.min.css",
        "fontawesome/webfonts": fa / "webfonts",
    }


def install_assets(site: Path) -> Path:
    """Copy the vendored assets into ``site/static/meli-vendor/`` (once)."""
    dst = Path(site) / "static" / VENDOR
    if (dst / "meli-table.js").exists():
        return dst
    tmp = dst.with_name(f".{VENDOR}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    for rel, src in _vendor_sources().items():
        target = tmp / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, target)
        else:
            shutil.copy2(src, target)
    (tmp / "meli-table.js").write_text(_TABLE_JS)
    try:
        os.replace(tmp, dst)
    except OSError:  # another validation installed them meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    return dst


def localize_page(text: str, to_static: str) -> str:
    """One page with every CDN asset served from ``to_static`` (the site's static dir, relative)."""
    if MARKER in text:
        return text
    vendor = f"{to_static}/{VENDOR}"
    for pattern, repl in _TAGS:
        if repl is None:
            text = pattern.sub("", text)
        else:
            kind, name = repl.split(":", 1)
            tag = (
                f'<link rel="stylesheet" href="{vendor}/{name}"/>'
                if kind == "css"
                else f'<script src="{vendor}/{name}"></script>'
            )
            text = pattern.sub(lambda _m, tag=tag: tag, text)
    text = _S3_IMAGE.sub(lambda m: f"{to_static}/images/{_local_image(m.group(1))}", text)
    return text.replace("</head>", f"{MARKER}\n</head>", 1)


def _local_image(name: str) -> str:
    # GX's site ships logo-long.png, short-logo.png, ...; the dark theme's full logo is not shipped
    return name if name in {"logo-long.png", "short-logo.png", "favicon.ico"} else "logo-long.png"


def localize_site(site: Path) -> int:
    """Rewrite every page of a Data Docs site that still loads from a CDN; returns pages rewritten."""
    site = Path(site)
    if not site.is_dir():
        return 0
    install_assets(site)
    static = site / "static"
    done = 0
    for page in site.rglob("*.html"):
        if VENDOR in page.parts:
            continue
        text = page.read_text(encoding="utf-8")
        if MARKER in text:
            continue
        rel = os.path.relpath(static, page.parent).replace(os.sep, "/")
        atomic_write_bytes(page, localize_page(text, rel).encode("utf-8"))
        done += 1
    if done:
        log.info("Data Docs: %d pages now load their assets from %s", done, static / VENDOR)
    return done
