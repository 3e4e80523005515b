"""The report's HTML: one page, its style and its one small script, all inline.

Nothing on the page asks the network for anything: pictures are data URIs or inline SVG,
the style and the script are in the page, links are fragments (#architecture), and even
the favicon is an empty data URI (a browser would otherwise ask for /favicon.ico).
The script only names the channel under the mouse in an activation grid; the page works
without it.
"""

from __future__ import annotations

import html
import json

from convnet.io.weights import json_text

STYLE = """
:root { color-scheme: light; }
body { margin: 0; font: 14px/1.45 "DejaVu Sans", system-ui, sans-serif; color: #222;
       background: #fff; }
main { max-width: 1180px; margin: 0 auto; padding: 8px 18px 48px; }
h1 { font-size: 22px; margin: 4px 0 6px; }
h2 { font-size: 18px; margin: 0 0 8px; padding-bottom: 3px; border-bottom: 1px solid #ddd; }
h3 { font-size: 15px; margin: 14px 0 6px; }
section { margin: 26px 0; }
nav a { margin-right: 12px; }
a { color: #1f5fa8; }
#status { padding: 10px 16px; border-radius: 6px; margin-top: 12px; }
#status.trained { background: #e7f4e9; border-left: 6px solid #2e7d32; }
#status.untrained { background: #fff3e0; border-left: 6px solid #e65100; }
#status.unknown { background: #eef1f5; border-left: 6px solid #607d8b; }
.badge { font-weight: bold; font-size: 16px; }
.facts { margin: 6px 0 0; overflow-wrap: anywhere; }
h1, h2, h3, p, li { overflow-wrap: anywhere; }   /* a long path or name wraps */
.note { color: #555; }
ul.notes { margin: 6px 0; padding-left: 20px; color: #555; }
.scroll { overflow: auto; max-height: 85vh; border: 1px solid #e4e4e4; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { padding: 2px 8px; border-bottom: 1px solid #eee; text-align: left;
         vertical-align: top; }
th { background: #f6f6f6; position: sticky; top: 0; }
td.num, th.num { text-align: right; white-space: nowrap; }
tr.total td { font-weight: bold; border-top: 1px solid #999; }
td.type { font-family: "DejaVu Sans Mono", monospace; font-size: 11.5px; }
#summary-table { font-size: 13px; }
#summary-table td { white-space: nowrap; }
svg.architecture text { font: 11px "DejaVu Sans Mono", monospace; fill: #222;
                        white-space: pre; }
svg.architecture .flow { stroke: #8a8a8a; stroke-width: 1.5; fill: none; }
svg.architecture g.volume:hover text { fill: #b00; }
.key { margin-right: 14px; white-space: nowrap; }
.key i { display: inline-block; width: 12px; height: 12px; margin-right: 5px;
         vertical-align: -1px; }
img.px { image-rendering: pixelated; max-width: 100%; height: auto; }
figure { margin: 0 0 14px; }
figcaption { font-size: 13px; margin-bottom: 3px; }
.stages figure { min-width: 12em; }
.stages figcaption { width: 0; min-width: 100%; }  /* as wide as its grid, never wider */
.channel { display: block; width: 0; height: 1.3em; white-space: nowrap; color: #b00; }
details.sample { margin: 8px 0 18px; border-top: 1px solid #ddd; padding-top: 6px; }
details.sample > summary { cursor: pointer; font-weight: bold; font-size: 15px; }
.sample-head { display: flex; gap: 18px; align-items: flex-start; margin: 8px 0 12px; }
.stages { display: flex; flex-wrap: wrap; gap: 4px 22px; align-items: flex-start; }
.tiles { display: flex; flex-wrap: wrap; gap: 14px; }
.tiles figure { margin: 0; font-size: 12px; }
table.confusion td { text-align: right; min-width: 26px; }
table.confusion th { font-weight: normal; }
table.confusion tbody th, #confused-pairs td { min-width: 10em; max-width: 16em;
                                              overflow-wrap: anywhere; }
.sample-head p, figcaption, details.sample > summary { min-width: 0;
                                                       overflow-wrap: anywhere; }
dl.settings { display: grid; grid-template-columns: repeat(3, max-content minmax(0, 1fr));
               gap: 3px 12px; margin: 4px 0; }
dl.settings dt { font-family: "DejaVu Sans Mono", monospace; font-size: 13px; color: #555; }
dl.settings dd { margin: 0; overflow-wrap: anywhere; }
@media (max-width: 760px) {        /* a phone: one pair a row, not a letter a line */
  dl.settings { grid-template-columns: max-content minmax(0, 1fr); }
}
footer { color: #777; font-size: 12px; margin-top: 40px; }
"""

# Names the channel under the mouse in an activation grid, from the grid's geometry.
SCRIPT = """
document.querySelectorAll("img.grid").forEach(function (img) {
  var caption = document.getElementById(img.dataset.caption);
  var d = img.dataset;
  img.addEventListener("mousemove", function (event) {
    var s = img.naturalWidth / img.clientWidth;
    var col = Math.floor((event.offsetX * s - d.pad) / (+d.tw + +d.pad));
    var row = Math.floor((event.offsetY * s - d.pad) / (+d.th + +d.pad));
    var channel = row * d.cols + col;
    caption.textContent = (col >= 0 && col < +d.cols && channel >= 0 &&
                           channel < +d.count) ? "channel " + channel : "";
  });
  img.addEventListener("mouseleave", function () { caption.textContent = ""; });
});
document.querySelectorAll("img#confusion").forEach(function (img) {
  var caption = document.getElementById(img.dataset.caption);
  var names = JSON.parse(img.dataset.classes);
  img.addEventListener("mousemove", function (event) {
    var k = names.length;
    var col = Math.floor(event.offsetX / img.clientWidth * k);
    var row = Math.floor(event.offsetY / img.clientHeight * k);
    caption.textContent = (row >= 0 && row < k && col >= 0 && col < k) ?
      "true " + names[row] + ", predicted " + names[col] : "";
  });
  img.addEventListener("mouseleave", function () { caption.textContent = ""; });
});
"""


def esc(value):
    """Text for HTML, quotes included (safe in attributes too)."""
    return html.escape(str(value), quote=True)


def data_value(value):
    """A JSON value as a data-value attribute: the exact number behind a shown one. A
    float that is NaN or infinite (not JSON: JSON.parse refuses it) is null."""
    return f' data-value="{esc(json_text(value))}"'


def document(title, body):
    """The whole page: head (title, style, an empty data-URI favicon), body, script."""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{esc(title)}</title><link rel="icon" href="data:,">'
            f'<style>{STYLE}</style></head>\n<body><main>\n{body}\n</main>'
            f'<script>{SCRIPT}</script></body></html>\n')


def section(key, title, body):
    """One section with a stable id (tests and links find it by id)."""
    return f'<section id="{key}">\n<h2>{esc(title)}</h2>\n{body}\n</section>\n'


def notes_list(notes):
    if not notes:
        return ""
    return '<ul class="notes">' + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>"


def key_value_list(pairs, key):
    """(name, value) pairs as a grid of three columns of name and value; values that are
    not str are shown as JSON, and each value's element carries its name (data-key)."""
    items = "".join(
        f'<dt>{esc(k)}</dt><dd data-key="{esc(k)}">'
        f'{esc(v if isinstance(v, str) else json.dumps(v))}</dd>' for k, v in pairs)
    return f'<dl class="settings" id="{key}">{items}</dl>'
