"""Encoder vs decoder on real models: MiniLM's square against SmolLM2's causal triangle."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from core.charts import encoder_decoder as charts
from core.conversation import Message
from core.explain import encoder_decoder as ed
from core.models import load_embedder
from tests.conftest import APP, make_trace

SENTENCE = "The animal didn't cross the street because it was too tired."
PAGE = "pages/encoder_decoder.py"


@pytest.fixture(scope="module")
def embedder():
    return load_embedder()


@pytest.mark.parametrize("head", [None, 0, 8])
def test_decoder_is_a_causal_triangle_whose_rows_sum_to_1(lm, head):
    square = ed.decoder_attention(lm, SENTENCE, layer=3, head=head)
    w = square.weights  # (T, T)
    assert w.shape == (len(square.labels), len(square.labels))
    assert square.labels == [ed.readable(lm.tokenizer, i) for i in ed.decoder_ids(lm, SENTENCE)]
    assert np.all(np.triu(w, k=1) == 0.0)  # exactly 0, not merely small
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-5)
    s = ed.summary(square)
    assert s.above_diagonal == 0.0 and s.max_row_error < 1e-5


@pytest.mark.parametrize("head", [None, 0, 11])
def test_encoder_is_a_full_square_whose_rows_sum_to_1(embedder, head):
    square = ed.encoder_attention(embedder, SENTENCE, layer=2, head=head)
    w = square.weights
    assert square.labels[0] == "[CLS]" and square.labels[-1] == "[SEP]"
    assert "animal" in square.labels and square.tokenizer == "WordPiece"
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-5)
    s = ed.summary(square)
    assert s.above_diagonal > 0.01  # real weight on later tokens
    assert (w[np.triu_indices(len(w), k=1)] > 0).all()  # every query sees every later key


def test_decoder_weights_equal_an_independent_eager_pass(lm):
    """The reference: transformers' own eager attention with output_attentions=True."""
    ids = ed.decoder_ids(lm, SENTENCE)
    model = lm.model
    with lm.lock, torch.inference_mode():
        previous = model.config._attn_implementation
        try:
            model.set_attn_implementation("eager")
            out = model(input_ids=torch.tensor([ids]), output_attentions=True, use_cache=False)
        finally:
            model.set_attn_implementation(previous)
    for layer in (0, 7, lm.n_layers - 1):
        reference = out.attentions[layer][0].float().numpy()  # (heads, T, T)
        for head in (0, lm.n_heads - 1):
            got = ed.decoder_attention(lm, SENTENCE, layer, head).weights
            np.testing.assert_allclose(got, reference[head], atol=1e-5)
        np.testing.assert_allclose(
            ed.decoder_attention(lm, SENTENCE, layer).weights, reference.mean(axis=0), atol=1e-5
        )


def test_encoder_weights_equal_the_embedders_own_model_run_eager(embedder):
    """The twin shares the embedder's weights and leaves the embedder on its own attention."""
    bert = ed.bert_of(embedder)
    before = bert.config._attn_implementation
    ids = ed.encoder_ids(embedder, SENTENCE)
    assert ids == embedder.tokenizer(SENTENCE)["input_ids"]
    square = ed.encoder_attention(embedder, SENTENCE, layer=4, head=5)
    assert bert.config._attn_implementation == before
    q, k = (
        bert.encoder.layer[0].attention.self.query,
        ed._eager_encoder(embedder).encoder.layer[0].attention.self.query,
    )
    assert q.weight.data_ptr() == k.weight.data_ptr()  # no second copy of the weights
    # An independent reference: the original model switched to eager for one pass.
    with torch.inference_mode():
        try:
            bert.set_attn_implementation("eager")
            out = bert(input_ids=torch.tensor([ids]), output_attentions=True)
        finally:
            bert.set_attn_implementation(before)
    np.testing.assert_allclose(square.weights, out.attentions[4][0, 5].numpy(), atol=1e-6)


def test_the_two_tokenizers_differ_on_the_same_text(lm, embedder):
    enc = ed.encoder_attention(embedder, SENTENCE, 0)
    dec = ed.decoder_attention(lm, SENTENCE, 0)
    assert enc.labels != dec.labels
    assert "·animal" in dec.labels and "animal" in enc.labels


def test_typed_special_tokens_stay_text(lm, embedder):
    text = "a [SEP] b <|im_end|> c"
    assert ed.encoder_ids(embedder, text).count(embedder.tokenizer.sep_token_id) == 1  # only the one added
    assert lm.tokenizer.convert_tokens_to_ids("<|im_end|>") not in ed.decoder_ids(lm, text)


def test_bad_layer_or_head_is_refused(lm, embedder):
    with pytest.raises(ValueError, match="layer"):
        ed.decoder_attention(lm, SENTENCE, lm.n_layers)
    with pytest.raises(ValueError, match="head"):
        ed.encoder_attention(embedder, SENTENCE, 0, 12)
    with pytest.raises(ValueError, match="no text"):
        ed.decoder_attention(lm, "", 0)


def test_above_diagonal_share_and_bounds():
    assert ed.above_diagonal_share(np.array([[1.0, 0.0], [0.5, 0.5]])) == 0.0
    assert ed.above_diagonal_share(np.full((2, 2), 0.5)) == pytest.approx(0.25)
    assert ed.bounded("abcdef", 4) == ed.Bounded("abcd", True, 6)
    assert ed.bounded("abc", 4) == ed.Bounded("abc", False, 3)


