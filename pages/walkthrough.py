"""From prompt to reply: one real step of one real reply, walked stage by stage.

Every number on this page comes from the model (core.explain.walkthrough); the page only
picks the reply and the step, and draws.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from core import html
from core.cache import BoundedCache
from core.charts import walkthrough as charts
from core.explain import walkthrough as wt
from core.runner import ModelFacts, runner_for
from core.sampling import sampling_probs, tokens_for_mass
from core.settings import SamplingSettings
from core.tokens import readable
from core.trace import Trace
from pages import common, links

STEP = "walkthrough.step"  # URL: ?reply=&step= (0-based)
LAYER = "walkthrough.layer"  # stage 5: -1 = the average over all layers
ROOT = Path(__file__).resolve().parent.parent
ROLE_COLOURS = {"system": "#e2e8f0", "user": "#dbeafe", "assistant": "#fef3c7"}


@st.cache_resource(show_spinner=False)
def _walk_cache() -> BoundedCache:
    return BoundedCache(8)  # (trace_id, step) -> StepWalk, about 0.3 MB each at 200 tokens


def link(page: str, label: str, trace: Trace, step: int, **more: object) -> None:
    """A link to another explanation page for the same reply and step, once that page exists."""
    if (ROOT / page).is_file():
        links.page_link(page, label, "➡️", reply=trace.trace_id, step=step, **more)


def next_step(n: int) -> None:
    st.session_state[STEP] = min(st.session_state.get(STEP, 0) + 1, n - 1)


def stage(number: int, title: str, text: str):
    """A bordered box for one stage, with its newcomer's explanation on top."""
    box = st.container(border=True)
    box.subheader(f"{number}. {title}")
    box.markdown(text)
    return box


def context_chips(table, attention=None, max_w: float = 1.0) -> str:
    items = []
    for row in table.itertuples():
        last = row.position == len(table) - 1
        title = f"position {row.position} · id {row.token_id} · {row.role} {row.kind}"
        if attention is not None:
            weight = float(attention[row.position])
            title += f" · attention {weight:.1%}"
            colour = html.weight_colour(min(weight, max_w), max_w)
        else:
            colour = ROLE_COLOURS.get(row.role)
        css = ("special",) if row.special and attention is None else ()
        items.append(html.Chip(row.text, title, colour, css=(*css, "marked") if last else css))
    return html.chips(items, tap=True)


def position_text(facts: ModelFacts, name: str, position: int) -> str:
    """Stage 3 for this model's own position scheme."""
    opening = (
        "The embedding of a word is the same wherever it stands, so how does the model know word order? "
    )
    if facts.positions == "rotary":
        how = (
            f"{name} uses **rotary position embeddings** (RoPE): inside every attention layer, the query and "
            "key vectors are rotated by an angle that grows with the token's position. When two tokens are "
            "compared, only the *difference* of their angles survives, so attention can tell near from far "
            "without any position vector being added."
        )
    else:
        how = (
            f"{name} uses **learned position embeddings**: a second table holds one vector per position "
            f"(up to {facts.context_length:,}), and the vector for this position is added to the token's "
            "embedding before the first layer."
        )
    window = (
        f" Besides, {len(facts.sliding_layers)} of its {facts.n_layers} layers use a **sliding window**: "
        f"there a token sees only the last {facts.sliding_window:,} tokens."
        if facts.sliding_window and facts.sliding_layers
        else ""
    )
    return f"{opening}{how}{window} The current token sits at position {position}."


lm = common.chat_model()
facts = runner_for(lm).facts
common.model_badge(lm)
st.title("🚶 From prompt to reply")
st.markdown(
    "Follow **one token** of a real reply from your prompt to the model's choice, in nine stages. "
    "Every number below comes from the model itself, computed for the step you pick."
)
link_slot = st.container()
trace, lm = common.explained_reply(
    "walkthrough.reply", "This reply has no recorded steps to walk through. Pick another reply."
)
facts = runner_for(lm).facts
step = common.step_picker(trace, STEP, lm.tokenizer)
links.copy_link(link_slot)
chosen = trace.steps[step]
with common.model_pass("Running the model over the context:"):
    walk = _walk_cache().get_or_compute(
        (lm.source, trace.trace_id, step), lambda: wt.walk_step(lm, trace, step)
    )
context = wt.context_tokens(lm, trace, step)
last = readable(lm.tokenizer, walk.last_id)
picked = readable(lm.tokenizer, chosen.token_id)
T = len(walk.context)

