"""The only place that builds HTML. Every piece of text is escaped here, and nowhere else.

Model output and user text are untrusted: they may hold ``<script>``, ``<img onerror=...>``,
``javascript:`` links or a stray ``</div>``. Callers pass plain text and numbers; this module
escapes text with html.escape and accepts colours only in the forms it generates itself.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from urllib.parse import quote

_COLOUR = re.compile(r"^(#[0-9a-fA-F]{3,8}|rgba?\([0-9., ]+\)|hsla?\([0-9.,% ]+\)|transparent)$")
_CLASS = re.compile(r"^[a-z][a-z0-9-]*$")


def esc(text: object) -> str:
    """Escape any value for use in HTML text or a quoted attribute."""
    return html.escape(str(text), quote=True)


def safe_colour(colour: str | None) -> str | None:
    if colour is None:
        return None
    if not _COLOUR.match(colour.strip()):
        raise ValueError(f"not a colour this module generates: {colour!r}")
    return colour.strip()


@dataclass
class Chip:
    """One token as a coloured chip.

    text: what the chip shows (already made readable, e.g. by core.tokens.readable).
    title: the hover text (plain text; newlines allowed). sub: small text under the chip
    (e.g. the token id). css: extra class names from this module's stylesheet: "special"
    (template tokens), "bytes" (part of a UTF-8 character), "chosen", "marked".
    href: a relative link ("?step=3"); only query strings and relative paths are accepted.
    more: (label, relative link) shown under the title when a tapped chip opens it: the way from
    one token to a page about it (an <a> inside a chip link could not be clicked on its own).
    """

    text: str
    title: str = ""
    background: str | None = None
    sub: str | None = None
    css: tuple[str, ...] = ()
    href: str | None = None
    more: tuple[str, str] | None = None


STYLE = """
<style>
.gb-chips{line-height:2.1;font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:0.9rem;word-break:break-word}
.gb-chip{display:inline-block;padding:0 .3em;margin:1px 1px;border-radius:4px;border:1px solid rgba(0,0,0,.12);white-space:pre;color:#111;text-decoration:none}
.gb-chip .gb-sub{display:block;font-size:.65rem;color:#555;line-height:1;text-align:center}
.gb-chip.special{background:#334155!important;color:#f8fafc;font-weight:600}
.gb-chip.special .gb-sub{color:#cbd5e1}
.gb-chip.bytes{font-style:italic;border-style:dashed}
.gb-chip.chosen{outline:2px solid #111}
.gb-chip.marked{outline:3px solid #e11d48}
.gb-legend{font-size:.8rem;color:#444;margin:.2em 0 .6em 0}
.gb-legend span{display:inline-block;padding:0 .4em;margin-right:.3em;border-radius:3px;color:#111}
.gb-chips.gb-tap{position:relative}
details.gb-chip>summary{list-style:none;cursor:pointer}
details.gb-chip>summary::-webkit-details-marker{display:none}
details.gb-chip[open]{outline:2px solid #2563eb}
.gb-pop a.gb-more{display:inline-block;margin-top:.3em;font-weight:600;color:#1d4ed8}
.gb-pop{position:absolute;left:0;right:0;z-index:5;margin-top:.25em;padding:.3em .6em;background:#fff;color:#111;border:1px solid #94a3b8;border-radius:6px;box-shadow:0 2px 8px rgba(0,0,0,.18);white-space:pre-wrap;font-size:.8rem;line-height:1.45;font-style:normal;font-weight:400;text-align:left}
</style>
"""


def _href(href: str | None) -> str | None:
    if href is None:
        return None
    # Only same-app links: a query string or a relative page path, never a scheme.
    if not (href.startswith("?") or re.match(r"^[A-Za-z0-9_\-/]+(\?[^\s]*)?$", href)):
        raise ValueError(f"only relative links are allowed: {href!r}")
    return quote(href, safe="/?=&_-.%")


def chip(c: Chip, tap: bool = False) -> str:
    """One chip. tap: a chip with a title opens it on a tap or click as well (see chips)."""
    classes = " ".join(["gb-chip", *[k for k in c.css if _CLASS.match(k)]])
    style = f' style="background:{safe_colour(c.background)}"' if c.background else ""
    title = f' title="{esc(c.title)}"' if c.title else ""
    sub = f'<span class="gb-sub">{esc(c.sub)}</span>' if c.sub is not None else ""
    body = f"{esc(c.text)}{sub}"
    href = _href(c.href)
    if href is not None:
        return f'<a class="{classes}" href="{esc(href)}" target="_self"{style}{title}>{body}</a>'
    if tap and c.title:
        more = ""
        if c.more is not None:
            label, link = c.more
            more = f'\n<a class="gb-more" href="{esc(_href(link))}" target="_self">{esc(label)}</a>'
        return (
            f'<details class="{classes}" name="gb-tap"{style}{title}><summary>{body}</summary>'
            f'<div class="gb-pop">{esc(c.title)}{more}</div></details>'
        )
    return f'<span class="{classes}"{style}{title}>{body}</span>'


def chips(items: list[Chip], legend: list[tuple[str, str]] | None = None, tap: bool = False) -> str:
    """A row of chips, with an optional legend of (colour, label) pairs above it.

    tap: every chip with a title (and no link) also shows it when tapped, below the row of chips:
    a touch screen cannot hover. subtle: each such chip is a <details> whose title box is
    absolutely positioned against the row (left and right 0, top where the chip ends), so it
    spans the row's width and never runs past the screen's edge; opening one closes the
    others (one name for the group).
    """
    parts = [STYLE]
    if legend:
        keys = "".join(
            f'<span style="background:{safe_colour(col)}">{esc(label)}</span>' for col, label in legend
        )
        parts.append(f'<div class="gb-legend">{keys}</div>')
    row = "gb-chips gb-tap" if tap else "gb-chips"
    parts.append(f'<div class="{row}">' + "".join(chip(c, tap) for c in items) + "</div>")
    return "".join(parts)


def probability_colour(p: float) -> str:
    """Low probability red, high green, through yellow: a colour-blind-tolerant-ish ramp."""
    p = min(max(float(p), 0.0), 1.0)
    hue = 120 * p  # 0 = red, 60 = yellow, 120 = green
    return f"hsl({hue:.0f}, 75%, 80%)"


def weight_colour(w: float, max_w: float = 1.0) -> str:
    """A blue background whose strength shows an attention or similarity weight."""
    a = 0.0 if max_w <= 0 else min(max(float(w) / max_w, 0.0), 1.0)
    return f"rgba(37, 99, 235, {a:.3f})"


def probability_legend() -> list[tuple[str, str]]:
    return [
        (probability_colour(p), label)
        for p, label in [(0.05, "< 10%"), (0.3, "30%"), (0.6, "60%"), (0.95, "> 90%")]
    ]


def architecture_svg(model_name: str, n_layers: int) -> str:
    """An inline SVG contrasting an encoder-decoder transformer with this decoder-only model.

    Left: the encoder reads the whole input; the decoder writes and looks back at the encoder
    through cross-attention. Right: one stack reads prompt and reply as one sequence and writes
    the next token, which is appended and read again. Every label goes through esc().
    """

    def box(x: int, y: int, w: int, h: int, fill: str, label: str, sub: str = "") -> str:
        text = f'<text x="{x + w / 2}" y="{y + h / 2 - (6 if sub else -4)}" text-anchor="middle" font-weight="600">{esc(label)}</text>'
        if sub:
            text += f'<text x="{x + w / 2}" y="{y + h / 2 + 12}" text-anchor="middle" font-size="11" fill="#475569">{esc(sub)}</text>'
        return f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="8" fill="{fill}" stroke="#334155"/>{text}'

    def label(
        x: float, y: float, text: str, size: int = 12, colour: str = "#111", anchor: str = "middle"
    ) -> str:
        return f'<text x="{x}" y="{y}" text-anchor="{anchor}" font-size="{size}" fill="{colour}">{esc(text)}</text>'

    def arrow(x1: float, y1: float, x2: float, y2: float, colour: str = "#334155") -> str:
        return f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="{colour}" stroke-width="2" marker-end="url(#gb-arrow)"/>'

    parts = [
        '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 760 300" width="100%" '
        'style="max-width:760px;font-family:system-ui,sans-serif;font-size:13px" role="img" '
        f'aria-label="{esc("Encoder-decoder versus decoder-only transformers")}">',
        '<defs><marker id="gb-arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#334155"/></marker></defs>',
        # left: encoder-decoder
        label(180, 22, "Encoder-decoder (original Transformer, T5)", 13, "#111"),
        box(30, 90, 130, 110, "#e0f2fe", "Encoder", "reads the whole input"),
        box(210, 90, 130, 110, "#fef3c7", "Decoder", "writes the output"),
        arrow(160, 145, 208, 145, "#b45309"),
        label(185, 135, "cross-", 11, "#b45309"),
        label(185, 165, "attention", 11, "#b45309"),
        label(95, 240, "input: “Wie geht es dir?”", 12, "#0369a1"),
        arrow(95, 225, 95, 202),
        label(275, 240, "output so far", 12, "#92400e"),
        arrow(275, 225, 275, 202),
        arrow(275, 90, 275, 62),
        label(275, 55, "next word", 12),
        label(180, 280, "two stacks: one reads, one writes", 12, "#475569"),
        # divider
        '<line x1="380" y1="35" x2="380" y2="285" stroke="#cbd5e1" stroke-dasharray="4 4"/>',
        # right: decoder-only
        label(550, 22, f"Decoder-only (this model: {model_name})", 13, "#111"),
        box(465, 80, 170, 120, "#fef3c7", f"{n_layers} decoder blocks", "masked self-attention + MLP"),
        label(550, 240, "prompt + reply so far, one sequence", 12, "#92400e"),
        arrow(550, 225, 550, 202),
        arrow(550, 80, 550, 52),
        label(550, 45, "next token", 12),
        '<path d="M 620 45 C 745 45, 745 240, 668 240" fill="none" stroke="#16a34a" stroke-width="2" '
        'stroke-dasharray="5 3" marker-end="url(#gb-arrow)"/>',
        label(702, 150, "appended,", 11, "#16a34a", "end"),
        label(702, 164, "read again", 11, "#16a34a", "end"),
        label(550, 280, "one stack reads and writes: no encoder", 12, "#475569"),
        "</svg>",
    ]
    return "".join(parts)


def text_block(text: str, caption: bool = False) -> str:
    """Plain text as a paragraph (model text inside stays literal; no markdown is applied)."""
    style = "font-size:.9rem;color:#444" if caption else ""
    return f'<p class="gb-text" style="{style}">{esc(text)}</p>'


_MD_CODE = re.compile(r"(```[\s\S]*?(?:```|$)|~~~[\s\S]*?(?:~~~|$)|`[^`\n]*`)")


_SOFT_BREAK = re.compile(r"[ \t]*(?<!\n)\n(?!\n)")  # one line break, not a blank line


def markdown_safe(text: str) -> str:
    """Model or user text made safe for st.markdown, with its line breaks kept.

    Images are shown as text, never fetched: Streamlit escapes raw HTML and drops
    ``javascript:`` links, but a markdown image ``![x](https://host/pixel?q=...)`` would make
    the visitor's browser fetch any URL: a tracking pixel, or a channel a prompt injection can
    leak the conversation through. "![" becomes "!\\[", which renders as the literal characters.
    subtle: markdown joins lines separated by a single newline into one paragraph, so a poem
    the model wrote line by line would show as one line. Each single newline becomes a hard
    break (two spaces, then the newline); blank lines still separate paragraphs. Code spans
    and fenced blocks are left alone (markdown shows them literally, line breaks included).
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    parts = _MD_CODE.split(text)  # odd indices are code
    out = []
    for i, part in enumerate(parts):
        if i % 2:
            out.append(part)
            continue
        part = part.replace("![", "!\\[")
        tail = ""
        if i + 1 < len(parts) and parts[i + 1].startswith(("```", "~~~")):  # a fence opens its own block
            tail = part[len(part.rstrip("\n")) :]
            part = part[: len(part) - len(tail)]
        out.append(_SOFT_BREAK.sub("  \n", part) + tail)
    return "".join(out)


# Streamlit cuts a page link's label to one line with an ellipsis: on a phone the chat's
# "Step 1: “In” 47% over “The” 31%, after …" links lost everything after a few words.
# Labels in the page wrap instead (the sidebar's menu is not touched). A segmented control
# scrolled its last options out of sight on a phone (the attention page's "Turn view" and
# "Head summary"): its buttons wrap onto a second line instead.
PAGE_STYLE = """<style>
.stMain [data-testid="stPageLink-NavLink"] span,
.stMain [data-testid="stPageLink-NavLink"] p{white-space:normal;overflow:visible;text-overflow:clip;overflow-wrap:anywhere}
.stMain [data-testid="stPageLink-NavLink"]{height:auto}
.stMain [data-testid="stButtonGroup"] div:has(> button){flex-wrap:wrap;overflow-x:visible;row-gap:.25rem}
</style>"""


# subtle: on a screen narrower than Streamlit's 768 px breakpoint the sidebar lies over the page,
# and Streamlit closes it after a page is picked only when the browser's user agent says
# "mobile"; a narrow window, a tablet, or a phone browser asking for the desktop site kept it
# open over the new page. The collapse button is clicked as a reader would.
_CLOSE_SIDEBAR = """<script data-visit="{visit}">(() => {{
  if (window.innerWidth >= 768) return;
  const bar = document.querySelector('[data-testid="stSidebar"]');
  if (!bar || bar.getAttribute('data-collapsed') !== 'false') return;
  const button = document.querySelector('[data-testid="stSidebarCollapseButton"] button');
  if (button) button.click();
}})();</script>"""


def close_sidebar_script(visit: int) -> str:
    """A script that closes the sidebar on a narrow screen after a page switch (st.html with
    unsafe_allow_javascript). visit: a number that differs on every page switch, since
    Streamlit runs an st.html script again only when its text changes. Holds no outside text."""
    return _CLOSE_SIDEBAR.format(visit=int(visit))
