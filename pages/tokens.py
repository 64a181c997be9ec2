"""Tokenization: what the model actually reads, token by token, and why that many tokens."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.cache import BoundedCache
from core.charts import tokens as charts
from core.conversation import PromptTooLong, reply_number
from core.explain import bpe, tokenization
from core.html import Chip, chips
from core.models import ModelUnavailable
from core.tokens import KIND_NOTES, tokenizer_kind
from pages import common, links

MAX_CHIPS = 1500  # beyond this the browser slows down; the table still has every token
SOURCES = ("A message", "The whole prompt of a reply", "Free text")
SOURCE_NAMES = dict(zip(("message", "reply", "text"), SOURCES, strict=True))  # URL: ?source=
SOURCE, VIEW = "tokens.source", "tokens.view"

lm = common.chat_model(full=False)
tok = lm.tokenizer
common.model_badge(lm)


@st.cache_resource(show_spinner=False)
def _tables() -> BoundedCache[pd.DataFrame]:
    """Token tables of typed text per (model, text). subtle: Streamlit runs a page file as a new
    module on every rerun, so a module-level cache here would start empty every time."""
    return BoundedCache(16)


@st.cache_resource(show_spinner="Loading the WordPiece tokenizer…")
def wordpiece():
    return tokenization.load_wordpiece_tokenizer()


def pick_message() -> tuple[pd.DataFrame, str]:
    """(token rows of one conversation message, the message text they must decode to)."""
    history = common.messages()
    if len(history) < 2:
        st.info("The conversation has no messages yet: chat first, or try **Free text**.")
        st.page_link("pages/chat.py", label="Go to the chat", icon="💬")
        st.stop()

    def label(i: int) -> str:  # a reply is "Reply 3", as every other page names it
        preview = history[i].content.strip().replace("\n", " ")
        role = history[i].role
        name = f"Reply {reply_number(history, i)}" if role == "assistant" else f"{i} · {role}"
        return f"{name}: {preview[:60]}{'…' if len(preview) > 60 else ''}"

    index = st.selectbox(
        "Message", range(len(history)), index=len(history) - 1, format_func=label, key="tokens.message"
    )
    found = tokenization.message_tokens(tok, history, index)
    st.caption(found.source)
    return found.table, history[index].content


def pick_source() -> tuple[pd.DataFrame, str | None]:
    """(all rows to show, the rows that are text, the text they must decode to exactly)."""
    links.url_value("source", SOURCE, SOURCE_NAMES.get)
    # a link from a reply (?reply= and no source) opens its whole prompt
    st.session_state.setdefault(SOURCE, SOURCES[1] if st.query_params.get("reply") else SOURCES[0])
    source = st.radio("Show the tokens of", SOURCES, horizontal=True, key=SOURCE)
    links.set_url(source={label: name for name, label in SOURCE_NAMES.items()}[source])
    if source == SOURCES[2]:
        text = st.text_area(
            "Free text",
            "Tokenizers don't split at spaces: unbelievable 😀👍🏽",
            max_chars=20_000,
            key="tokens.free_text",
        )
        table = _tables().get_or_compute(
            (lm.source, "text", text), lambda: tokenization.text_table(tok, text)
        )
        return table, text
    if source == SOURCES[1]:
        ref = common.reply_picker("tokens.reply")
        if ref is None:
            st.stop()
        trace = ref.message.trace
        st.caption(
            f"Exactly what the model received ({len(trace.prompt_ids):,} prompt tokens, chat template "
            f"included) and the {len(trace.steps):,} tokens it wrote."
        )
        table = tokenization.trace_table(common.model_for(trace, full=False).tokenizer, trace)
        return table, None
    table, expected = pick_message()
    return table, expected


def show_tokens(table: pd.DataFrame, expected: str | None) -> str:
    """Counts, the round-trip check and the chips. Returns the text the tokens stand for."""
    text_rows = tokenization.text_rows(table)
    text = tokenization.table_text(text_rows)
    cols = st.columns(4)
    cols[0].metric("Tokens", f"{len(table):,}")
    cols[1].metric("Template / special tokens", f"{len(table) - len(text_rows):,}")  # as counts() does
    cols[2].metric("Characters of text", f"{len(text):,}")
    cols[3].metric(
        "Characters per text token", f"{len(text) / len(text_rows):.2f}" if len(text_rows) else "–"
    )
    if expected is not None:
        if tokenization.joined_bytes(tok, text_rows["id"].tolist()) == expected.encode("utf-8"):
            st.success("Joining the tokens' bytes gives back the text exactly, byte for byte.", icon="✅")
        else:
            st.warning(
                "The model read a different text from the one the message shows now: it was cut to fit "
                "the context budget, or (the system prompt) edited since."
            )
    shown = table.head(MAX_CHIPS)
    st.html(chips(tokenization.chips_for(shown), legend=_legend(), tap=True))
    if len(table) > MAX_CHIPS:
        st.caption(f"The first {MAX_CHIPS:,} of {len(table):,} tokens are drawn; the table has them all.")
    return text


def _legend() -> list[tuple[str, str]]:
    return [
        (tokenization.CHIP_COLOURS[0], "a token"),
        (tokenization.CHIP_COLOURS[1], "its neighbour (colours alternate)"),
        ("#94a3b8", "special token (dark badge)"),
        ("transparent", "dashed: part of one character, shown as bytes · = space ↵ = newline"),
    ]


def table_tab(table: pd.DataFrame) -> None:
    st.dataframe(table, hide_index=True, width="stretch", height=360)
    st.download_button(
        "Download the table (CSV)",
        table.to_csv(index=False).encode("utf-8"),
        "tokens.csv",
        "text/csv",
        key="tokens.download",
    )


def counts_tab(table: pd.DataFrame) -> None:
    st.markdown("**Tokens per message** (text tokens are the message itself; the rest is the chat template)")
    st.dataframe(tokenization.counts(table), hide_index=True, width="stretch")
    history = common.messages()
    latest = next((m.trace for m in reversed(history) if m.trace is not None), None)
    if latest is not None:
        st.markdown(
            "**The whole conversation**, as the latest reply read it (its prompt) and wrote it "
            "(its tokens). The last row totals it."
        )
        st.dataframe(
            tokenization.counts(tokenization.trace_table(tok, latest)), hide_index=True, width="stretch"
        )
    if not any(m.role == "user" for m in history):
        return
    reserve = common.settings().max_new_tokens
    try:
        usage = tokenization.budget_usage(tok, history, common.context_budget(), reserve)
    except (PromptTooLong, ValueError) as exc:
        st.warning(str(exc))
        return
    st.markdown(
        f"**Context budget.** The next prompt (the conversation as the model will re-read it, with "
        f"the template that opens the next reply) takes **{usage.used:,}** of {usage.budget:,} "
        f"tokens; {usage.reserve:,} are kept free for the reply, and {usage.room:,} are left."
    )
    st.altair_chart(charts.budget_bar(usage.segments, usage.budget), width="stretch")
    if usage.dropped_turns:
        st.caption(f"Already left out: the oldest {usage.dropped_turns} turn(s).")
    if usage.next_to_go:
        st.caption(f"When the conversation grows past the budget, **{usage.next_to_go}** is left out first.")
    for note in usage.notices:
        st.caption(f"ℹ️ {note}")


def compare_tab(text: str) -> None:
    kind = tokenizer_kind(tok)
    st.markdown(
        "The sentence-embedding model (all-MiniLM-L6-v2) uses **WordPiece**: it lower-cases, splits at "
        "spaces and punctuation first, marks a piece that continues a word with `##`, and has no byte "
        "fallback, so unknown characters become `[UNK]`. "
        + f"{lm.name} uses **{kind}**"
        + (f": {KIND_NOTES[kind]}." if kind in KIND_NOTES else ".")
    )
    try:
        wp = tokenization.wordpiece_table(wordpiece(), text)
    except ModelUnavailable as exc:
        st.warning(str(exc))
        return
    ours = tokenization.text_table(tok, text)
    left, right = st.columns(2)
    left.markdown(f"**{lm.name}, {kind}: {len(ours):,} tokens**")
    left.html(chips(tokenization.chips_for(ours.head(MAX_CHIPS), show_ids=False)))
    right.markdown(f"**all-MiniLM-L6-v2, WordPiece: {len(wp):,} tokens** (with [CLS] and [SEP])")
    right.html(
        chips(
            [
                Chip(
                    r.text, f"id {r.id}", css=("special",) if r.special else ("marked",) if r.unknown else ()
                )
                for r in wp.head(MAX_CHIPS).itertuples(index=False)
            ]
        )
    )
    counts = pd.DataFrame(
        {"tokenizer": [f"{lm.name} ({kind})", "MiniLM (WordPiece)"], "tokens": [len(ours), len(wp)]}
    )
    st.altair_chart(charts.pieces_per_tokenizer(counts), width="stretch")


def bpe_tab() -> None:
    st.markdown(
        "BPE starts from bytes and joins, again and again, the neighbouring pair it learned earliest "
        "(lowest **rank** in the tokenizer's merges list) until no learned pair is left."
    )
    word = st.text_input("Word", "unbelievable", max_chars=80, key="tokens.bpe_word")
    spaced = st.checkbox(
        "With a leading space, as in the middle of a sentence", value=False, key="tokens.bpe_space"
    )
    text = (" " + word) if spaced else word
    if not word:
        return
    result = bpe.bpe_merges(tok, text)
    number, words = st.column_config.NumberColumn, st.column_config.TextColumn
    st.dataframe(  # widths fit the longest cell ("start: one piece per byte" was cut in an even split)
        bpe.steps_table(tok, result),
        hide_index=True,
        width="stretch",
        column_config={
            "word": number(width="small"),
            "step": number(width="small"),
            "merged": words(width="medium"),
            "rank": number(width="small", help="Its place in the learned merges list: lower joins first"),
            "pieces": words(width="large"),
            "count": number(width="small"),
        },
    )
    pieces = tokenization.text_table(tok, text)
    st.html(chips(tokenization.chips_for(pieces)))
    if result.matches:
        st.success(f"{len(result.ids)} token(s): the merges reproduce the tokenizer's own output.", icon="✅")
    else:
        st.warning(f"The merges give {result.ids}, the tokenizer gives {result.real_ids}.")


def vocabulary_tab() -> None:
    left, right = st.columns(2)
    token_id = left.number_input("Token id", 0, len(tok) - 1, 19556, key="tokens.lookup_id")
    entry = tokenization.lookup_id(tok, int(token_id))
    left.html(chips([Chip(entry["text"], f"bytes: {entry['bytes']}", css=_css(entry), sub=str(entry["id"]))]))
    left.caption(f"Bytes: {entry['bytes'] or '(none)'}" + (" · special token" if entry["special"] else ""))
    piece = right.text_input("Text", "Paris", max_chars=200, key="tokens.lookup_text")
    if piece:
        found = tokenization.lookup_text(tok, piece)
        verdict = f"one token (id {found.ids[0]})" if found.single else f"{len(found.ids)} tokens {found.ids}"
        right.write(f"Typed in a message: **{verdict}**.")
        right.write(f"After a space: **{len(found.spaced_ids)}** token(s) {found.spaced_ids}.")
        right.html(chips(tokenization.chips_for(tokenization.text_table(tok, piece))))
        if found.vocab_id is not None and tokenization.lookup_id(tok, found.vocab_id)["special"]:
            right.caption(
                f"The vocabulary has it as id {found.vocab_id}, a special token: typed text never becomes "
                "one, so a user cannot end their turn early."
            )


def _css(entry: dict) -> tuple[str, ...]:
    return ("special",) if entry["special"] else ("bytes",) if entry["partial"] else ()


st.title("🧩 Tokenization")
st.caption(
    "What the model actually reads: not letters or words, but token ids. Tap or hover a token for its id and bytes."
)
link_slot = st.container()
all_rows, expected = pick_source()
text = show_tokens(all_rows, expected)
# One view at a time (a radio, not st.tabs): only the chosen view is computed on each rerun.
VIEWS = {
    "Table": lambda: table_tab(all_rows),
    "Counts and context budget": lambda: counts_tab(all_rows),
    "Another tokenizer": lambda: compare_tab(text),
    "BPE merges": bpe_tab,
    "Vocabulary": vocabulary_tab,
}
VIEW_NAMES = dict(zip(("table", "counts", "compare", "bpe", "vocabulary"), VIEWS, strict=True))  # ?view=
links.url_value("view", VIEW, VIEW_NAMES.get)
view = st.radio("View", list(VIEWS), horizontal=True, key=VIEW, label_visibility="collapsed")
links.set_url(view={label: name for name, label in VIEW_NAMES.items()}[view])
links.copy_link(link_slot)
VIEWS[view]()
