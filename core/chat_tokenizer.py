"""The few tokenizer calls a chat makes, answered without importing transformers.

Importing transformers costs about 0.6 s of a start of about 2 s (its package import lists
the names in 1,667 model files), and the chat needs only five things from its tokenizer:
encode, decode, one token's text, the special ids and the chat template. The Rust tokenizer
(`tokenizers`) and jinja2 give those directly. Every other attribute is passed on to the
transformers tokenizer, which core.models' background thread loads (`load_full`).

Used only for the app's own converted cache, whose tokenizer.json transformers itself wrote
(save_pretrained), so the Rust tokenizer read from it is the one transformers would build.
tests/test_chat_tokenizer.py checks every answer against transformers' own, on the same folder.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from concurrent.futures import Future
from datetime import datetime
from pathlib import Path
from typing import Any

from core.imports import TRANSFORMERS_IMPORT

NAMED_SPECIAL = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# tokenizer_config.json keys read here, or that change nothing the chat asks for. Any other key
# that is set (add_bos_token, add_prefix_space, another *_token...) makes the folder NotPlain.
KNOWN_KEYS = frozenset(
    {
        *NAMED_SPECIAL,
        "added_tokens_decoder",
        "additional_special_tokens",
        "extra_special_tokens",
        "chat_template",
        "backend",
        "tokenizer_class",
        "is_local",
        "local_files_only",
        "model_max_length",
        "model_input_names",
        "padding_side",
        "truncation_side",
    }
)


class NotPlain(ValueError):
    """The folder's tokenizer needs transformers' own code for something the chat calls."""


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    raise NotPlain(f"special token written as {type(value).__name__}")


def _compile(template: str) -> Any:
    """The template compiled as transformers compiles it (utils/chat_template_utils.py):
    a sandbox, trim_blocks and lstrip_blocks, loop controls, and the same globals and filters
    (its {% generation %} tag marks assistant tokens, which the chat never asks for)."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(
        x: Any,
        ensure_ascii: bool = False,
        indent: Any = None,
        separators: Any = None,
        sort_keys: bool = False,
    ) -> str:
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as exc:  # e.g. transformers' own {% generation %} tag
        raise NotPlain(f"the chat template needs transformers' jinja extensions: {exc}") from exc


class ChatTokenizer:
    """encode / decode / convert_ids_to_tokens / special ids / apply_chat_template for a folder
    that transformers saved; anything else is the transformers tokenizer's (waits for `full`)."""

    def __init__(self, folder: Path, load: Callable[[], Any]) -> None:
        from tokenizers import Tokenizer

        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        unknown = sorted(k for k in config if k not in KNOWN_KEYS and (k.endswith("_token") or config[k]))
        if unknown or (folder / "special_tokens_map.json").exists():
            # transformers reads these (more special tokens, a BOS added, a prefix space...)
            raise NotPlain(
                f"tokenizer settings this class does not apply: {', '.join(unknown) or 'special_tokens_map.json'}"
            )
        if (folder / "additional_chat_templates").exists():
            raise NotPlain("more than one chat template")
        template_file = folder / "chat_template.jinja"
        template = (
            template_file.read_text(encoding="utf-8")
            if template_file.is_file()
            else config.get("chat_template")
        )
        if not isinstance(template, str):
            raise NotPlain("no single chat template")
        extra = config.get("extra_special_tokens", config.get("additional_special_tokens")) or []
        if not isinstance(extra, list):
            raise NotPlain("extra special tokens given by name")
        self._load = load
        self._full: Future = Future()
        self._loading = threading.Lock()
        self._backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self._template = _compile(template)
        self._named = {k: t for k in NAMED_SPECIAL if (t := _token_text(config.get(k))) is not None}
        specials = list(dict.fromkeys([*self._named.values(), *(_token_text(t) for t in extra)]))
        self.all_special_ids = [self._id_of(t) for t in specials]
        self.added_tokens_decoder = self._backend.get_added_tokens_decoder()
        self.eos_token_id = self._id_of(self._named["eos_token"]) if "eos_token" in self._named else None

    def _id_of(self, token: str | None) -> int | None:
        return None if token is None else self._backend.token_to_id(token)

    def load_full(self) -> None:
        """Load the transformers tokenizer (core.models calls this in its background thread)."""
        with TRANSFORMERS_IMPORT, self._loading:  # in this order wherever both are taken
            if self._full.done():
                return
            try:
                self._full.set_result(self._load())
            except BaseException as exc:  # noqa: BLE001 - handed to whoever asks for it
                self._full.set_exception(exc)

    @property
    def full(self) -> Any:
        """The transformers tokenizer: waits for the background load, or loads it here when
        no thread has started to (a tokenizer made outside core.models' start)."""
        if not self._full.done() and not self._loading.locked():
            self.load_full()
        return self._full.result()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # dunders, and this object's own fields before __init__ set them
            raise AttributeError(name)
        return getattr(self.full, name)

    def __len__(self) -> int:
        """The vocabulary with its added tokens, as len(PreTrainedTokenizerFast)."""
        return self._backend.get_vocab_size(with_added_tokens=True)

    def __call__(
        self,
        text: str,
        add_special_tokens: bool = True,
        split_special_tokens: bool | None = None,
        **kwargs: Any,
    ) -> dict[str, list[int]]:
        """{"input_ids": [...]} as PreTrainedTokenizerFast(text, ...) gives it, for one string.
        Callers serialise encodings (core.tokens.encode): the flag below is the tokenizer's own."""
        if kwargs or not isinstance(text, str):
            return self.full(
                text,
                add_special_tokens=add_special_tokens,
                split_special_tokens=split_special_tokens,
                **kwargs,
            )
        split = bool(split_special_tokens)  # the folder's default is False (checked at __init__)
        if self._backend.encode_special_tokens != split:
            self._backend.encode_special_tokens = split
        return {"input_ids": self._backend.encode(text, add_special_tokens=add_special_tokens).ids}

    def decode(self, token_ids: Any, skip_special_tokens: bool = False, **kwargs: Any) -> str:
        if kwargs:
            return self.full.decode(token_ids, skip_special_tokens=skip_special_tokens, **kwargs)
        ids = [int(token_ids)] if isinstance(token_ids, int) else [int(i) for i in token_ids]
        return self._backend.decode(ids, skip_special_tokens=skip_special_tokens)

    def convert_ids_to_tokens(self, ids: Any, skip_special_tokens: bool = False) -> Any:
        if isinstance(ids, int):
            return self._backend.id_to_token(ids)
        skip = set(self.all_special_ids) if skip_special_tokens else set()
        return [self._backend.id_to_token(int(i)) for i in ids if int(i) not in skip]

    def apply_chat_template(
        self,
        conversation: list[dict[str, str]],
        tokenize: bool = True,
        add_generation_prompt: bool = False,
        **kwargs: Any,
    ) -> Any:
        plain = all(
            isinstance(m, dict)
            and set(m) <= {"role", "content"}
            and all(isinstance(v, str) for v in m.values())
            for m in conversation
        )
        if tokenize or kwargs or not conversation or not plain:
            return self.full.apply_chat_template(
                conversation, tokenize=tokenize, add_generation_prompt=add_generation_prompt, **kwargs
            )
        return self._template.render(
            messages=[dict(m) for m in conversation],
            tools=None,
            documents=None,
            add_generation_prompt=add_generation_prompt,
            **self._named,
        )