with stage(
    1,
    "Text → tokens",
    f"The model never sees letters. The conversation is cut into **tokens**: words, pieces of "
    f"words, spaces and template markers such as `<|im_start|>`. To choose reply token "
    f"{step + 1}, the model reads these **{T} tokens**: the prompt plus the {step} reply tokens "
    "written so far. The last one (outlined in red) is the *current position*.",
):
    st.html(context_chips(context))
    st.caption("Grey: system message · blue: user · yellow: assistant. Tap or hover a chip for its id.")
    link("pages/tokens.py", "See how this text was tokenized", trace, step)

with stage(
    2,
    "Tokens → ids → vectors",
    f"Each token is a number, its **id**, and the id picks one row of the **embedding table**: "
    f"{facts.vocab_size:,} rows of {facts.d_model:,} numbers each. That row is the token's "
    "starting vector"
    + (
        f" (this model multiplies it by {facts.embedding_scale:.1f} before the first layer)"
        if facts.embedding_scale != 1.0
        else ""
    )
    + ". Below is the row for the current token, one cell per number.",
):
    a, b, c = st.columns(3)
    a.metric("Current token", last)
    b.metric("Its id", walk.last_id)
    c.metric("Vector length (norm)", f"{walk.embedding_norm:.3f}")
    st.altair_chart(charts.embedding_strip(wt.embedding_cells(walk.embedding)), width="stretch")
    link("pages/embeddings.py", "Explore the embedding space", trace, step)

stage(3, "Position", position_text(facts, lm.name, T - 1))

with stage(
    4,
    "Through the layers",
    f"The vector now passes through **{facts.n_layers} decoder blocks**. Each block lets the token "
    "look at the others (attention) and then transforms it on its own (an MLP); each adds its "
    "result to the vector. The bars show the vector's length, the blue line how close it already "
    "is to its final direction. The **logit lens** reads each layer's vector with the output head: "
    "the token it would predict if the model stopped there.",
):
    left, right = st.columns([3, 2])
    left.altair_chart(charts.layer_trajectory(walk.layers), width="stretch")
    right.dataframe(
        walk.layers[["layer", "lens_token", "lens_prob"]],
        hide_index=True,
        height=300,
        column_config={
            "lens_token": "logit-lens top token",
            "lens_prob": st.column_config.ProgressColumn("probability", format="percent"),
        },
    )
    st.caption(
        "The last point is after the final normalisation, which rescales the vector: its length "
        "drops, and the cosine is measured after that normalisation at every layer."
    )


def attention_stage() -> None:
    """Stage 5: the current position's attention, or one sentence on why it cannot be shown."""
    st.html(
        html.text_block(
            f"The attention of {last} (position {walk.position}) → chose {picked} (reply token {step + 1})."
        )
    )
    if walk.attention is None:
        st.warning(walk.attention_unavailable)
        return
    layer = st.selectbox(
        "Layer",
        [-1, *range(facts.n_layers)],
        format_func=lambda i: "all layers (average)" if i < 0 else f"layer {i + 1}",
        key=LAYER,
    )
    att = wt.attention_table(lm, walk, None if layer < 0 else layer)
    weights = att["weight"].to_numpy()
    max_w = float(weights[1:].max()) if T > 1 else 1.0
    st.html(context_chips(context, weights, max_w))
    st.caption(
        f"The first token takes {weights[0]:.0%} of the attention: models park spare attention on it "
        "(an 'attention sink'), so the colours are scaled to the strongest of the *other* tokens."
    )
    top = att.iloc[1:].nlargest(8, "weight")[["position", "text", "weight"]]
    st.dataframe(
        top,
        hide_index=True,
        column_config={"weight": st.column_config.ProgressColumn("attention", format="percent")},
    )
    # the same row on the attention page: its Per-token view at this step, averaged the same way
    shown = {"mode": "all"} if layer < 0 else {"mode": "layer", "layer": layer}
    link(
        "pages/attention.py",
        f"See the attention of {last} → {picked}, head by head",
        trace,
        step,
        view="token",
        **shown,
    )


with stage(
    5,
    "Attention at this step",
    "Attention is how the current position gathers information from earlier tokens. Darker blue "
    "marks the tokens it attended to most, averaged over all heads. This is the attention that "
    "chose the step's token: the current position is the token *before* it.",
):
    attention_stage()

tied = facts.tied_embeddings
with stage(
    6,
    "Final vector → logits",
    f"After the last block and a final normalisation, the **output head** (a {facts.vocab_size:,} × "
    f"{facts.d_model:,} matrix) scores every entry of the vocabulary: **{facts.vocab_size:,} "
    "raw scores**, called logits. Higher means more likely. "
    + (
        "In this model the output head *is* the embedding table from stage 2, reused."
        if tied
        else "The output head is a separate matrix."
    ),
):
    st.altair_chart(charts.logit_dots(wt.top_logits(lm, walk.logits)), width="stretch")

