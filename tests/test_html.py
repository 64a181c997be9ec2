"""Escaping: a hostile reply shows as literal text in the chips, hover titles and summary."""

from __future__ import annotations

import pytest
from markdown_it import MarkdownIt

from core.conversation import Message
from core.explain.candidates import reply_chips
from core.explain.summary import summarize
from core.generation import generate, new_trace
from core.html import chips, esc, markdown_safe, probability_legend, text_block
from core.settings import SamplingSettings
from core.tokens import readable
from tests.conftest import make_trace
from tests.hostile_text import parse_html

HOSTILE = [
    "<script>window.__pwned=1</script>",
    '<img src=x onerror="window.__pwned=1">',
    "[x](javascript:window.__pwned=1)",
    "</div></span></a><b>bold?</b>",
    "<svg/onload=alert(1)>",
    '" onmouseover="window.__pwned=1" x="',
    "<a href='javascript:alert(1)'>click</a>",
    "&lt;already escaped&gt; & <!-- comment -->",
]


def _forced_trace(lm, text: str):
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    base = make_trace(
        lm, [Message("system", "x"), Message("user", "y")], SamplingSettings(0, max_new_tokens=1)
    )
    trace = new_trace(
        lm, base.prompt_ids, base.spans, SamplingSettings(temperature=0, max_new_tokens=len(ids))
    )
    return generate(lm, trace, forced=ids)


@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_reply_stays_literal_in_chips(lm, hostile):
    trace = _forced_trace(lm, hostile)
    assert trace.text == hostile
    markup = chips(reply_chips(lm.tokenizer, trace, marked=1), probability_legend())
    parsed = parse_html(markup)
    allowed = {"style", "div", "span"}
    assert {t for t, _ in parsed.tags} <= allowed, parsed.tags
    for _, attrs in parsed.tags:
        assert not any(k.startswith("on") or k == "href" for k in attrs)
    # every chip's literal text is in the page text, exactly (spaces shown as ·)
    shown = "".join(parsed.text)
    for tid in trace.output_ids:
        assert readable(lm.tokenizer, tid) in shown
    assert hostile.replace(" ", "·").replace("\n", "↵") in shown
    # the hover titles hold the top-5 text, escaped into the attribute
    assert all(
        "title" in attrs for t, attrs in parsed.tags if t == "span" and "gb-chip" in attrs.get("class", "")
    )
    # the summary quotes model text; as a text block it stays literal too
    block = parse_html(text_block(summarize(lm.tokenizer, trace)))
    assert [t for t, _ in block.tags] == ["p"]


def test_esc_covers_quotes_and_angle_brackets():
    assert esc('<a href="x">\'') == "&lt;a href=&quot;x&quot;&gt;&#x27;"


# -- the chat keeps the model's line breaks (markdown_safe) -----------------------------------
def _render(markdown: str) -> str:
    """CommonMark with GFM tables and raw HTML escaped, as st.markdown renders it."""
    return MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)


POEM_TEXT = "The ocean is wide,\nA place where the sea meets the sky,\n\nThe waves roll in,\nAnd out again."


def test_a_real_poem_keeps_its_lines(lm):
    """The model's tokens hold the line breaks (↵); the rendered chat message must show them."""
    trace = _forced_trace(lm, POEM_TEXT)
    assert trace.text == POEM_TEXT and any(readable(lm.tokenizer, t) == "↵" for t in trace.output_ids)
    rendered = _render(markdown_safe(trace.text))
    assert rendered.count("<br />") == 2  # the two single line breaks; the blank line ends a paragraph
    assert rendered.count("<p>") == 2
    for line in POEM_TEXT.splitlines():
        assert line in rendered


BREAKS = [
    ("a\nb", "a  \nb"),
    ("a\n\nb", "a\n\nb"),  # a paragraph break stays one
    ("a   \nb", "a  \nb"),  # trailing spaces are not doubled up
    ("a\r\nb", "a  \nb"),
    ("```\nx = 1\ny = 2\n```\nafter", "```\nx = 1\ny = 2\n```  \nafter"),  # code is left alone
    ("before\n```\nx\n```", "before\n```\nx\n```"),  # the line before a fence is left alone
    ("see `a\\b`\nnext", "see `a\\b`  \nnext"),
    ("![x](https://evil/p?q=1)\nline", "!\\[x](https://evil/p?q=1)  \nline"),
]


def test_markdown_safe_turns_single_newlines_into_hard_breaks():
    assert [markdown_safe(text) for text, _ in BREAKS] == [want for _, want in BREAKS]


def test_line_breaks_add_no_markup_a_reply_could_abuse():
    hostile = "<script>x</script>\n![p](https://evil/pixel)\n[l](javascript:alert(1))"
    rendered = _render(markdown_safe(hostile))
    assert "<img" not in rendered and "<script" not in rendered
    assert rendered.count("<br />") == 2
