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
    """

    text: str
    title: str = ""
    background: str | None = None
    sub: str | None = None
    css: tuple[str, ...] = ()
    href: str | None = None


STYLE = """
<style>
.gb-chips{line-height:2.1;font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:0.9rem;word-break:break-word}
.gb-chip{display:inline-block;padding:0 .3em;margin:1px 1px;border-radius:4px;border:1px solid rgba(0,0,0,.12);white-space:pre;color:#111;text-decoration:none}
.gb-chip .gb-sub{display:block;font-size:.65rem;color:#555;line-height:1;text-align:center}
.gb-chip.special{background:#334155!important;color:#f8fafc;font-weight:600}
.gb-chip.bytes{font-style:italic;border-style:dashed}
.gb-chip.chosen{outline:2px solid #111}
.gb-chip.marked{outline:3px solid #e11d48}
.gb-legend{font-size:.8rem;color:#444;margin:.2em 0 .6em 0}
.gb-legend span{display:inline-block;padding:0 .4em;margin-right:.3em;border-radius:3px;color:#111}
</style>
"""


def _href(href: str | None) -> str | None:
    if href is None:
        return None
    # Only same-app links: a query string or a relative page path, never a scheme.
    if not (href.startswith("?") or re.match(r"^[A-Za-z0-9_\-/]+(\?[^\s]*)?$", href)):
        raise ValueError(f"only relative links are allowed: {href!r}")
    return quote(href, safe="/?=&_-.%")


def chip(c: Chip) -> str:
    classes = " ".join(["gb-chip", *[k for k in c.css if _CLASS.match(k)]])
    style = f' style="background:{safe_colour(c.background)}"' if c.background else ""
    title = f' title="{esc(c.title)}"' if c.title else ""
    sub = f'<span class="gb-sub">{esc(c.sub)}</span>' if c.sub is not None else ""
    body = f"{esc(c.text)}{sub}"
    href = _href(c.href)
    if href is not None:
        return f'<a class="{classes}" href="{esc(href)}" target="_self"{style}{title}>{body}</a>'
    return f'<span class="{classes}"{style}{title}>{body}</span>'


def chips(items: list[Chip], legend: list[tuple[str, str]] | None = None) -> str:
    """A row of chips, with an optional legend of (colour, label) pairs above it."""
    parts = [STYLE]
    if legend:
        keys = "".join(
            f'<span style="background:{safe_colour(col)}">{esc(label)}</span>' for col, label in legend
        )
        parts.append(f'<div class="gb-legend">{keys}</div>')
    parts.append('<div class="gb-chips">' + "".join(chip(c) for c in items) + "</div>")
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