with stage(
    7,
    "Logits → probabilities",
    "**Softmax** turns scores into probabilities that add up to 1: p = exp(score / T) / Σ exp(score / T). "
    "The **temperature** T sharpens (T < 1) or flattens (T > 1) the distribution. Move the slider: "
    "the bars are redrawn with the sampler's own code.",
):
    default_t = trace.settings.temperature if not trace.settings.greedy else 1.0
    temperature = st.slider("Temperature", 0.05, 2.0, float(default_t), 0.05, key="walkthrough.temperature")
    table = wt.temperature_table(lm, walk.logits, temperature, chosen.token_id)
    st.altair_chart(charts.temperature_bars(table, temperature), width="stretch")
    warm = sampling_probs(walk.logits, SamplingSettings(temperature=temperature, top_k=0, top_p=1.0))
    mass = tokens_for_mass(warm)
    who = "the single most likely token holds" if mass == 1 else f"the {mass:,} most likely tokens hold"
    st.caption(f"At temperature {temperature:g}, {who} 90% of the probability.")

choices = wt.choice_table(lm, walk.logits, trace.settings, chosen.token_id)
with stage(
    8,
    "Choose",
    "One token is picked. **Greedy** decoding always takes the most likely one; **top-k** draws "
    "among the k most likely; **top-p** draws among the fewest tokens that cover p of the probability. "
    f"This reply used: {choices['how'].iloc[-1]}.",
):
    a, b, c = st.columns(3)
    a.metric("Chosen token", picked)
    b.metric("Probability (temperature 1)", f"{chosen.prob:.1%}")
    c.metric("Rank", chosen.rank)
    st.dataframe(
        choices.drop(columns="pick_id"),
        hide_index=True,
        column_config={
            # "large": at "medium" the rules were cut ("smallest set covering 95…"); the table scrolls on a phone
            "how": st.column_config.TextColumn("how", width="large"),
            "pool": "tokens it can draw",
            "pick": "most likely pick",
            "pick_prob": st.column_config.NumberColumn("its chance", format="percent"),
            "chosen_prob": st.column_config.NumberColumn(
                f"chance of {readable(lm.tokenizer, chosen.token_id)}", format="percent"
            ),
        },
    )

with stage(
    9,
    "Repeat",
    "The chosen token is appended to the context, and the whole loop runs again for the next "
    "position, until the model writes its end-of-turn token or hits the length limit.",
):
    reply = wt.context_tokens(lm, trace, step + 1).iloc[len(trace.prompt_ids) :]
    st.html(context_chips(reply))
    if step + 1 < len(trace.steps):
        st.button("Next step ▶", on_click=next_step, args=(len(trace.steps),), key="walkthrough.next")
    else:
        st.success(f"That was the last token of this reply (finish reason: {trace.finish_reason}).")

st.divider()
st.subheader("Decoder-only versus encoder-decoder")
st.image(html.architecture_svg(lm.name, facts.n_layers), width=760)  # inline SVG markup, no file
st.markdown(
    "The original Transformer (2017) had two stacks. An **encoder** reads the whole input at once, "
    "every token seeing every other; a **decoder** writes the output one token at a time, attending to "
    "its own earlier words (masked self-attention) and, through **cross-attention**, to the encoder's "
    f"vectors. {lm.name} is **decoder-only**, like GPT: there is no separate encoder. Prompt and "
    "reply are one sequence read by the same stack that writes, and masked self-attention over that "
    "sequence is the only place attention guides the next token."
)
st.subheader("Further reading")
st.markdown(
    "- Word embeddings: Mikolov et al., [Efficient Estimation of Word Representations in Vector Space "
    "(Word2Vec)](https://arxiv.org/abs/1301.3781)\n"
    "- Encoder-decoder networks: Sutskever et al., [Sequence to Sequence Learning with Neural "
    "Networks](https://arxiv.org/abs/1409.3215)\n"
    "- The original paper: Vaswani et al., [Attention Is All You Need](https://arxiv.org/abs/1706.03762)\n"
    "- A visual introduction: Jay Alammar, [The Illustrated Transformer]"
    "(https://jalammar.github.io/illustrated-transformer/)\n"
    "- Tokenization in depth: Andrej Karpathy, [Let's build the GPT Tokenizer]"
    "(https://www.youtube.com/watch?v=zduSFxRajkE) and [minbpe](https://github.com/karpathy/minbpe)\n"
    "- Rotary position embeddings: Su et al., [RoFormer](https://arxiv.org/abs/2104.09864)"
)
