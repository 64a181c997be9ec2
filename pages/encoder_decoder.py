"""Encoder vs decoder: MiniLM's attention square beside the chat model's causal triangle, on the chat's text."""

from __future__ import annotations

import streamlit as st

from core import html
from core.charts import encoder_decoder as charts
from core.explain import encoder_decoder as ed
from core.tokens import tokenizer_kind
from pages import common

SOURCES = ["A message from the chat", "Your own sentence"]
SOURCE, MESSAGE, TYPED = "encdec.source", "encdec.message", "encdec.typed"
ENC_LAYER, ENC_HEAD, DEC_LAYER, DEC_HEAD = (
    "encdec.enc_layer",
    "encdec.enc_head",
    "encdec.dec_layer",
    "encdec.dec_head",
)
EXAMPLE = "The animal didn't cross the street because it was too tired."
ALL_HEADS = -1  # the head pickers' "average over every head" option


def explanation(decoder: str, kind: str) -> str:
    return (
        "**The square and the triangle.** An encoder such as MiniLM reads the whole sentence at once: "
        "every token looks at every other token, before and after it, so its heatmap fills the square. "
        f"A decoder such as {decoder} sees only the tokens before it (and itself): it writes left to right, "
        "and the next word does not exist yet when it is chosen, so every cell above the diagonal is "
        "masked to exactly 0 (grey) and a triangle is left. "
        "The two models cut the same text into different tokens (WordPiece, with [CLS] and [SEP] "
        f"added, against {decoder}'s {kind}, where · marks a space), so their rows do not line up "
        "one to one."
    )


lm = common.chat_model()
common.model_badge(lm)
st.title("🔀 Encoder vs decoder: who may look at whom")
st.caption(
    "The same text read by two models: all-MiniLM-L6-v2, an encoder (the app uses it for sentence "
    f"embeddings), and {lm.name}, the decoder that writes the chat's replies."
)


def pick_text() -> tuple[str, bool]:
    """The text to compare (not yet bounded), and whether it is a chat message (else typed)."""
    choices = ed.message_choices(common.messages())
    if not choices:
        st.info("The chat has no messages yet, so type a sentence here, or chat first and come back.")
        return typed_text(), False
    common.restore(SOURCE, SOURCES[0])
    source = st.segmented_control("Text to compare", SOURCES, key=SOURCE, required=True) or SOURCES[0]
    common.remember(SOURCE)
    if source == SOURCES[1]:
        return typed_text(), False
    by_index = {c.index: c for c in choices}
    common.restore(MESSAGE, choices[-1].index)
    if st.session_state[MESSAGE] not in by_index:  # a new chat, or the remembered message is gone
        st.session_state[MESSAGE] = choices[-1].index
    index = st.selectbox("Message", list(by_index), format_func=lambda i: by_index[i].label, key=MESSAGE)
    common.remember(MESSAGE)
    return by_index[index].text, True


def typed_text() -> str:
    common.restore(TYPED, EXAMPLE)
    text = st.text_area(
        "Sentence", key=TYPED, max_chars=ed.MAX_CHARS, height=80, help=f"Up to {ed.MAX_CHARS} characters."
    )
    common.remember(TYPED)
    return text


def layer_and_head(
    name: str, n_layers: int, n_heads: int, layer_key: str, head_key: str
) -> tuple[int, int | None]:
    """A layer slider and a head picker, labelled from 1 -> (layer, head or None), 0-based."""
    common.restore(layer_key, 1)
    common.restore(head_key, ALL_HEADS)
    layer = st.slider(f"{name}: layer", 1, n_layers, key=layer_key)
    head = st.selectbox(
        f"{name}: head",
        [ALL_HEADS, *range(n_heads)],
        format_func=lambda h: f"Average of all {n_heads} heads" if h == ALL_HEADS else f"Head {h + 1}",
        key=head_key,
    )
    common.remember(layer_key)
    common.remember(head_key)
    return layer - 1, None if head == ALL_HEADS else head


def title(square: ed.AttentionSquare) -> tuple[str, str]:
    """("all-MiniLM-L6-v2 (encoder)", "layer 1, mean of all heads"): the chart's title and subtitle."""
    head = f"mean of all {square.n_heads} heads" if square.head is None else f"head {square.head + 1}"
    return f"{square.model} ({square.kind})", f"layer {square.layer + 1} of {square.n_layers}, {head}"


raw, from_chat = pick_text()
written = common.messages()[st.session_state[MESSAGE]].trace if from_chat else None
if written is not None:  # a reply is read by the model that wrote it (the chat may use another one now)
    lm = common.model_for(written)
sentence = ed.bounded(raw)
if sentence.cut:
    st.info(
        f"This text has {sentence.original_length:,} characters; only its first {ed.MAX_CHARS} are "
        "compared, so that every token keeps a readable row."
    )
if not sentence.text.strip():
    st.info("Type a sentence (or pick a message with text) to compare the two models.")
    st.stop()
if from_chat:  # the picker shows only the message's start; a typed sentence is in its box already
    st.html(html.text_block(sentence.text + ("…" if sentence.cut else ""), caption=True))

encoder = common.embedder()
bert = ed.bert_of(encoder).config
enc_col, dec_col = st.columns(2, gap="medium")  # side by side on a laptop; stacked on a phone
with enc_col:
    enc_layer, enc_head = layer_and_head(
        "MiniLM", bert.num_hidden_layers, bert.num_attention_heads, ENC_LAYER, ENC_HEAD
    )
    enc_box = st.container()
with dec_col:
    dec_layer, dec_head = layer_and_head(lm.name, lm.n_layers, lm.n_heads, DEC_LAYER, DEC_HEAD)
    dec_box = st.container()

with st.spinner("Running both models over this text with their attention weights recorded…"):
    enc = ed.encoder_attention(encoder, sentence.text, enc_layer, enc_head)
    dec = ed.decoder_attention(lm, sentence.text, dec_layer, dec_head)
enc_chart, dec_chart = charts.side_by_side(
    ed.attention_frame(enc), ed.attention_frame(dec), (title(enc), title(dec))
)
for box, square, chart in ((enc_box, enc, enc_chart), (dec_box, dec, dec_chart)):
    with box:
        st.altair_chart(chart, width="stretch")
        s = ed.summary(square)
        st.caption(
            f"{s.n_tokens} {square.tokenizer} tokens · share of the weight on later tokens "
            f"(above the diagonal): **{s.above_diagonal:.1%}**"
        )

st.markdown(explanation(lm.name, tokenizer_kind(lm.tokenizer)))
st.caption(
    "Each row is one token looking and adds up to 1. Both heatmaps use the same colour scale "
    "(square-root, so that small weights stay visible); hover over or tap a cell for its exact weight."
)