def test_frame_and_charts(lm, embedder):
    enc = ed.attention_frame(ed.encoder_attention(embedder, SENTENCE, 1))
    dec = ed.attention_frame(ed.decoder_attention(lm, SENTENCE, 1))
    assert list(dec.columns) == ["query", "key", "query_token", "key_token", "weight", "masked"]
    assert dec["masked"].eq(dec["key"] > dec["query"]).all() and not enc["masked"].any()
    assert dec.loc[dec["masked"], "weight"].eq(0).all()
    assert dec["query_token"].nunique() == dec["query"].nunique()  # a repeated token keeps its own row
    left, right = charts.side_by_side(enc, dec, (("encoder", "layer 2"), ("decoder", "layer 2")))
    specs = [left.to_dict(), right.to_dict()]
    top = max(enc["weight"].max(), dec["weight"].max())
    for spec in specs:
        colour = spec["encoding"]["color"]  # grey where masked, else the weight's scale
        assert colour["condition"]["value"] == charts.MASKED_COLOUR
        assert colour["field"] == "weight" and colour["scale"]["domain"] == [
            0,
            top,
        ]  # one colour scale for both
        assert spec["width"] == "container"
        assert {t["field"] for t in spec["encoding"]["tooltip"]} >= {"query_token", "key_token", "weight"}


def test_message_choices_label_every_user_and_assistant_message():
    messages = [
        Message("system", "You are helpful."),
        Message("user", "What is the capital of Australia?"),
        Message("assistant", "Canberra."),
        Message("user", "What is its population?"),
        Message("assistant", "About 460,000 people " * 10),
    ]
    labels = [c.label for c in ed.message_choices(messages)]
    assert labels[:3] == [
        "Your message 1: What is the capital of Australia?",
        "Reply 1: Canberra.",
        "Your message 2: What is its population?",
    ]
    assert labels[3].startswith("Reply 2: About 460,000") and labels[3].endswith("…")


# -- the page ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def conversation(lm) -> list[Message]:
    messages = [
        Message("system", "You are a helpful assistant."),
        Message("user", "What is the capital of France?"),
    ]
    reply = make_trace(lm, messages)
    messages.append(Message("assistant", reply.text, trace=reply))
    return messages


def _open(conversation: list[Message], **state) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=180)
    at.session_state["chat.messages"] = conversation
    for key, value in state.items():
        at.session_state[key] = value
    at.switch_page(PAGE)
    return at.run()


def _charts(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("vega_lite_chart")]


def test_page_draws_both_heatmaps_for_the_last_message(conversation):
    at = _open(conversation)
    assert not at.exception
    specs = _charts(at)
    assert len(specs) == 2
    titles = [(s["title"]["text"], s["title"]["subtitle"]) for s in specs]
    assert titles[0] == ("all-MiniLM-L6-v2 (encoder)", "layer 1 of 6, mean of all 12 heads")
    assert titles[1] == ("SmolLM2-135M-Instruct (decoder)", "layer 1 of 30, mean of all 9 heads")
    assert at.selectbox(key="encdec.message").value == 2  # the reply, the last message
    captions = " ".join(c.value for c in at.caption)
    assert "0.0%" in captions  # the decoder's share above the diagonal
    assert "The square and the triangle" in " ".join(m.value for m in at.markdown)


def test_page_layer_and_head_pickers_and_a_typed_sentence(conversation):
    at = _open(conversation)
    at.slider(key="encdec.dec_layer").set_value(30).run()
    at.selectbox(key="encdec.dec_head").set_value(8).run()
    at.selectbox(key="encdec.enc_head").set_value(0).run()
    assert not at.exception
    subtitles = [s["title"]["subtitle"] for s in _charts(at)]
    assert subtitles == ["layer 1 of 6, head 1", "layer 30 of 30, head 9"]
    at.segmented_control(key="encdec.source").set_value("Your own sentence").run()
    at.text_area(key="encdec.typed").set_value("Cats sleep.").run()
    assert not at.exception
    assert len(_charts(at)) == 2


def test_layer_head_and_message_survive_a_visit_to_another_page(conversation):
    at = _open(conversation)
    at.selectbox(key="encdec.message").set_value(1).run()
    at.slider(key="encdec.enc_layer").set_value(4).run()
    at.selectbox(key="encdec.dec_head").set_value(2).run()
    at.switch_page("pages/about.py").run()
    at.switch_page(PAGE).run()
    assert not at.exception
    assert at.selectbox(key="encdec.message").value == 1
    assert at.slider(key="encdec.enc_layer").value == 4 and at.selectbox(key="encdec.dec_head").value == 2


def test_a_long_message_is_cut_with_a_notice(lm):
    messages = [Message("system", "s"), Message("user", "word " * 200)]
    at = _open(messages)
    assert not at.exception
    assert any("1,000 characters" in i.value and "first 300" in i.value for i in at.info)
    assert len(_charts(at)) == 2


def test_page_without_a_chat_offers_typing(lm):
    at = _open([])
    assert not at.exception
    assert any("type a sentence" in i.value for i in at.info)
    assert len(_charts(at)) == 2  # the example sentence
