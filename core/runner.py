"""The model interface: everything the decode loop and the explanations may ask of a model.

In the spirit of llm-transparency-tool's TransparentLlm, without its god-class: a Runner
offers a decode step over a session's cache, the hidden states of every layer, attention
weights for chosen rows of one layer, the lens (final norm + unembedding), the embedding
matrix and the model's facts. Explainers and pages ask the Runner; none of them touches
`model.model.*` or a module's name.

Two implementations:
- GenericRunner: any transformers AutoModelForCausalLM, through its own forward, its own cache
  classes (DynamicCache, cropped for reuse) and its own attention functions.
- LlamaRunner: the same, with the lean Llama decode (core.kvcache) for speed. It is a speed-up
  of the generic path, not another model: tests compare their step records.

Attention rows come from the model's own attention code: a registered attention function runs
sdpa for the output and the model's *eager* function on the chosen query rows for the weights,
so q/k norms, scaled embeddings, sliding windows, soft-capping and biases are all the model's.
A self-check at load compares these rows with an eager `output_attentions` pass at 1e-5; where
it fails the runner says so (attention_exact False) and the views use the eager pass.
"""

from __future__ import annotations

import contextvars
import importlib
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from core.cores import torch_threads
from core.models import LoadedModel
from core.tokens import encode

ATTENTION_IMPL = "glassbox_rows"
SELF_CHECK_TOKENS = 24
SELF_CHECK_TOL = 1e-5


@dataclass(frozen=True)
class ModelFacts:
    """What a page may say about the model: numbers read from its config, never assumed."""

    architecture: str  # config.model_type, e.g. "llama", "qwen3", "gpt2"
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    head_dim: int
    vocab_size: int
    context_length: int
    positions: str  # "rotary" or "learned absolute"
    norm: str  # "RMSNorm" or "LayerNorm"
    qk_norm: bool  # queries and keys normalised before attention (Qwen3, Gemma 3)
    sliding_window: int | None  # keys further back than this are hidden on the sliding layers
    sliding_layers: tuple[int, ...] = ()  # 0-based layers that use the window
    tied_embeddings: bool = False
    embedding_scale: float = 1.0  # Gemma multiplies the input embeddings by sqrt(d_model)

    @property
    def total_heads(self) -> int:
        return self.n_layers * self.n_heads

    def describe(self) -> str:
        """One sentence for a page: the model's shape, in words."""
        kv = f", sharing {self.n_kv_heads} key/value heads" if self.n_kv_heads != self.n_heads else ""
        window = (
            f" {len(self.sliding_layers)} of its layers see only the last {self.sliding_window:,} tokens."
            if self.sliding_window and self.sliding_layers
            else ""
        )
        return (
            f"{self.n_layers} layers, each with {self.n_heads} attention heads{kv} "
            f"({self.total_heads:,} heads in all), vectors of {self.d_model:,} numbers, "
            f"{self.vocab_size:,} tokens in its vocabulary, {self.positions} position embeddings "
            f"and {self.norm}.{window}"
        )


