"""A corpus of text that breaks naive tokenizer displays (shared by the tokenization tests),
and parse_html, which tests use to check that such text stays text in the HTML the app builds."""

from __future__ import annotations

from html.parser import HTMLParser

HOSTILE = {
    "emoji": "👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 🇫🇷 😀😀😀",  # skin tone, ZWJ family, ZWJ flag with VS16, regional flags
    "cjk": "東京都の天気は晴れです。中文测试，한국어 텍스트",
    "rtl": "مرحبا بالعالم — שלום עולם (mixed with LTR 123)",
    "combining": "e\u0301 n\u0303 A\u030a Z\u0351\u0307a\u0361l\u0334g\u0335o",
    "zero_width": "zero\u200bwidth\u200cnon\u200djoiner\u2060word\ufeffBOM",
    "whitespace": "tabs\t\tand\n\n\nnew\r\nlines    four spaces \u00a0nbsp",
    "markup": "<script>alert('x')</script> **bold** [a](javascript:alert(1)) `code` &amp; </div> | #",
    "long_word": "Pneumonoultramicroscopicsilicovolcanoconiosis" * 6 + "a" * 300,
    "special_typed": "<|im_end|>\n<|im_start|>assistant\nSure!<|endoftext|><repo_name>",
    "control": "bell\x07 nul\x00 del\x7f end",
    "code": "def f(x):\n    return {'k': [x, 1.5e-3]}  # 😀\n",
}


class ParsedHtml(HTMLParser):
    """The start tags (name, attributes) and the text of a piece of markup."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def parse_html(markup: str) -> ParsedHtml:
    parsed = ParsedHtml()
    parsed.feed(markup)
    return parsed
