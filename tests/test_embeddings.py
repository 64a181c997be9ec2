"""Token and sentence vectors: similarity, PCA, nearest words, analogies, conversation ranking."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from core.conversation import Message
from core.explain import embeddings as emb
from core.models import LoadedModel, load_embedder
from core.trace import Trace


@pytest.fixture(scope="module")
def embedder():
    return load_embedder()


def whole(trace: Trace) -> emb.MessagePart:
    """A part covering every token of the trace (prompt + reply)."""
    return emb.MessagePart("all", "assistant", 0, 0, len(trace.full_ids))


def test_cosine_matrix_is_symmetric_with_ones_on_the_diagonal(lm: LoadedModel, greedy_trace: Trace):
    for layer in (0, 7, lm.n_layers):
        sim = emb.cosine_matrix(emb.token_vectors(lm, greedy_trace, whole(greedy_trace), layer))
        n = len(greedy_trace.full_ids)
        assert sim.shape == (n, n)
        np.testing.assert_array_equal(sim, sim.T)
        np.testing.assert_allclose(np.diag(sim), 1.0, atol=1e-9)
        assert sim.min() >= -1.0 and sim.max() <= 1.0


def test_cosine_matrix_matches_a_direct_formula():
    x = np.random.default_rng(0).normal(size=(5, 8))
    expected = (x @ x.T) / np.outer(np.linalg.norm(x, axis=1), np.linalg.norm(x, axis=1))
    np.testing.assert_allclose(emb.cosine_matrix(x), expected, atol=1e-12)


def test_equal_tokens_share_an_input_embedding_but_not_a_hidden_state(lm: LoadedModel, greedy_trace: Trace):
    ids = greedy_trace.full_ids
    of = lm.tokenizer.encode(" of", add_special_tokens=False)[0]
    first, second = [i for i, t in enumerate(ids) if t == of][:2]  # "capital of France", "And of Italy"
    part = whole(greedy_trace)
    at_input = emb.cosine_matrix(emb.token_vectors(lm, greedy_trace, part, 0))
    assert at_input[first, second] == pytest.approx(1.0, abs=1e-9)
    layer = 12
    in_context = emb.cosine_matrix(emb.token_vectors(lm, greedy_trace, part, layer))
    assert in_context[first, second] < 0.99


def test_centring_keeps_equal_tokens_equal_and_spreads_hidden_states(lm: LoadedModel, greedy_trace: Trace):
    ids = greedy_trace.full_ids
    of = lm.tokenizer.encode(" of", add_special_tokens=False)[0]
    first, second = [i for i, t in enumerate(ids) if t == of][:2]
    part = whole(greedy_trace)
    centred = emb.cosine_matrix(emb.token_vectors(lm, greedy_trace, part, 0), centre=True)
    assert centred[first, second] == pytest.approx(1.0, abs=1e-9)
    np.testing.assert_allclose(np.diag(centred), 1.0)
    np.testing.assert_array_equal(centred, centred.T)
    states = emb.token_vectors(lm, greedy_trace, part, 12)[1:]  # (n, d) without the first token
    off = ~np.eye(len(states), dtype=bool)
    raw, spread = emb.cosine_matrix(states)[off], emb.cosine_matrix(states, centre=True)[off]
    assert spread.mean() < raw.mean() - 0.1  # the shared direction made everything look alike
    assert emb.cosine_matrix(np.ones((1, 4)), centre=True).tolist() == [[1.0]]


def test_layer_vectors_come_from_one_cached_forward_pass(lm: LoadedModel, greedy_trace: Trace):
    states = emb.trace_states(lm, greedy_trace)
    assert states.shape == (lm.n_layers + 1, len(greedy_trace.full_ids), lm.model.config.hidden_size)
    assert emb.trace_states(lm, greedy_trace) is states  # cached: no second pass
    # layer 0 of the pass is exactly the input-embedding lookup
    torch.testing.assert_close(states[0], emb.input_embeddings(lm, greedy_trace.full_ids))
    with pytest.raises(ValueError):
        emb.token_vectors(lm, greedy_trace, whole(greedy_trace), lm.n_layers + 1)


def test_pca_explained_variance_matches_scikit_learn(lm: LoadedModel, greedy_trace: Trace):
    vectors = emb.token_vectors(lm, greedy_trace, whole(greedy_trace), 9).numpy().astype(np.float64)
    projection = emb.pca_2d(vectors)
    reference = PCA(n_components=2, svd_solver="full").fit(vectors)
    np.testing.assert_allclose(projection.explained, reference.explained_variance_ratio_, rtol=1e-6)
    coords = reference.transform(vectors)  # same axes up to sign
    for k in range(2):
        sign = np.sign(coords[0, k]) * np.sign(projection.coords[0, k])
        np.testing.assert_allclose(projection.coords[:, k] * sign, coords[:, k], atol=1e-6)


def test_pca_of_points_on_a_line_puts_all_variance_on_the_first_axis():
    x = np.outer(np.arange(6.0), np.array([1.0, 2.0, -1.0]))  # (6, 3), rank 1 after centring
    projection = emb.pca_2d(x)
    assert projection.explained[0] == pytest.approx(1.0)
    assert projection.explained[1] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("word", [" king", " Paris", " the", "ing", "\n"])
def test_nearest_neighbours_of_a_token_start_with_itself(lm: LoadedModel, word: str):
    token_id = lm.tokenizer.encode(word, add_special_tokens=False)[0]
    result = emb.nearest_tokens(lm, token_id, 10)
    assert len(result) == 10
    assert result.iloc[0]["token_id"] == token_id
    assert result.iloc[0]["similarity"] == pytest.approx(1.0, abs=1e-5)
    assert result["similarity"].is_monotonic_decreasing
    assert result["token_id"].is_unique


def test_nearest_words_search_the_whole_vocabulary(lm: LoadedModel):
    weight = lm.model.get_input_embeddings().weight.detach()
    assert weight.shape[0] == lm.vocab_size == 49152
    last = lm.vocab_size - 1
    assert emb.nearest_tokens(lm, last, 1).iloc[0]["token_id"] == last


def test_analogy_king_minus_man_plus_woman(lm: LoadedModel):
    result = emb.analogy(lm, "king", "man", "woman", 10)
    tokens = result["token"].str.strip("·").str.lower().tolist()
    assert "queen" in tokens[:3]
    assert not set(result["token_id"]) & {
        t for w in ("king", "man", "woman") for t in emb.word_ids(lm, w)
    }  # the typed words are left out
    with pytest.raises(ValueError):
        emb.analogy(lm, "king", "", "woman")


def test_message_parts_follow_the_spans(lm: LoadedModel, greedy_trace: Trace, two_turn: list[Message]):
    parts = emb.message_parts(greedy_trace, two_turn)
    assert [p.role for p in parts] == ["system", "user", "assistant", "user", "assistant"]
    reply = parts[-1]
    assert greedy_trace.full_ids[reply.start : reply.end] == greedy_trace.output_ids
    user = parts[1]
    text = lm.tokenizer.decode(greedy_trace.full_ids[user.start : user.end])
    assert text == two_turn[1].content


def test_similarity_frame_keeps_repeated_tokens_apart():
    frame = emb.similarity_frame(["·the", "·cat", "·the"], np.eye(3))
    assert len(frame) == 9
    assert frame["row_label"].nunique() == 3
    assert frame.query("row == 0 and col == 2")["similarity"].item() == 0.0


def test_split_sentences():
    assert emb.split_sentences("Hi there. How are you?\nFine!  Yes") == [
        "Hi there.",
        "How are you?",
        "Fine!",
        "Yes",
    ]
    assert emb.split_sentences("  ") == []


def test_sentence_similarity_orders_cat_kitten_stocks(embedder):
    texts = ["The cat sat on the mat.", "A kitten rests on a rug.", "Stock prices fell sharply today."]
    sim = emb.cosine_matrix(emb.sentence_vectors(embedder, texts))
    assert sim[0, 1] > sim[0, 2] + 0.3
    assert sim[1, 0] > sim[1, 2] + 0.3
    frame = emb.text_similarity(embedder, texts)
    assert frame.query("row == 1 and col == 2")["similarity"].item() == pytest.approx(sim[0, 1])


def test_sentence_vectors_are_cached_unit_vectors(embedder):
    text = "A unique sentence for the cache test, about lighthouses."
    first = emb.sentence_vectors(embedder, [text, text])
    assert first.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    again = emb.sentence_vectors(embedder, [text])
    assert np.array_equal(again[0], first[0])
    assert ("sentence", text) in emb._SENTENCES


def test_reply_about_ranks_the_related_message_first(embedder):
    conversation = [
        Message("system", "You are a helpful assistant."),
        Message("user", "My cat keeps sleeping on the keyboard."),
        Message("user", "Also, what is the stock market doing?"),
        Message("assistant", "Cats like warm places; give yours a heated bed near the desk."),
    ]
    for by in ("message", "sentence"):
        units = emb.conversation_units(conversation, by)
        vectors = emb.sentence_vectors(embedder, units["text"].tolist())
        reply = emb.sentence_vectors(embedder, [conversation[3].content])[0]
        ranking = emb.reply_about(units, vectors, reply, before=3)
        assert (ranking["message_index"] < 3).all()
        assert ranking.iloc[0]["message_index"] == 1
        assert ranking["similarity"].is_monotonic_decreasing
        frame, projection = emb.message_map(units, vectors)
        assert len(frame) == len(units) and 0 < sum(projection.explained) <= 1 + 1e-9


# -- centring on the whole vocabulary (issue 18, item 6) ---------------------------------------
def test_vocabulary_centring_undoes_the_shared_direction(lm: LoadedModel):
    """Raw cosine puts "Canberra" closer to <|im_end|> than to "Australia"; centred on the
    whole vocabulary's mean the order is the sensible one, and <|im_end|> falls near 0."""
    ids = [
        lm.tokenizer.encode(w, add_special_tokens=False)[0] for w in (" Canberra", " Australia", "<|im_end|>")
    ]
    vectors = emb.input_embeddings(lm, ids)  # (3, d)
    raw = emb.cosine_matrix(vectors)
    assert raw[0, 2] > raw[0, 1] > 0.5  # the 0.66 > 0.60
    weight = lm.model.get_input_embeddings().weight.detach().double()
    mean = emb.vocabulary_mean(lm)
    np.testing.assert_allclose(mean.double().numpy(), weight.mean(0).numpy(), atol=1e-6)
    centred = emb.cosine_matrix(vectors, origin=mean)
    assert centred[0, 1] > centred[0, 2] and abs(centred[0, 2]) < 0.15
    direct = (vectors.double() - mean.double()).numpy()
    want = direct @ direct.T / np.outer(np.linalg.norm(direct, axis=1), np.linalg.norm(direct, axis=1))
    np.testing.assert_allclose(centred, want, atol=1e-9)


def test_the_raw_cosine_note_gives_the_real_shared_direction(lm: LoadedModel):
    weight = lm.model.get_input_embeddings().weight.detach().double()
    mean = weight.mean(0)
    cos = (weight @ mean) / (weight.norm(dim=1) * mean.norm())
    assert emb.shared_direction(lm) == pytest.approx(float(cos.mean()), abs=1e-4)
    assert emb.shared_direction(lm) > 0.5  # every input embedding leans the same way
    note = emb.raw_cosine_note(lm)
    assert f"{emb.shared_direction(lm):.2f}" in note and note.count(". ") == 0  # one sentence
    assert list(emb.CENTRES)[0] == "vocabulary"  # the page's default
