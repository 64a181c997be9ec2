"""Embeddings: words and messages as vectors, and which vectors are close."""

from __future__ import annotations

import streamlit as st

from core.charts import embeddings as charts
from core.conversation import reply_number
from core.explain import embeddings as emb
from core.runner import runner_for
from pages import common, links

VIEWS = ["Token similarity", "Nearest words", "Analogy", "Conversation", "Free text"]
VIEW_NAMES = dict(zip(("tokens", "nearest", "analogy", "conversation", "text"), VIEWS, strict=True))  # ?view=
VIEW = "embeddings.view"
MAX_TOKENS = 60  # tokens per heatmap; longer messages get a window slider
MAX_UNITS = 60  # messages or sentences per conversation heatmap
MAX_FREE_CHARS = 6_000  # the free-text box: 60 sentences of 100 characters
FREE_TEXT = "The cat sat on the mat.\nA kitten rests on a rug.\nStock prices fell sharply today."

lm = common.chat_model()
facts = runner_for(lm).facts
common.model_badge(lm)
st.title("🧭 Embeddings: text as vectors")
st.caption(
    "A model reads every token as a list of numbers, a vector. The heatmaps show the cosine similarity "
    "of two vectors: orange where they point the same way (near 1), white where they are unrelated (0), "
    "blue where they point opposite ways (near -1)."
)
link_slot = st.container()


def view_picker() -> str:
    links.url_value("view", VIEW, VIEW_NAMES.get)
    st.session_state.setdefault(VIEW, VIEWS[0])
    choice = st.segmented_control("View", VIEWS, key=VIEW, required=True) or VIEWS[0]
    links.set_url(view={label: name for name, label in VIEW_NAMES.items()}[choice])
    return choice


def window(n: int, key: str) -> tuple[int, int]:
    """[start, end) of at most MAX_TOKENS positions; a slider appears when n is larger."""
    if n <= MAX_TOKENS:
        return 0, n
    start = st.slider(
        f"Tokens shown (a window of {MAX_TOKENS} of {n})", 0, n - MAX_TOKENS, n - MAX_TOKENS, key=key
    )
    return start, start + MAX_TOKENS


def selected_position(event) -> int | None:
    """The token position clicked on the map, if any."""
    points = (event or {}).get("selection", {}).get(charts.TOKEN_SELECTION) or []
    if points and isinstance(points[0], dict) and "position" in points[0]:
        return int(points[0]["position"])
    return None


