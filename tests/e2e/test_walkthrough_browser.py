"""The walkthrough page in a real browser: one real reply, followed through all nine stages."""

import pytest

from tests.e2e.conftest import assert_no_exception, go_to, send_chat, wait_idle, whole_page

pytestmark = pytest.mark.browser


def test_walkthrough_page_for_a_real_reply(page):
    send_chat(page, "What is the capital of France?")
    go_to(page, "From prompt to reply")  # inside the app: a fresh URL would start a new session
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
    whole_page(page, "walkthrough-step-2")


def test_about_page(page):
    go_to(page, "How to read this app")
    assert_no_exception(page)
    assert page.get_by_text("locally on this computer's CPU", exact=False).count() == 1
    whole_page(page, "about")
