"""The walkthrough page in a real browser: one real reply, followed through all nine stages."""

from tests.e2e.conftest import assert_no_exception, screenshot, send_chat, wait_idle


def _open(page, title: str) -> None:
    """Navigate inside the app (a fresh URL would start a new session and lose the chat)."""
    page.locator('[data-testid="stSidebarNav"] a', has_text=title).first.click()
    page.wait_for_timeout(500)
    wait_idle(page)


def _whole_page(page, name: str) -> None:
    """Screenshot the whole page. subtle: Streamlit scrolls an inner element, not the window,
    so a plain full-page screenshot stops at the viewport; grow the viewport to fit instead."""
    page.wait_for_timeout(2000)  # charts draw after the script has finished
    height = page.evaluate("() => document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
    page.set_viewport_size({"width": 1400, "height": int(height) + 100})
    page.wait_for_timeout(1500)
    screenshot(page, name)


def test_walkthrough_page_for_a_real_reply(page):
    send_chat(page, "What is the capital of France?")
    _open(page, "From prompt to reply")
    assert_no_exception(page)
    for stage in ("1. Text → tokens", "5. Attention at this step", "9. Repeat", "Further reading"):
        assert page.get_by_text(stage, exact=True).count() == 1, stage
    page.get_by_role("button", name="Next step ▶").click()
    page.wait_for_timeout(500)
    wait_idle(page)
    assert "step=1" in page.url
    assert page.locator('[data-testid="stVegaLiteChart"]').count() >= 4  # strip, layers, logits, temperature
    assert page.locator('[data-testid="stImage"] img').count() == 1  # the architecture diagram
    assert page.locator(".gb-chip.marked").count() >= 2  # the current position, stages 1 and 5
    assert_no_exception(page)
    _whole_page(page, "walkthrough-step-2")


def test_about_page(page):
    _open(page, "How to read this app")
    assert_no_exception(page)
    assert page.get_by_text("locally on this computer's CPU", exact=False).count() == 1
    _whole_page(page, "about")