def token_view() -> None:
    ref = common.reply_picker("embeddings.reply")
    if ref is None:
        return
    trace = ref.message.trace
    lm = common.model_for(trace)  # the model that wrote this reply (the chat may use another one now)
    facts = runner_for(lm).facts
    parts = emb.message_parts(trace, common.messages())
    pick = st.selectbox(
        "Message to show (as the model read it for this reply, or the reply as it wrote it)",
        range(len(parts)),
        index=len(parts) - 1,
        format_func=lambda i: parts[i].label,
        key="embeddings.part",
    )
    part = parts[pick]
    if part.end == part.start:
        st.info("This message has no tokens.")
        return
    layer = st.slider(
        "Which vectors: 0 = input embeddings, L = hidden state after layer L",
        0,
        facts.n_layers,
        0,
        key="embeddings.layer",
        help="Layer 0 gives the same vector to the same token wherever it stands. Later layers mix "
        "in the tokens before it, so the same word gets different vectors in different contexts.",
    )
    if layer == 0:
        vectors = emb.token_vectors(lm, trace, part, 0)  # (n, d)
    else:
        with common.model_pass(
            f"Running the model once over all {len(trace.full_ids):,} tokens of this reply:"
        ):
            vectors = emb.token_vectors(lm, trace, part, layer)  # (n, d)
    centres = list(emb.CENTRES) if layer == 0 else ["shown", "none"]  # the vocabulary's mean is layer 0's
    centre = st.radio(
        "Before comparing, subtract",
        centres,
        format_func=emb.CENTRES.get,
        horizontal=True,
        key="embeddings.centre" if layer == 0 else "embeddings.centre_hidden",
        index=0 if layer == 0 else 1,
        help="Vectors that share a common direction all look alike under raw cosine. Subtracting a mean "
        "vector takes that direction out and shows what differs. The mean of the tokens shown changes "
        "with the tokens you pick; the whole vocabulary's mean is the same for every message. "
        "Equal input embeddings stay equal either way.",
    )
    if layer == 0:
        st.caption(emb.raw_cosine_note(lm))
    start, end = window(part.end - part.start, "embeddings.window")
    ids = trace.full_ids[part.start + start : part.start + end]
    labels = emb.token_labels(lm, ids)
    positions = list(range(start, end))
    shown = vectors[start:end]  # (w, d)
    what = "input embeddings" if layer == 0 else f"hidden states after layer {layer}"
    centred = {"vocabulary": ", centred on the vocabulary's mean", "shown": ", centred on their mean"}
    what += centred.get(centre, "")

    heat_box = st.container()
    projection = emb.pca_2d(shown)
    event = st.altair_chart(
        charts.token_scatter(emb.token_map(labels, positions, projection), projection.explained),
        key="embeddings.map",
        on_select="rerun",
        selection_mode=charts.TOKEN_SELECTION,
    )
    st.caption(  # under the map it describes
        f"The two axes keep {projection.explained[0]:.1%} + {projection.explained[1]:.1%} = "
        f"{sum(projection.explained):.1%} of the variance of these {len(shown)} vectors "
        f"({shown.shape[1]} numbers each). Click a token to highlight it in the heatmap; double-click "
        "to clear."
    )
    highlight = selected_position(event)
    with heat_box:
        origin = emb.vocabulary_mean(lm) if centre == "vocabulary" else None
        frame = emb.similarity_frame(labels, emb.cosine_matrix(shown, centre == "shown", origin), positions)
        st.altair_chart(
            charts.similarity_heatmap(frame, f"Cosine similarity of the {what}", highlight, cell=12),
            width="stretch",
        )
    if highlight is not None and start <= highlight < end:
        token_id = ids[highlight - start]
        st.markdown(
            f"**Nearest words to `{labels[highlight - start]}`** in the whole vocabulary (input embeddings)"
        )
        st.dataframe(emb.nearest_tokens(lm, token_id, 10), hide_index=True)


def nearest_view() -> None:
    st.markdown(
        f"Type a word to find the tokens whose **input embeddings** point most nearly the same way, "
        f"searching all {facts.vocab_size:,} tokens of the vocabulary."
    )
    word = st.text_input("Word", "Paris", key="embeddings.word", max_chars=60)
    space = st.checkbox(
        "Read it as a word inside a sentence (with a leading space)", True, key="embeddings.space"
    )
    ids = emb.word_ids(lm, word, space)
    if not ids:
        st.info("Type a word above.")
        return
    labels = emb.token_labels(lm, ids)
    if len(ids) > 1:
        st.caption(f"This is {len(ids)} tokens ({' + '.join(labels)}); their vectors are averaged.")
    result = emb.nearest_to_vector(lm, emb.word_vector(lm, ids), 15)
    st.altair_chart(charts.neighbour_bars(result, f"Nearest tokens to {' '.join(labels)}"))


def analogy_view() -> None:
    st.markdown("**a − b + c**: start at *a*, take away what *b* means, add what *c* means.")
    cols = st.columns(3)
    a = cols[0].text_input("a", "king", key="embeddings.a", max_chars=40)
    b = cols[1].text_input("− b", "man", key="embeddings.b", max_chars=40)
    c = cols[2].text_input("+ c", "woman", key="embeddings.c", max_chars=40)
    try:
        result = emb.analogy(lm, a, b, c, 10)
    except ValueError as exc:
        st.info(str(exc))
        return
    st.altair_chart(charts.neighbour_bars(result, f"{a} − {b} + {c} ≈ …"))
    st.caption(emb.ANALOGY_NOTE)


