"""How to read this app: a short guide to the pages, the colours, and the model behind them."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from core import html
from core.runner import runner_for
from pages import common

ROOT = Path(__file__).resolve().parent.parent
GUIDE = [
    (
        "pages/chat.py",
        "Chat",
        "Talk to the model. Switch on **Explain** under a reply to see how it was written.",
    ),
    (
        "pages/candidates.py",
        "Next-word candidates",
        "Which tokens the model weighed at each step, and how likely each was.",
    ),
    ("pages/tokens.py", "Tokenization", "How your text was cut into tokens, and what each token's id is."),
    ("pages/embeddings.py", "Embeddings", "Where words and messages sit in the model's vector space."),
    (
        "pages/attention.py",
        "Attention",
        "Which earlier tokens each token looked at, layer by layer and head by head.",
    ),
    (
        "pages/walkthrough.py",
        "From prompt to reply",
        "One token followed through the whole model, stage by stage.",
    ),
]

lm = common.chat_model(full=False)
common.model_badge(lm)
st.title("📖 How to read this app")
st.markdown(
    "Glassbox Chat is an ordinary chat with a small language model, plus windows into how each reply "
    "was made. **Start on the Chat page**: ask something, or click an example. Every reply keeps a "
    "record of each token the model chose and what else it considered, so the other pages can explain "
    "it without running the model again."
)

st.subheader("The pages")
for page, title, what in GUIDE:
    if (ROOT / page).is_file():
        st.page_link(page, label=title)
        st.caption(what)

st.subheader("Colours and marks")
chips = [
    html.Chip("·Paris", "a token with a leading space", html.probability_colour(0.95)),
    html.Chip("·Lyon", "a less likely token", html.probability_colour(0.3)),
    html.Chip("·Mars", "an unlikely token", html.probability_colour(0.03)),
    html.Chip("<|im_start|>", "a chat-template marker", css=("special",)),
    html.Chip("<0xF0>", "part of a character split across tokens", css=("bytes",)),
    html.Chip("↵", "a newline"),
]
st.html(html.chips(chips, legend=html.probability_legend()))
st.markdown(
    "- A **token** is a word, part of a word, or a piece of punctuation; the model reads and writes tokens, "
    "not letters. `·` marks a space and `↵` a newline, so you can see where they are.\n"
    "- **Green to red** is the probability the model gave a token: green was expected, red was a surprise.\n"
    "- **Dark chips** are template markers the app adds around each message; the model reads them too.\n"
    "- **Dashed chips** are byte fragments: one character (an emoji, say) split over several tokens.\n"
    "- **Blue strength** shows attention: the darker the blue, the more a token looked at another.\n"
    "- **Similarity heatmaps** (the Embeddings page) run from **orange** (two vectors point the same way, "
    "cosine near 1) through white (unrelated, 0) to **blue** (opposite ways, near -1).\n"
    "- Replies are **sampled**: at temperature 0 the model always takes its top choice. Otherwise each "
    "token is a random draw: temperature below 1 sharpens the odds toward the top tokens, above 1 flattens "
    "them; top-k and top-p drop the unlikely tail before the draw; a repetition penalty above 1 lowers every "
    "token already in the text, which can keep a small model out of loops. The sidebar on the Chat page sets this, "
    "with a seed for repeatable runs."
)

st.subheader("The model")
# A metric's value is cut with "…" when its column is too narrow ("49,152 to…"): the name gets
# a row of its own, and units go in the labels so that the numbers stay short.
st.metric("Model", lm.name)
cols = st.columns(3)
cols[0].metric("Parameters (millions)", f"{lm.n_params / 1e6:.0f}")
facts = runner_for(lm).facts  # every number about the model comes from its own config
cols[1].metric("Layers × heads", f"{facts.n_layers} × {facts.n_heads}")
cols[2].metric("Vocabulary (tokens)", f"{facts.vocab_size:,}")
st.markdown(
    f"{lm.name} has {facts.describe()} It runs "
    f"**locally on this computer's CPU**: nothing you type leaves the machine. It reads up to "
    f"{lm.context_length:,} tokens; this app uses a smaller budget to stay fast. Being small, it is "
    "quick and easy to look inside, but it makes mistakes a large model would not: treat its answers "
    "as something to study, not as facts."
)
st.caption(f"Loaded in {lm.load_seconds:.1f} s. Source: {lm.public_source}")
