"""The attention page in a real browser, after a real two-turn chat: model, head and per-token views."""

from tests.e2e.conftest import assert_no_exception, screenshot, send_chat, wait_idle


def open_view(page, name: str) -> None:
    page.locator('[data-testid="stButtonGroup"] button', has_text=name).first.click()
    page.wait_for_timeout(300)
    wait_idle(page)


def test_attention_views_for_a_two_turn_chat(page):
    page.set_viewport_size({"width": 1400, "height": 1900})  # the page scrolls inside; show it all
    send_chat(page, "What is the capital of France?")
    send_chat(page, "And of Italy?")
    # Sidebar navigation keeps the session (and so the conversation); a new URL would not.
    page.locator('[data-testid="stSidebarNav"] a', has_text="Attention").click()
    page.wait_for_timeout(500)
    wait_idle(page)
    assert_no_exception(page)
    chart = page.locator('[data-testid="stVegaLiteChart"]').first
    chart.wait_for()
    assert page.get_by_text("Click a square to open that head").count() == 1
    # After chatting, the page reads the chat's own KV cache instead of re-running the model.
    assert page.get_by_text("from the keys and values the chat kept while writing").count() == 1
    screenshot(page, "attention-model-view")

    # Click one head's thumbnail: the page opens it in the head view.
    # The grid has a one-cell gap between heads, so try a few spots inside the plot.
    box = page.locator('[data-testid="stVegaLiteChart"] canvas').first.bounding_box()
    active = page.locator('[data-testid="stButtonGroup"] button[aria-checked="true"]')
    for fx, fy in [(0.6, 0.35), (0.62, 0.37), (0.5, 0.5), (0.7, 0.6)]:
        page.mouse.click(box["x"] + box["width"] * fx, box["y"] + box["height"] * fy)
        page.wait_for_timeout(800)
        wait_idle(page)
        if "Head view" in active.first.inner_text():
            break
    assert_no_exception(page)
    assert "Head view" in active.first.inner_text()
    assert page.locator('[data-testid="stVegaLiteChart"]').count() == 1
    screenshot(page, "attention-head-view")

    # Every row of the sequence: a pass over the whole context, run on demand.
    page.locator('[data-testid="stRadio"] label', has_text="Whole sequence").click()
    page.get_by_text("Query rows (a window of 48)").wait_for()  # the context is longer than 48 rows
    wait_idle(page)
    assert_no_exception(page)
    assert page.locator('[data-testid="stVegaLiteChart"]').count() == 1
    screenshot(page, "attention-head-view-whole-sequence")

    open_view(page, "Per-token view")
    page.locator(".gb-chip.chosen").first.wait_for()  # the rerun may start after the click returns
    assert_no_exception(page)
    assert page.locator(".gb-chip.chosen").count() == 1
    assert page.locator(".gb-chip").count() > 20
    page.locator('[data-testid="stDataFrame"] canvas').first.wait_for()  # the top-10 table is drawn
    screenshot(page, "attention-per-token-view")

    open_view(page, "Turn view")
    page.get_by_text("Where each reply token's attention went").wait_for()
    assert_no_exception(page)
    screenshot(page, "attention-turn-view")