def conversation_view() -> None:
    history = list(common.messages())
    if sum(1 for m in history if m.content.strip()) < 2:
        st.info("There is not enough conversation yet. Chat on the **Chat** page first, then come back.")
        st.page_link("pages/chat.py", label="Go to the chat", icon="💬")
        return
    by = st.radio(
        "Compare",
        ["message", "sentence"],
        horizontal=True,
        key="embeddings.by",
        format_func=lambda x: f"every {x}",
    )
    embedder = common.embedder()
    units = emb.conversation_units(history, by)
    if len(units) > MAX_UNITS:
        st.caption(f"Showing the last {MAX_UNITS} of {len(units)} {by}s.")
        units = units.tail(MAX_UNITS).reset_index(drop=True)
    vectors = emb.sentence_vectors(embedder, units["text"].tolist())  # (n, 384)
    st.caption("Vectors from the sentence-embedding model all-MiniLM-L6-v2 (384 numbers per text).")
    frame = emb.similarity_frame(units["short"].tolist(), emb.cosine_matrix(vectors), units["unit"].tolist())
    st.altair_chart(
        charts.similarity_heatmap(frame, f"Cosine similarity of every {by}", cell=22), width="stretch"
    )
    points, projection = emb.message_map(units, vectors)
    st.altair_chart(charts.message_scatter(points, projection.explained))
    st.caption(
        f"The two axes keep {sum(projection.explained):.0%} of the variance. Each point is labelled with "
        "its message number (0 is the system prompt; 1.2 is message 1's second sentence); hover a point "
        "for its text."
    )

    st.subheader("What was this reply about?")
    replies = [i for i, m in enumerate(history) if m.role == "assistant" and m.content.strip()]
    if not replies:
        st.info("There is no reply yet.")
        return
    # the reply chosen on the other views (or the last one), named as the reply pickers name it
    selected = st.session_state.get(common.SELECTED)
    traced = [i for i in replies if history[i].trace is not None and history[i].trace.trace_id == selected]
    chosen = st.selectbox(
        "Reply",
        replies,
        index=replies.index(traced[0]) if traced else len(replies) - 1,
        key="embeddings.about",
        format_func=lambda i: (
            f"Reply {reply_number(history, i)}: {history[i].content.strip().replace(chr(10), ' ')[:60]}"
        ),
    )
    reply_vec = emb.sentence_vectors(embedder, [history[chosen].content.strip()])[0]
    ranking = emb.reply_about(units, vectors, reply_vec, chosen)
    if ranking.empty:
        st.info("Nothing comes before this reply.")
        return
    st.altair_chart(charts.ranking_bars(ranking, f"Earlier {by}s, closest to the reply first"))


def free_text_view() -> None:
    text = st.text_area(
        "One sentence per line (two or more)",
        FREE_TEXT,
        key="embeddings.free",
        height=140,
        max_chars=MAX_FREE_CHARS,
        help=f"Up to {MAX_UNITS} sentences and {MAX_FREE_CHARS:,} characters.",
    )
    lines = [line for line in text.splitlines() if line.strip()][:MAX_UNITS]
    if len(lines) < 2:
        st.info("Type at least two sentences, one per line.")
        return
    frame = emb.text_similarity(common.embedder(), lines)
    st.altair_chart(
        charts.similarity_heatmap(frame, "Cosine similarity of your sentences", cell=60), width="stretch"
    )
    pairs = frame[frame["row"] < frame["col"]].sort_values("similarity", ascending=False)
    st.dataframe(
        pairs[["row_label", "col_label", "similarity"]].rename(
            columns={"row_label": "sentence", "col_label": "other sentence"}
        ),
        hide_index=True,
    )


VIEW_FUNCTIONS = {
    "Token similarity": token_view,
    "Nearest words": nearest_view,
    "Analogy": analogy_view,
    "Conversation": conversation_view,
    "Free text": free_text_view,
}
VIEW_FUNCTIONS[view_picker()]()
links.copy_link(link_slot)  # last: the link holds every parameter the view wrote (the reply too)