def facts_of(config: Any, context_length: int | None = None) -> ModelFacts:
    """ModelFacts from a transformers config (any causal LM)."""
    text = getattr(config, "text_config", None) or config
    get = lambda *names, default=None: next(  # noqa: E731 - the config attribute names differ by family
        (getattr(text, n) for n in names if getattr(text, n, None) is not None), default
    )
    n_heads = int(get("num_attention_heads", "n_head"))
    d_model = int(get("hidden_size", "n_embd"))
    arch = str(getattr(text, "model_type", "unknown"))
    layer_types = tuple(get("layer_types", default=()) or ())
    window = get("sliding_window")
    sliding = tuple(i for i, t in enumerate(layer_types) if t == "sliding_attention")
    if window and not layer_types and get("use_sliding_window", default=True):
        sliding = tuple(range(int(get("num_hidden_layers", "n_layer"))))
    learned = get("position_embedding_type", default=None) == "absolute" or arch in ("gpt2", "gpt_neo", "opt")
    return ModelFacts(
        architecture=arch,
        n_layers=int(get("num_hidden_layers", "n_layer")),
        n_heads=n_heads,
        n_kv_heads=int(get("num_key_value_heads", default=n_heads)),
        d_model=d_model,
        head_dim=int(get("head_dim", default=d_model // n_heads)),
        vocab_size=int(get("vocab_size")),
        context_length=int(context_length or get("max_position_embeddings", "n_positions", default=2048)),
        positions="learned absolute" if learned else "rotary",
        norm="LayerNorm" if get("layer_norm_epsilon", "layer_norm_eps") is not None else "RMSNorm",
        qk_norm=arch in ("qwen3", "qwen3_moe", "gemma3", "gemma3_text", "olmo2", "olmo3"),
        sliding_window=int(window) if window and sliding else None,
        sliding_layers=sliding if window else (),
        tied_embeddings=bool(get("tie_word_embeddings", default=False)),
        embedding_scale=float(d_model**0.5) if arch.startswith("gemma") else 1.0,
    )


# -- attention rows through the model's own attention code ----------------------------------------
@dataclass
class _Recording:
    layers: set[int]  # record these layers; stop the pass after the last of them
    rows: torch.Tensor  # (R,) query positions
    weights: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (heads, R, T), at the end
    # the block being run (a long input runs in blocks, each reading the keys cached before it):
    which: torch.Tensor | None = None  # indices into rows of the rows inside this block
    local: torch.Tensor | None = None  # those rows' positions within the block
    parts: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = field(default_factory=dict)

    def block(self, start: int, end: int) -> None:
        inside = (self.rows >= start) & (self.rows < end)
        self.which = inside.nonzero().flatten()
        self.local = self.rows[self.which] - start

    def assemble(self, T: int) -> None:
        """Each layer's parts (rows of one block, keys up to its end) into (heads, R, T)."""
        for layer, parts in self.parts.items():
            heads = parts[0][1].shape[0]
            out = torch.zeros(heads, len(self.rows), T)
            for which, w in parts:
                out[:, which, : w.shape[-1]] = w
            self.weights[layer] = out


_RECORDING: contextvars.ContextVar[_Recording | None] = contextvars.ContextVar("glassbox_rows", default=None)


class _Done(Exception):
    """Raised after the recorded layer: later layers are not needed."""


def _rows_attention(module, query, key, value, attention_mask, **kwargs):
    """sdpa for the layer's output; the model's own eager function for the recorded rows' weights."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    eager = importlib.import_module(type(module).__module__).eager_attention_forward
    rec = _RECORDING.get()
    layer = getattr(module, "layer_idx", None)
    if rec is not None and layer in rec.layers:
        if len(rec.local):
            mask = None if attention_mask is None else attention_mask[:, :, rec.local]
            _, weights = eager(module, query[:, :, rec.local], key, value, mask, **kwargs)
            rec.parts.setdefault(layer, []).append((rec.which, weights[0].float()))  # (heads, r, keys)
        if layer == max(rec.layers):
            raise _Done
    if kwargs.get("softcap") is not None or kwargs.get("s_aux") is not None:
        return eager(module, query, key, value, attention_mask, **kwargs)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


_REGISTERED = threading.Lock()
_registered = False


def _register() -> None:
    global _registered
    with _REGISTERED:
        if _registered:
            return
        from transformers import AttentionInterface
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

        AttentionInterface.register(ATTENTION_IMPL, _rows_attention)
        ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION_IMPL, eager_mask)  # an explicit float mask
        _registered = True


class _implementation:
    """Switch the model's attention implementation for one pass (the caller holds the model lock)."""

    def __init__(self, model: Any, name: str) -> None:
        self.model, self.name = model, name

    def __enter__(self):
        self.saved = self.model.config._attn_implementation
        self.model.set_attn_implementation(self.name)

    def __exit__(self, *exc) -> None:
        self.model.set_attn_implementation(self.saved)


# -- long passes share the model ----------------------------------------------------------------
Progress = Callable[[float, str], None]  # (share of the pass done, "layer 12 of 30, tokens 1–512 of 8,000")
_PROGRESS: contextvars.ContextVar[Progress | None] = contextvars.ContextVar("glassbox_progress", default=None)
BLOCK_S = 0.08  # a long input runs in blocks sized so that one layer of a block takes about this long
MIN_BLOCK, MAX_BLOCK, FIRST_BLOCK = 64, 4096, 512


@contextmanager
def reporting(progress: Progress) -> Iterator[None]:
    """Within this block, this thread's model passes call progress(done, words) before each
    decoder layer. A page shows "layer 12 of 30" with it; an exception it raises (Streamlit's,
    when the visitor moved on) stops the pass there, the model lock released."""
    token = _PROGRESS.set(progress)
    try:
        yield
    finally:
        _PROGRESS.reset(token)


def decoder_layers(model: Any) -> list[torch.nn.Module]:
    """The model's decoder blocks, in order (Llama-style `layers`, GPT-2's `h`)."""
    base = model.base_model
    for name in ("layers", "h", "blocks"):
        found = getattr(base, name, None)
        if isinstance(found, torch.nn.ModuleList):
            return list(found)
    return []


class _sharing:
    """For one pass of the model (the caller holds its lock): before each decoder layer, report
    progress and hand the model to whoever waits for it (core/fairlock.py). With the input run
    in blocks (Runner._blocks), no pass holds the model for longer than one layer of one block
    (about BLOCK_S) while a chat waits. The attention implementation the pass switched to is
    put back while the other holder runs, and set again after.

    Enter it before _implementation, so it knows the implementation to put back.
    """

    def __init__(self, runner: Runner, T: int, layers: int | None = None) -> None:
        self.runner, self.T, self.layers = runner, T, layers
        self.span = (0, T)  # the block running now (Runner._blocks moves it)
        self.waited = 0.0  # seconds spent handing the model to others

    def __enter__(self) -> _sharing:
        model, lock = self.runner.model, self.runner.lm.lock
        original, threads = model.config._attn_implementation, torch_threads()
        self.caller_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
        progress, me = _PROGRESS.get(), threading.get_ident()
        blocks = decoder_layers(model)
        total = len(blocks) if self.layers is None else min(self.layers, len(blocks))

        def hand_over() -> None:
            mine = model.config._attn_implementation
            model.set_attn_implementation(original)
            began = time.perf_counter()
            try:
                if lock.yield_turn():
                    torch.set_num_threads(threads)
            finally:
                self.waited += time.perf_counter() - began
                model.set_attn_implementation(mine)

        def backward(_module: Any, _grads: Any) -> None:  # an attribution's backward pass, layer by layer
            if threading.get_ident() == me and lock.waiting():
                hand_over()

        def before(i: int) -> Callable[..., None]:
            def hook(_module: Any, _args: Any) -> None:
                if threading.get_ident() != me:
                    return  # another holder's pass through the same modules, while this one waits
                if progress is not None:
                    start, end = self.span
                    where = (
                        "" if (start, end) == (0, self.T) else f", tokens {start + 1:,}–{end:,} of {self.T:,}"
                    )
                    progress((start + (end - start) * i / total) / self.T, f"layer {i + 1} of {total}{where}")
                if lock.waiting():
                    hand_over()

            return hook

        self.handles = [block.register_forward_pre_hook(before(i)) for i, block in enumerate(blocks[:total])]
        if torch.is_grad_enabled() and not torch.is_inference_mode_enabled():
            self.handles += [block.register_full_backward_pre_hook(backward) for block in blocks[:total]]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()
        torch.set_num_threads(self.caller_threads)


class _frozen:
    """The model's weights need no gradient for an attribution (only its inputs do): not
    tracking them saves the memory and time of their gradients. Put back on exit."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def __enter__(self) -> None:
        self.saved = [(p, p.requires_grad) for p in self.model.parameters()]
        for p, _ in self.saved:
            p.requires_grad_(False)

    def __exit__(self, *exc: object) -> None:
        for p, flag in self.saved:
            p.requires_grad_(flag)


# -- the runner ---------------------------------------------------------------------------------
@dataclass
class Runner:
    """Everything the app may ask of one loaded model. Every call takes the model's lock."""

    lm: LoadedModel
    facts: ModelFacts
    attention_exact: bool | None = None  # the self-check's verdict (None: not run yet)
    check_error: float | None = None  # the largest difference the self-check saw
    _check_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def model(self) -> Any:
        return self.lm.model

    # -- what the model is -----------------------------------------------------------------
    @property
    def lean(self) -> Any:
        return self.lm.lean

    # -- states, lens, embeddings ----------------------------------------------------------
    def hidden_states(self, ids: list[int]) -> torch.Tensor:
        """The residual stream at every layer: (layers + 1, T, d_model), fp32.

        Index 0 is the input embeddings (scaled as the model scales them), index L the output
        of block L; the last has the final norm applied (transformers' convention).
        """
        parts: list[tuple[torch.Tensor, ...]] = []

        def run(block: list[int], cache: Any) -> None:
            out = self.model(
                input_ids=torch.tensor([block]),
                cache=cache,
                use_cache=cache is not None,
                output_hidden_states=True,
                logits_to_keep=1,
            )
            parts.append(out.hidden_states)

        with self.lm.lock, torch.inference_mode(), _sharing(self, len(ids)) as share:
            self._blocks(ids, share, self.facts.n_layers, run)
        return torch.cat(
            [torch.stack([h[0] for h in states]) for states in parts], dim=1
        ).float()  # (layers+1, T, d)

    def _blocks(
        self,
        ids: list[int],
        share: _sharing,
        layers: int,
        run: Callable[[list[int], Any], None],
        block: int | None = None,
    ) -> None:
        """Run the model over ids (the caller holds the lock and `share`): a short input at once,
        a long one in blocks that each read the keys and values cached before them, sized as it
        goes so that one layer of a block takes about BLOCK_S on this machine. Then a chat waits
        at most about that long for its turn (_sharing hands over between two layers).

        block: a fixed block size (the self-check proves the blocks give the same numbers).
        Not for sliding-window models (their cache keeps only the window): those run at once.
        """
        T = len(ids)
        if self.facts.sliding_layers or (block is None and T <= FIRST_BLOCK):
            share.span = (0, T)
            run(ids, None)
            return
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        start, size = 0, block or FIRST_BLOCK
        while start < T:
            end = min(T, start + size)
            share.span = (start, end)
            began, waited = time.perf_counter(), share.waited
            run(ids[start:end], cache)
            if block is None:  # the time of one layer, not counting turns handed to others
                per_layer = (time.perf_counter() - began - (share.waited - waited)) / max(layers, 1)
                size = int(min(MAX_BLOCK, max(MIN_BLOCK, size * BLOCK_S / max(per_layer, 1e-6))))
            start = end

    def final_norm(self) -> torch.nn.Module:
        """The norm before the unembedding (the decoder's last module)."""
        base = self.model.base_model
        for name in ("norm", "ln_f", "final_layernorm", "final_layer_norm", "norm_f"):
            module = getattr(base, name, None)
            if isinstance(module, torch.nn.Module):
                return module
        raise LookupError(f"no final norm found on {type(base).__name__}")

    def unembed(self, states: torch.Tensor) -> torch.Tensor:
        """The output head on already-normed states, with the model's logit soft-capping: (..., vocab)."""
        logits = self.model.get_output_embeddings()(states)
        cap = getattr(
            getattr(self.model.config, "text_config", self.model.config), "final_logit_softcapping", None
        )
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def lens(self, states: torch.Tensor) -> torch.Tensor:
        """The logit lens on hidden_states' output: (layers + 1, ..., vocab).

        subtle: the last state already went through the final norm, so it goes straight to the
        head; the last row then equals the model's real logits.
        """
        norm = self.final_norm()
        with torch.inference_mode():
            return torch.cat([self.unembed(norm(states[:-1])), self.unembed(states[-1:])])

    def embedding_matrix(self) -> torch.Tensor:
        """The input embedding table (vocab, d), unscaled (see facts.embedding_scale)."""
        return self.model.get_input_embeddings().weight.detach()

    def embed(self, ids: list[int]) -> torch.Tensor:
        """The input vectors the first layer reads for ids: (T, d), scaling included. A plain
        tensor (no gradient, not an inference tensor), so that attribution can build on it."""
        with torch.no_grad():
            return self.model.get_input_embeddings()(torch.tensor(ids)).float()

    # -- gradients, for attribution ------------------------------------------------------------
    def input_gradients(
        self,
        ids: list[int],
        target: int,
        contrast: int | None = None,
        alphas: list[float] | tuple[float, ...] = (1.0,),
        batch: int = 4,
        on_chunk: Callable[[int, int], None] | None = None,
        baseline: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The gradient of f = the next-token logit of `target` (minus that of `contrast`) with
        respect to the input vectors the model read for ids (template tokens included, scaled
        as the model scales them), at those vectors times each alpha: 1.0 is the real input,
        integrated gradients walks from 0 to 1. baseline (d,) or (T, d): the point alpha = 0
        (None: all-zero vectors); the input is then baseline + alpha * (vectors - baseline).

        -> (vectors (T, d), gradients (len(alphas), T, d), f at each alpha (len(alphas),)).
        Runs up to `batch` alphas per pass (fewer for a long context, so that a backward pass
        layer stays short: a waiting chat gets the model between two layers, forwards and
        backwards); on_chunk(done, total) after each pass (a page's progress).
        """
        vectors = self.embed(ids)  # (T, d)
        grads: list[torch.Tensor] = []
        values: list[torch.Tensor] = []
        scales = torch.tensor(list(alphas), dtype=torch.float32)
        dtype = next(self.model.parameters()).dtype
        batch = max(1, min(batch, 1024 // max(len(ids), 1)))  # a long context: one point a pass
        with self.lm.lock, torch.enable_grad(), _sharing(self, len(ids)), _frozen(self.model):
            for start in range(0, len(scales), batch):
                part = scales[start : start + batch]
                start_at = torch.zeros_like(vectors) if baseline is None else baseline.expand_as(vectors)
                x = (
                    (start_at[None] + part[:, None, None] * (vectors - start_at)[None])
                    .to(dtype)
                    .requires_grad_(True)
                )
                with torch.enable_grad():
                    logits = (
                        self.model(inputs_embeds=x, use_cache=False, logits_to_keep=1).logits[:, -1].float()
                    )
                    f = logits[:, target] - (logits[:, contrast] if contrast is not None else 0.0)
                    (g,) = torch.autograd.grad(f.sum(), x)
                grads.append(g.float())
                values.append(f.detach())
                if on_chunk is not None:
                    on_chunk(min(start + batch, len(scales)), len(scales))
        return vectors, torch.cat(grads), torch.cat(values)

    def deletion_probs(self, ids: list[int], deletions: list[list[int]]) -> torch.Tensor:
        """The next-token distribution after ids, once for each set of deleted positions (their
        input vectors set to 0, for the faithfulness of an attribution): (len(deletions), vocab).

        The sets run as batches of inputs, about 2,048 token rows a pass (one pass for a short
        chat): fewer, larger matrix products than one pass per set, with the same numbers.
        """
        vectors = self.embed(ids).to(next(self.model.parameters()).dtype)
        per_pass = max(1, 2048 // max(len(ids), 1))
        out = []
        with self.lm.lock, torch.inference_mode(), _sharing(self, len(ids) * min(per_pass, len(deletions))):
            for start in range(0, len(deletions), per_pass):
                part = deletions[start : start + per_pass]
                x = vectors[None].repeat(len(part), 1, 1)
                for row, positions in enumerate(part):
                    if positions:
                        x[row, list(positions)] = 0.0
                logits = self.model(inputs_embeds=x, use_cache=False, logits_to_keep=1).logits[:, -1]
                out.append(torch.softmax(logits.float(), -1))
        return torch.cat(out)

    # -- attention ---------------------------------------------------------------------------
    def attention_rows(self, ids: list[int], layer: int, rows: list[int] | torch.Tensor) -> torch.Tensor:
        """Attention weights of one layer for the chosen query positions: (heads, R, T).

        Exact where the self-check passed; otherwise computed by an eager pass (slower, the
        same numbers). Layers after `layer` are not run.
        """
        if not 0 <= layer < self.facts.n_layers:
            raise ValueError(f"layer {layer} is outside this model's {self.facts.n_layers} layers")
        rows = torch.as_tensor(rows, dtype=torch.long)
        if self.self_check():
            return self._rows_pass(ids, {layer}, rows)[layer]
        return self.eager_attention(ids)[layer][:, rows]

    def _rows_pass(
        self, ids: list[int], layers: set[int], rows: torch.Tensor, block: int | None = None
    ) -> dict[int, torch.Tensor]:
        return self._record(ids, _Recording(layers, rows), block)

    def _record(self, ids: list[int], rec: _Recording, block: int | None = None) -> dict[int, torch.Tensor]:
        """One forward pass (in blocks, for a long input) with the rows attention function
        recording rec's layers."""
        if not len(rec.rows):
            return {layer: torch.zeros(self.facts.n_heads, 0, len(ids)) for layer in rec.layers}
        _register()
        token = _RECORDING.set(rec)
        last = max(rec.layers) + 1

        def run(part: list[int], cache: Any) -> None:
            start = 0 if cache is None else cache.get_seq_length()
            rec.block(start, start + len(part))
            try:
                self.model(
                    input_ids=torch.tensor([part]),
                    cache=cache,
                    use_cache=cache is not None,
                    logits_to_keep=1,
                )
            except _Done:
                pass

        try:
            with (
                self.lm.lock,
                torch.inference_mode(),
                _sharing(self, len(ids), last) as share,
                _implementation(self.model, ATTENTION_IMPL),
            ):
                self._blocks(ids, share, last, run, block)
        finally:
            _RECORDING.reset(token)
        rec.assemble(len(ids))
        if set(rec.weights) != rec.layers:
            raise RuntimeError(f"layers {sorted(rec.layers - set(rec.weights))} were not reached")
        return rec.weights

    def eager_attention(self, ids: list[int]) -> list[torch.Tensor]:
        """Every layer's full attention from an eager output_attentions pass: [(heads, T, T)] * layers.

        The reference: the model's own weights, as transformers computes them. Memory grows
        with layers x heads x T^2: for short inputs, or as the fallback for one layer.
        """
        with (
            self.lm.lock,
            torch.inference_mode(),
            _sharing(self, len(ids)),
            _implementation(self.model, "eager"),
        ):
            out = self.model(
                input_ids=torch.tensor([ids]), output_attentions=True, use_cache=False, logits_to_keep=1
            )
        return [a[0].float() for a in out.attentions]

    def self_check(self) -> bool:
        """Once per model: the rows pass against an eager pass on a short input, every layer, at 1e-5."""
        if self.attention_exact is not None:
            return self.attention_exact
        with self._check_lock:
            if self.attention_exact is None:
                ids = _check_ids(self.lm, SELF_CHECK_TOKENS)
                rows = torch.tensor([0, len(ids) // 2, len(ids) - 1])
                layers = set(range(self.facts.n_layers))
                try:
                    ref = self.eager_attention(ids)
                    got = self._rows_pass(ids, layers, rows)
                    # and in blocks, as a long input runs: the cached keys give the same numbers
                    blocks = self._rows_pass(ids, layers, rows, block=len(ids) // 3)
                    worst = max(
                        float((ref[i][:, rows] - w[i]).abs().max()) for i in layers for w in (got, blocks)
                    )
                except Exception:  # noqa: BLE001 - a model whose attention code we cannot hook
                    worst = float("inf")
                self.check_error = worst
                self.attention_exact = worst <= SELF_CHECK_TOL
        return self.attention_exact


def _check_ids(lm: LoadedModel, n: int) -> list[int]:
    """A short real prompt for the self-check (the chat template and a question)."""
    text = lm.tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France? Answer in one word."}],
        add_generation_prompt=True,
        tokenize=False,
    )
    ids = encode(lm.tokenizer, text, split_special=None)
    return (ids * (n // max(len(ids), 1) + 1))[:n]


_RUNNERS: dict[int, Runner] = {}
_RUNNERS_LOCK = threading.Lock()


def runner_for(lm: LoadedModel) -> Runner:
    """The one Runner of a loaded model (made on first use)."""
    with _RUNNERS_LOCK:
        runner = _RUNNERS.get(id(lm))
        if runner is None or runner.lm is not lm:
            runner = Runner(lm, facts_of(lm.config, lm.context_length))
            _RUNNERS[id(lm)] = runner
        return runner


class GenericKV:
    """One chat session's keys and values for any transformers model, reused across turns.

    The model's own DynamicCache (made from its config, so sliding-window layers are what the
    model expects), kept with the ids it has read. As with the lean SessionKV, reuse is keyed
    on the ids themselves: the cache is cropped back to the longest common prefix with the
    next prompt, so an edit, a regenerate or a trim is correct by construction. Where a cache
    cannot be cropped (a sliding window that has already slid), it is read afresh.
    Only touch it while holding the model's lock.
    """

    def __init__(self) -> None:
        self.cache: Any = None
        self.ids: list[int] = []
        self.model_id: int | None = None
        self.reused = 0

    def clear(self) -> None:
        self.cache, self.ids, self.model_id, self.reused = None, [], None, 0

    def prepare(self, model: Any, prompt_ids: list[int]) -> int:
        """Cut the cache back to its longest common prefix with prompt_ids; returns its length.

        At most len(prompt_ids) - 1: the last prompt token is read again for the next-token scores.
        """
        from transformers import DynamicCache

        if self.model_id != id(model):
            self.clear()
        keep = 0
        limit = min(len(self.ids), len(prompt_ids) - 1)
        while keep < limit and self.ids[keep] == prompt_ids[keep]:
            keep += 1
        if self.cache is not None and keep < len(self.ids):
            try:
                self.cache.crop(-(len(self.ids) - keep))
            except (RuntimeError, ValueError, TypeError):  # cannot roll back: read everything again
                self.cache, keep = None, 0
        if self.cache is None:
            self.cache = DynamicCache(config=model.config)
            if hasattr(self.cache, "activate_past_recording"):
                self.cache.activate_past_recording()  # sliding layers keep what a crop may need
            self.model_id, keep = id(model), 0
        self.ids = self.ids[:keep]
        self.reused = keep
        return keep

    def forward(self, model: Any, ids: list[int]) -> torch.Tensor:
        """Read ids after the cached ones; returns the next-token logits (vocab,), fp32."""
        start = len(self.ids)
        out = model(
            input_ids=torch.tensor([ids]),
            cache=self.cache,
            use_cache=True,
            logits_to_keep=1,
            position_ids=torch.arange(start, start + len(ids))[None],
        )
        self.ids.extend(ids)
        return out.logits[0, -1].float()


# == Added for the explanation pages (issue 15, items 1-2; not part of the lead's core) ==========
# Two passes the attention views need on top of Runner.attention_rows, each proven against
# Runner.eager_attention before it is used:
# - attention_rows_each_layer: the same query rows at EVERY layer in one pass, streamed to a
#   callback layer by layer (the overview and the walkthrough; one pass instead of one per layer);
# - session_rows: the lean Llama rows pass over a chat session's SessionKV (the attention page
#   after chatting reads the cached keys and values instead of running the whole context again),
#   with its own self-check, session_rows_exact.
class _Streamed(dict):
    """A _Recording's weights that hand each layer on as it is recorded instead of keeping it."""

    def __init__(self, on_layer) -> None:
        super().__init__()
        self.on_layer = on_layer

    def __setitem__(self, layer: int, weights: torch.Tensor) -> None:
        self.on_layer(layer, weights)  # (heads, R, T)
        super().__setitem__(layer, None)  # remembered as done, not kept


def attention_rows_each_layer(
    runner: Runner,
    ids: list[int],
    rows: list[int] | torch.Tensor,
    on_layer,
    last_layer: int | None = None,
) -> str:
    """The chosen query rows at every layer up to last_layer, in one pass -> "rows" or "eager".

    on_layer(layer, weights) gets weights of shape (heads, R, T) as each layer runs; nothing is
    kept, so memory is one layer's rows. Where the runner's self-check passed this is the same
    code as attention_rows (the model's own eager function on the chosen rows, sdpa for the
    rest) and the pass stops after last_layer; otherwise it is sliced from eager_attention
    ("eager": every layer's full weights at once, so the caller bounds the length).
    """
    last = runner.facts.n_layers - 1 if last_layer is None else last_layer
    if not 0 <= last < runner.facts.n_layers:
        raise ValueError(f"layer {last} is outside this model's {runner.facts.n_layers} layers")
    rows = torch.as_tensor(rows, dtype=torch.long)
    if not runner.self_check():
        for layer, weights in enumerate(runner.eager_attention(ids)[: last + 1]):
            on_layer(layer, weights[:, rows])
        return "eager"
    runner._record(ids, _Recording(set(range(last + 1)), rows, _Streamed(on_layer)))
    return "rows"


# subtle: the rows pass is ~20 small ops per layer; with 2 OpenMP threads on a shared 2-core
# machine each op waits for a core another process holds (measured: 8.0 s vs 0.5 s on 1 thread).
SESSION_ROWS_THREADS = 1
SESSION_MAX_EXTENSION = 0.5  # used when at most this share of the tokens is missing from the cache
_SESSION_CHECKS: dict[int, float] = {}  # lean model_id -> the self-check's largest difference


def session_prefix(runner: Runner, kv: Any, ids: list[int]) -> int:
    """How many leading positions of ids have their keys and values in kv, a SessionKV (0: unusable).

    Reuse is keyed on the token ids: K/V at position i depend only on ids[: i + 1], so the
    longest common prefix is valid by construction. Read under the model lock.
    """
    lean = runner.lean
    if lean is None or kv is None or kv.keys is None or kv.values is None or kv.model_id != lean.model_id:
        return 0
    n = min(len(kv.ids), len(ids), kv.capacity)
    same = torch.tensor(kv.ids[:n]) == torch.tensor(ids[:n])
    return n if bool(same.all()) else int((~same).nonzero()[0, 0])


def session_rows(
    runner: Runner,
    kv: Any,
    ids: list[int],
    rows: torch.Tensor,
    on_layer,
    last_layer: int | None = None,
) -> int | None:
    """The attention rows asked for, from the chat's cached keys and values (the lean Llama path).

    A query row's weights at layer L need only its own q at L and the keys at or before it;
    its hidden state at L needs only the cached K/V of the positions before it. So only the
    asked-for rows go through the layers (a per-row causal mask over the cached keys), plus
    the positions [c, T) missing from the cache (c = session_prefix), whose K/V are computed
    into scratch tensors. kv is only read: its ids and tensors are left as they are.

    on_layer(layer, positions, weights) gets the computed positions (sorted; a superset of
    rows) and weights (heads, len(positions), T). Returns c, or None (nothing computed) when
    there is no lean model, kv does not cover enough of ids (more than SESSION_MAX_EXTENSION
    of T missing) or the pass failed its self-check (session_rows_exact): use another pass.
    Holds the model lock for the whole computation.
    """
    T = len(ids)
    if runner.lean is None or kv is None or not kv.ids or not session_rows_exact(runner):
        return None
    with runner.lm.lock, torch.inference_mode():
        lean = runner.lean
        c = session_prefix(runner, kv, ids)
        if c == 0 or T - c > SESSION_MAX_EXTENSION * T:
            return None
        threads = torch.get_num_threads()
        torch.set_num_threads(min(SESSION_ROWS_THREADS, threads))
        try:
            _lean_rows(lean, kv.keys, kv.values, ids, c, rows, on_layer, last_layer)
        finally:
            torch.set_num_threads(threads)
    return c


def prove_in_background(lm: LoadedModel) -> threading.Thread:
    """Run both self-checks of lm's attention passes now, in a background thread: the rows
    pass (Runner.self_check) and, with a lean model, the session rows pass
    (session_rows_exact). Each is run once per model; done at load, so that the first
    Attention page a visitor opens does not wait for them."""

    def prove() -> None:
        runner = runner_for(lm)
        runner.self_check()
        session_rows_exact(runner)

    thread = threading.Thread(target=prove, name="glassbox-self-check", daemon=True)
    thread.start()
    return thread


def session_rows_exact(runner: Runner) -> bool:
    """Once per lean model: session_rows against eager_attention on a short input, at 1e-5.

    The cache holds the first two thirds of the input (as a chat leaves it) and every row is
    asked for, so both the cached keys and the scratch tail are proven, at every layer.
    """
    lean = runner.lean
    if lean is None:
        return False
    if lean.model_id not in _SESSION_CHECKS:
        with runner._check_lock:  # once, also when a page asks while the check runs at load
            if lean.model_id not in _SESSION_CHECKS:
                _SESSION_CHECKS[lean.model_id] = _session_check_error(runner, lean)
    return _SESSION_CHECKS[lean.model_id] <= SELF_CHECK_TOL


def _session_check_error(runner: Runner, lean: Any) -> float:
    """The largest difference between session_rows and eager_attention on the check input."""
    from core.kvcache import SessionKV

    ids = _check_ids(runner.lm, SELF_CHECK_TOKENS)
    cached = 2 * len(ids) // 3
    got: dict[int, torch.Tensor] = {}
    try:
        ref = runner.eager_attention(ids)
        kv = SessionKV(max_tokens=len(ids))
        with runner.lm.lock, torch.inference_mode():
            threads = torch.get_num_threads()
            torch.set_num_threads(min(SESSION_ROWS_THREADS, threads))  # as session_rows runs
            try:
                kv.prepare(lean, ids, len(ids))
                kv.forward(lean, ids[:cached])
                every = torch.arange(len(ids))
                keep = lambda i, pos, w: got.__setitem__(i, w.clone())  # noqa: E731
                _lean_rows(lean, kv.keys, kv.values, ids, cached, every, keep, None)
            finally:
                torch.set_num_threads(threads)
        return max(float((ref[i] - got[i]).abs().max()) for i in range(runner.facts.n_layers))
    except Exception:  # noqa: BLE001 - a lean model this pass does not fit
        return float("inf")


def _lean_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """LlamaRMSNorm op for op, as the lean decode computes it."""
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _lean_rows(lean, cache_keys, cache_values, ids, c, rows, on_layer, last_layer) -> None:
    """session_rows' computation (the caller holds the lock; the cache holds ids[:c])."""
    T = len(ids)
    pos = torch.unique(torch.cat([rows[rows < c], torch.arange(c, T)]))  # (n,) sorted
    n, first_new = len(pos), int((pos < c).sum())
    heads, kv_heads, hd = lean.n_heads, lean.n_kv_heads, lean.head_dim
    group, q_width, k_width, half = heads // kv_heads, heads * hd, kv_heads * hd, hd // 2
    cos_all, sin_all = lean.rope(T)
    cos, sin = cos_all[pos], sin_all[pos]  # (n, hd)
    hidden = torch.arange(T)[None, :] > pos[:, None]  # (n, T): keys after each row's own position
    h = lean.embed[torch.tensor(ids)[pos]]  # (n, d)
    last = lean.n_layers - 1 if last_layer is None else last_layer
    for i, w in enumerate(lean.layers[: last + 1]):
        x = _lean_rms_norm(h, w.ln1, lean.eps)
        qkv = x @ w.qkv  # (n, q_width + 2 * k_width)
        qk = qkv[:, : q_width + k_width].view(n, heads + kv_heads, hd).transpose(0, 1)  # (h+kv, n, hd)
        qk = qk * cos + qk.roll(half, dims=-1) * sin  # rotary, as SessionKV.forward applies it
        v = qkv[:, q_width + k_width :].view(n, kv_heads, hd).transpose(0, 1)  # (kv, n, hd)
        keys, values = cache_keys[i, :, :c], cache_values[i, :, :c]  # (kv, c, hd) read-only views
        if c < T:  # the uncached tail: this pass's own keys and values, in new tensors
            keys = torch.cat([keys, qk[heads:, first_new:]], dim=1)  # (kv, T, hd)
            values = torch.cat([values, v[:, first_new:]], dim=1)
        # Query head j uses kv head j // group (transformers' repeat_interleave order).
        q = qk[:heads].reshape(kv_heads, group * n, hd)  # (kv, group * n, hd)
        scores = (q @ keys.transpose(1, 2)).view(heads, n, T) * hd**-0.5  # (heads, n, T)
        weights = torch.softmax(scores.masked_fill_(hidden, float("-inf")), dim=-1)
        mixed = (weights.view(kv_heads, group * n, T) @ values).view(heads, n, hd)
        h = h + mixed.transpose(0, 1).reshape(n, q_width) @ w.o
        x = _lean_rms_norm(h, w.ln2, lean.eps)
        gate_up = x @ w.gate_up  # (n, 2 * ffn)
        h = h + (torch.nn.functional.silu(gate_up[:, : lean.ffn]) * gate_up[:, lean.ffn :]) @ w.down
        on_layer(i, pos, weights)
