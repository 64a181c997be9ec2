"""The encoder-vs-decoder page in a real browser after a real chat: at 1400 px and on a 390 x 844 phone."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import (
    assert_no_exception,
    go_to,
    quick_replies,
    selectbox_text,
    send_and_wait,
    wait_idle,
    whole_page,
)

pytestmark = pytest.mark.browser

CHARTS = '[data-testid="stVegaLiteChart"]'
PHONE = {"width": 390, "height": 844}
LONG = (
    "Although the committee, which had met every Tuesday since 1987, insisted that the bridge's "
    "unexpectedly high maintenance costs were nobody's fault, the auditors' report suggested otherwise; "
    "it blamed unrealistic forecasts and a contractor's optimism."
)
# Every visible element whose box is wider than the viewport or runs past its right edge.
TOO_WIDE = """() => {
  const w = window.innerWidth, out = [];
  for (const el of document.querySelectorAll('body *')) {
    const r = el.getBoundingClientRect(), s = getComputedStyle(el);
    if (!r.width || !r.height || s.visibility === 'hidden' || s.display === 'none') continue;
    if (r.width > w + 1 || r.right > w + 1) {
      out.push(`${el.tagName.toLowerCase()}[${el.getAttribute('data-testid') || el.className}]`
               + ` left ${Math.round(r.left)} width ${Math.round(r.width)}`);
    }
  }
  return {page: document.documentElement.scrollWidth, viewport: w, wide: out.slice(0, 15)};
}"""


def _fits(page) -> None:
    page.wait_for_timeout(1500)  # the charts size themselves to the container after drawing
    report = page.evaluate(TOO_WIDE)
    assert report["page"] <= PHONE["width"] and not report["wide"], report


def _both_charts(page) -> None:
    assert_no_exception(page)
    page.locator(CHARTS).nth(1).locator("svg, canvas").first.wait_for()
    assert page.locator(CHARTS).count() == 2
    assert page.get_by_text("The square and the triangle").count() == 1


def test_square_beside_triangle_on_a_laptop_and_a_phone(browser, app_url):
    desktop = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = desktop.new_page()
    page.set_default_timeout(60_000)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(app_url)
    wait_idle(page)
    quick_replies(page, 8)
    send_and_wait(page, "What is the capital of Australia?")
    go_to(page, "Encoder vs decoder")
    _both_charts(page)
    # The picker opened on the chat's last message, the reply.
    assert "Reply 1" in selectbox_text(page, "Message")
    captions = page.locator('[data-testid="stCaptionContainer"]').all_inner_texts()
    assert any("(above the diagonal): 0.0%" in c for c in captions)  # the decoder's triangle
    whole_page(page, "encoder-decoder-1400", 1400)

    # The same conversation on a phone: the owner cookie comes along, the URL names the conversation.
    phone = browser.new_context(
        viewport=PHONE, storage_state=desktop.storage_state(), has_touch=True, is_mobile=True
    )
    small = phone.new_page()
    small.set_default_timeout(60_000)
    small.on("pageerror", lambda e: errors.append(str(e)))
    small.goto(page.url)
    wait_idle(small)
    _both_charts(small)
    small.wait_for_timeout(1500)
    _fits(small)
    whole_page(small, "encoder-decoder-390", PHONE["width"])

    # The widest case: a typed sentence at the length limit, its tokens crowded into 390 px.
    small.set_viewport_size(PHONE)
    small.locator('[data-testid="stButtonGroup"] button').filter(has_text="Your own sentence").first.click()
    small.wait_for_timeout(300)
    wait_idle(small)
    box = small.locator('[data-testid="stTextArea"] textarea')
    box.fill(LONG)
    box.press("Control+Enter")  # a text area applies its value on Ctrl+Enter (or on blur)
    small.wait_for_timeout(500)
    wait_idle(small)
    _both_charts(small)
    _fits(small)
    whole_page(small, "encoder-decoder-390-long", PHONE["width"])
    assert not errors, errors
    phone.close()
    desktop.close()
