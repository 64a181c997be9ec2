"""Every page on a phone (390 x 844, touch) after a real chat, and views that survive a page visit.

On a phone nothing may push the page sideways: no element may run past the viewport's right
edge (a dataframe or a code block may be wider, because it scrolls itself), no link or number
may be cut with "…", the sidebar must close after a page is picked from it, and a touch screen
must reach what a mouse reaches by hovering (issue 18, findings 8 and 9).
"""

from __future__ import annotations

import pytest

from tests.e2e.conftest import (
    assert_no_exception,
    choose,
    go_to,
    open_view,
    quick_replies,
    screenshot,
    selectbox_text,
    send_and_wait,
    settle,
    wait_idle,
)

pytestmark = pytest.mark.browser

PHONE = {"width": 390, "height": 844}
PAGES = [
    ("Next-word candidates", "candidates"),
    ("Tokenization", "tokenization"),
    ("Embeddings", "embeddings"),
    ("Attention", "attention"),
    ("From prompt to reply", "walkthrough"),
    ("Encoder vs decoder", "encoder-decoder"),
    ("How to read this app", "about"),
]
ATTENTION_VIEWS = {
    "Model view": "model",
    "Head view": "head",
    "Per-token view": "token",
    "Turn view": "turns",
    "Head summary": "summary",
}

# The page's own sideways scroll; every visible element that runs past the viewport's right edge,
# except inside an element that scrolls sideways itself (a dataframe, a code block); and every
# page link or metric whose text is cut with an ellipsis.
OVERFLOW = """() => {
  const w = window.innerWidth, out = [], cut = [];
  const excused = (el) => {  // inside a sideways scroller, or a 1 px "visually hidden" clip (a slider's input)
    for (let p = el.parentElement; p && !p.classList.contains('stMain'); p = p.parentElement) {
      const o = getComputedStyle(p).overflowX, r = p.getBoundingClientRect();
      if ((o === 'auto' || o === 'scroll') && p.scrollWidth > p.clientWidth + 1) return true;
      if (o !== 'visible' && (r.width <= 2 || r.height <= 2)) return true;
    }
    return false;
  };
  for (const el of document.querySelectorAll('.stMain *')) {
    const r = el.getBoundingClientRect(), s = getComputedStyle(el);
    if (!r.width || !r.height || s.visibility === 'hidden' || s.display === 'none') continue;
    if (r.right > w + 1 && !excused(el)) {
      out.push(`${el.tagName.toLowerCase()}[${el.getAttribute('data-testid') || el.getAttribute('class')}]`
               + ` left ${Math.round(r.left)} width ${Math.round(r.width)}`);
    }
  }
  const texts = '.stMain [data-testid="stPageLink"] *, .stMain [data-testid="stMetricValue"] *';
  for (const el of document.querySelectorAll(texts)) {
    if (getComputedStyle(el).textOverflow === 'ellipsis' && el.scrollWidth > el.clientWidth + 1) {
      cut.push(el.innerText.slice(0, 80));
    }
  }
  const main = document.querySelector('.stMain');
  return {page: document.scrollingElement.scrollWidth, main: main.scrollWidth - main.clientWidth,
          viewport: w, wide: out.slice(0, 12), cut: cut};
}"""
SIDEBAR_OPEN = """() => { const s = document.querySelector('[data-testid="stSidebar"]');
  return !!s && s.getAttribute('data-collapsed') === 'false' && s.getBoundingClientRect().right > 10; }"""


def phone(browser, url: str):
    """A phone's browser: 390 x 844, touch, mobile viewport. Its user agent stays the desktop one,
    as with a phone browser asking for the desktop site: the app must not rely on it."""
    context = browser.new_context(viewport=PHONE, has_touch=True, is_mobile=True)
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(url)
    wait_idle(page)
    return context, page


def open_sidebar(page) -> None:
    if not page.evaluate(SIDEBAR_OPEN):
        page.locator('[data-testid="stExpandSidebarButton"]').first.click()
        page.wait_for_function(SIDEBAR_OPEN)
        page.wait_for_timeout(500)  # it slides in


def close_sidebar(page) -> None:
    page.locator('[data-testid="stSidebarCollapseButton"] button').first.click()
    page.wait_for_function(f"() => !({SIDEBAR_OPEN})()")


def phone_go_to(page, title: str, problems: list) -> None:
    """Open a page from the sidebar menu as a phone user does: open the menu, tap the page."""
    open_sidebar(page)
    go_to(page, title)
    page.wait_for_timeout(800)  # the sidebar slides out
    if page.evaluate(SIDEBAR_OPEN):
        problems.append(f"the sidebar stays open over {title!r} after navigating")
        close_sidebar(page)  # so that the rest of the pages can still be checked
    assert_no_exception(page)


def fits(page, name: str, problems: list) -> None:
    """Nothing runs past the right edge and no link is cut; the whole page is saved as phone-<name>.png."""
    page.wait_for_timeout(300)
    settle(page)  # charts size themselves to their container after drawing
    report = page.evaluate(OVERFLOW)
    # subtle: Streamlit scrolls an inner element (.stMain; its test id differs on the chat page,
    # which has a bottom bar), so the viewport grows to the page's height for the screenshot.
    height = page.evaluate("() => document.querySelector('.stMain').scrollHeight")
    page.set_viewport_size({"width": PHONE["width"], "height": int(height) + 100})
    page.wait_for_timeout(250)
    settle(page)
    screenshot(page, f"phone-{name}")
    page.set_viewport_size(PHONE)
    if report["page"] > PHONE["width"] or report["main"] > 0 or report["wide"] or report["cut"]:
        problems.append((name, report))


