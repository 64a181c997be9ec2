"""Explain mode and the candidates page in headless Chromium: chips, links, branch, lens, import,
and a hostile reply that must stay literal text."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from playwright.sync_api import expect

from core.conversation import Message, build_prompt
from core.export import conversation_json
from core.generation import generate, new_trace
from core.settings import SamplingSettings
from tests.e2e.conftest import (
    SHOTS,
    assert_no_exception,
    go_to,
    open_expander,
    quick_replies,
    screenshot,
    send_and_wait,
    send_chat,
    wait_idle,
)

pytestmark = pytest.mark.browser

HOSTILE = (
    "<script>window.__pwned=1</script> and "
    '<img src=x onerror="window.__pwned=1"> then '
    "[x](javascript:window.__pwned=1) and </div></span> done"
)
TIMINGS = SHOTS.parent / "timings.txt"


def _conversation_file(lm, path: Path, user: str, reply_ids: list[int], tamper: str | None = None) -> Path:
    """A saved conversation whose reply is `reply_ids`, forced through the real model so every
    step records the model's real distribution. tamper: replaces the last step's text."""
    history = [Message("system", "You are a helpful assistant."), Message("user", user)]
    prompt = build_prompt(lm.tokenizer, history, budget=2048)
    settings = SamplingSettings(temperature=0, max_new_tokens=len(reply_ids))
    trace = generate(lm, new_trace(lm, prompt.ids, prompt.spans, settings), forced=reply_ids)
    if tamper is not None:
        trace.steps[-1].text = tamper
    history.append(Message("assistant", trace.text, trace=trace))
    path.write_text(conversation_json(history, lm.name), encoding="utf-8")
    return path


def _uploader(page):
    """The import widget on the candidates page (not the chat sidebar's copy)."""
    box = page.locator('[data-testid="stExpander"]', has_text="load a saved conversation").last
    return box.locator('[data-testid="stFileUploaderDropzoneInput"]')


def _import(page, path: Path) -> None:
    """Load a file through the transfer widget on the candidates page."""
    go_to(page, "Next-word candidates")
    page.get_by_role("heading", name="Next-word candidates").wait_for()
    _uploader(page).set_input_files(str(path))
    page.get_by_text(f"{path.name} was not loaded").or_(page.get_by_text(f"Loaded {path.name}")).wait_for()
    wait_idle(page)


def _explain_first_reply(page) -> None:
    reply = page.locator('[data-testid="stChatMessage"]').nth(1)
    reply.locator('[data-testid="stCheckbox"], [data-testid="stToggle"]').filter(
        has_text="Explain"
    ).first.click()
    page.wait_for_timeout(300)
    wait_idle(page)


def test_explain_hover_candidates_branch_and_lens(page):
    send_chat(page, "What is the capital of France?")
    _explain_first_reply(page)
    chip = page.locator(".gb-chip").first
    chip.wait_for()
    chip.hover()
    title = chip.get_attribute("title")
    assert title.startswith("step 1: picked") and "%" in title and "◀ chosen" in title
    assert page.get_by_text("over 90% sure of").count() >= 1
    screenshot(page, "explain-chips")

    # an uncertain-moment link opens the candidates page at that step
    link = page.locator('[data-testid="stPageLink"] a', has_text="Step ").first
    step_no = int(link.inner_text().split(":")[0].split()[-1])
    link.click()
    page.wait_for_timeout(500)
    wait_idle(page)
    assert "step=" in page.url and "reply=" in page.url
    assert page.get_by_role("heading", name="Next-word candidates").count() == 1
    slider = page.locator('[data-testid="stSlider"]').first
    # the link's "Step 17" opens the page at the step it shows as 17
    expect(slider.locator('[data-testid="stSliderThumbValue"]')).to_have_text(str(step_no), timeout=60_000)
    assert_no_exception(page)
    screenshot(page, "candidates-step")

    page.get_by_role("button", name="Branch here").click()
    page.wait_for_timeout(500)
    wait_idle(page, 300_000)
    assert_no_exception(page)
    page.get_by_text("they diverge at step").wait_for(timeout=300_000)
    assert page.get_by_text("they diverge at step").count() == 1
    screenshot(page, "candidates-branch")

    page.get_by_text("Compute the logit lens at this step").click()
    page.wait_for_timeout(300)
    wait_idle(page)
    page.get_by_text("Computed in").wait_for(timeout=300_000)
    assert_no_exception(page)
    screenshot(page, "candidates-lens")

    go_to(page, "Chat")
    page.get_by_text("Other takes of this reply (1)").wait_for()
    assert_no_exception(page)


def test_a_chip_opens_why_this_word_on_the_heat_text(page):
    """Issue 17: the learner taps "Paris" in the Explain panel and follows its link."""
    quick_replies(page, 16)
    send_and_wait(page, "What is the capital of France?")
    _explain_first_reply(page)
    chip = page.locator("details.gb-chip", has_text="Paris").first
    chip.locator("summary").click()
    link = chip.locator("a.gb-more")
    expect(link).to_be_visible()
    assert "reply=" in link.get_attribute("href") and "c=" in link.get_attribute("href")
    screenshot(page, "explain-chip-why-link")
    link.click()
    page.get_by_role("heading", name="Why this word?").wait_for()
    wait_idle(page)
    heading = page.get_by_role("heading", name="Paris")  # "Step N: “·Paris”": the chip's own step
    heading.wait_for(timeout=120_000)
    page.get_by_text("pushed towards it").first.wait_for()
    heat = page.locator(".gb-chips").last
    assert "France" in heat.inner_text() and "capital" in heat.inner_text()
    assert page.get_by_text("By gradient × input:").count() == 1  # the shares per part
    assert_no_exception(page)
    screenshot(page, "why-from-chip")


def test_import_rejects_bad_file_then_hostile_reply_stays_literal(page, lm, tmp_path):
    bad = tmp_path / "other-model.json"
    good = _conversation_file(
        lm,
        tmp_path / "hostile.json",
        "Say something <b>bold</b> [y](javascript:window.__pwned=1)",
        lm.tokenizer(HOSTILE, add_special_tokens=False)["input_ids"],
        tamper='<img src=x onerror="window.__pwned=1"></div>',
    )
    bad.write_text(good.read_text(encoding="utf-8").replace(lm.name, "some-other-model"), encoding="utf-8")

    _import(page, bad)
    page.get_by_text("was not loaded").wait_for()
    assert page.get_by_text("There is no reply to explain yet").count() == 1  # nothing half-loaded

    _uploader(page).set_input_files(str(good))
    page.wait_for_timeout(800)
    wait_idle(page)
    page.get_by_text("Loaded hostile.json").wait_for()
    wait_idle(page)
    assert_no_exception(page)
    screenshot(page, "hostile-candidates")

    go_to(page, "Chat")
    _explain_first_reply(page)
    assert_no_exception(page)
    screenshot(page, "hostile-explain")
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert page.locator('img[src="x"]').count() == 0
    assert page.locator('a[href^="javascript"]').count() == 0
    body = page.locator("body").inner_text()
    assert "<script>window.__pwned=1</script>" in body  # the reply text, literal
    assert "<script>window.__pwned=1</script>".replace(" ", "·") in body.replace(" ", "·")
    chips = "".join(page.locator(".gb-chip").all_inner_texts())
    assert "<script>window.__pwned=1</script>" in chips and "</div></span>" in chips
    assert page.evaluate("typeof window.__pwned") == "undefined"


@pytest.mark.parametrize("n_tokens", [200])
def test_timing_for_a_long_reply(page, lm, tmp_path, n_tokens):
    story = " ".join(f"Day {i}: the dragon flew over the hills and counted {i * 7} sheep." for i in range(60))
    ids = lm.tokenizer(story, add_special_tokens=False)["input_ids"][:n_tokens]
    path = _conversation_file(lm, tmp_path / "long.json", "Tell me a long story.", ids)
    _import(page, path)
    go_to(page, "Chat")
    start = time.perf_counter()
    go_to(page, "Next-word candidates")
    page_s = time.perf_counter() - start
    assert page.get_by_role("heading", name="Next-word candidates").count() == 1
    assert_no_exception(page)
    # the last step, where the lens reads the whole 200-token context: click its token
    box = open_expander(page, page.locator('[data-testid="stExpander"]', has_text="Click a token"))
    pills = box.locator("button")
    pills.last.wait_for()
    assert pills.count() == n_tokens
    thumb = page.locator('[data-testid="stSlider"]').first.locator('[data-testid="stSliderThumbValue"]')
    # "·flew" at step 6 comes back every sentence: the click must land on this one, not the last
    assert lm.tokenizer.decode(ids[6]) == " flew" and ids.count(ids[6]) > 1
    pills.nth(6).click()
    expect(thumb).to_have_text("7", timeout=60_000)  # steps are numbered from 1 on the page
    wait_idle(page)
    pills.last.click()
    page.wait_for_timeout(300)
    wait_idle(page)
    expect(thumb).to_have_text(str(n_tokens), timeout=60_000)
    start = time.perf_counter()
    page.get_by_text("Compute the logit lens at this step").click()
    page.wait_for_timeout(200)
    wait_idle(page)
    page.get_by_text("Computed in").wait_for(timeout=300_000)
    lens_s = time.perf_counter() - start
    screenshot(page, "candidates-200-tokens-lens")

    # clicking the whole-reply chart selects the nearest step
    chart = page.locator('[data-testid="stVegaLiteChart"]').nth(2)
    chart.scroll_into_view_if_needed()
    box = chart.bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.4)
    expect(thumb).not_to_have_text(str(n_tokens), timeout=60_000)
    wait_idle(page)
    screenshot(page, "candidates-200-tokens-chart-click")
    picked = int(thumb.inner_text())
    assert 10 < picked < n_tokens - 10, picked
    assert_no_exception(page)
    TIMINGS.parent.mkdir(parents=True, exist_ok=True)
    with TIMINGS.open("a") as f:
        f.write(f"{n_tokens}-token reply: candidates page {page_s:.2f} s, logit lens {lens_s:.2f} s\n")
    assert page_s < 60 and lens_s < 60