def tap_a_chip(page, problems: list) -> None:
    """A tap on a reply chip shows its top 5 inside the screen (a touch screen cannot hover)."""
    chip = page.locator("details.gb-chip").nth(3)
    chip.locator("summary").tap()
    pop = chip.locator(".gb-pop")
    pop.wait_for()
    box = pop.bounding_box()
    if "%" not in pop.inner_text() or box["x"] < 0 or box["x"] + box["width"] > PHONE["width"] + 1:
        problems.append(("the tapped chip's top 5", pop.inner_text(), box))


def test_every_page_fits_a_phone(browser, app_url):
    problems: list = []  # every page is visited and saved, then all problems are reported at once
    context, page = phone(browser, app_url)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    open_sidebar(page)
    quick_replies(page, 24)
    close_sidebar(page)  # it covers the chat input
    send_and_wait(page, "What is the capital of Australia?")
    send_and_wait(page, "Write a short poem about the ocean.")
    reply = page.locator('[data-testid="stChatMessage"]').last
    reply.locator('[data-testid="stCheckbox"], [data-testid="stToggle"]').filter(
        has_text="Explain"
    ).first.click()
    page.wait_for_timeout(300)
    wait_idle(page)
    page.locator(".gb-chip").first.wait_for()
    tap_a_chip(page, problems)
    fits(page, "chat-explain", problems)

    for title, name in PAGES:
        phone_go_to(page, title, problems)
        if title == "Attention":
            for view, slug in ATTENTION_VIEWS.items():
                open_view(page, view)
                fits(page, f"attention-{slug}", problems)
            continue
        if title == "Next-word candidates":  # the logit lens too: its grid was 650 px wide
            page.locator('[data-testid="stCheckbox"], [data-testid="stToggle"]').filter(
                has_text="logit lens"
            ).first.click()
            page.wait_for_timeout(300)
            wait_idle(page)
            page.get_by_text("Computed in").or_(page.get_by_text("Taken from the cache")).first.wait_for()
        fits(page, name, problems)
    phone_go_to(page, "Chat", problems)
    fits(page, "chat", problems)
    context.close()
    assert not problems, "\n".join(map(str, problems))
    assert not errors, errors


def _pick(page, label: str, option: str) -> None:
    """Choose a selectbox option by typing it, as with a keyboard (the list shows only some options)."""
    choose(
        page,
        page.locator('[data-testid="stSelectbox"]').filter(has_text=label).first,
        page.get_by_role("option", name=option, exact=True),
        typed=option,
    )


def _radio(page, text: str) -> None:
    page.locator('[data-testid="stRadio"] label').filter(has_text=text).first.click()
    page.wait_for_timeout(300)
    wait_idle(page)


def _checked(page, text: str) -> bool:
    return (
        page.locator('[data-testid="stRadio"] label')
        .filter(has_text=text)
        .first.locator("input")
        .is_checked()
    )


def test_layer_head_and_whose_attention_survive_a_visit_to_another_page(page):
    """Streamlit drops the state of a widget a run does not draw, so a visit to another page reset
    the attention page (layer 17 came back as 16); it keeps copies now (pages/common.py). On a
    laptop, the Turn view of a long reply stays in its column (it overflowed into the explanation)."""
    quick_replies(page, 128)
    send_and_wait(page, "Write a long poem about the ocean.")
    go_to(page, "Attention")
    page.locator('[data-testid="stVegaLiteChart"]').first.wait_for()
    _pick(page, "Layer", "17")
    _pick(page, "Head", "3")
    open_view(page, "Turn view")
    _radio(page, "Head 3 of layer 17")
    open_view(page, "Per-token view")
    _radio(page, "Mean of layer 17's heads")
    assert_no_exception(page)

    go_to(page, "Tokenization")
    page.locator(".gb-chip").first.wait_for()
    go_to(page, "Attention")  # the sidebar's link: no layer, head or view in it
    page.locator(".gb-chip.chosen").first.wait_for()
    assert_no_exception(page)
    layer = selectbox_text(page, "Layer").split()
    assert "17" in layer and "16" not in layer
    assert "3" in selectbox_text(page, "Head").split()
    active = page.locator('[data-testid="stButtonGroup"] button[aria-checked="true"]').first
    assert "Per-token view" in active.inner_text()
    assert _checked(page, "Mean of layer 17's heads")
    open_view(page, "Turn view")
    assert _checked(page, "Head 3 of layer 17")
    page.locator(
        '[data-testid="stVegaLiteChart"] svg, [data-testid="stVegaLiteChart"] canvas'
    ).first.wait_for()
    page.wait_for_timeout(1500)  # the chart sizes itself to its column after drawing
    chart = page.locator('[data-testid="stVegaLiteChart"]').first.bounding_box()
    text = page.get_by_text("What attention is.").first.bounding_box()  # the explanation column
    assert chart["x"] + chart["width"] <= text["x"], (chart, text)
    screenshot(page, "attention-kept-after-a-visit")
