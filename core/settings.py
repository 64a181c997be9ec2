"""Sampling settings: the one source of truth. The sidebar edits it; the trace records what was used."""

from __future__ import annotations

from dataclasses import asdict, dataclass

MAX_REPETITION_PENALTY = 3.0  # beyond this every earlier token is all but banned


@dataclass(frozen=True)
class SamplingSettings:
    """How the next token is picked from the model's scores.

    temperature == 0 means greedy decoding (always the most likely token); top_k == 0 and
    top_p == 1.0 switch those filters off. repetition_penalty > 1 lowers the score of every
    token already in the text (prompt included, as transformers' ``generate`` does); 1.0 is
    off. It comes last so that positional construction from older code keeps its meaning,
    and a trace recorded before it existed loads with 1.0, which is what its sampler used.
    """

    temperature: float = 0.7
    top_k: int = 50
    top_p: float = 0.95
    max_new_tokens: int = 256
    seed: int = 0
    repetition_penalty: float = 1.0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def validated(self) -> SamplingSettings:
        """Return a copy clamped to the ranges the sampler understands."""
        return SamplingSettings(
            temperature=min(max(float(self.temperature), 0.0), 5.0),
            top_k=max(int(self.top_k), 0),
            top_p=min(max(float(self.top_p), 0.01), 1.0),
            max_new_tokens=min(max(int(self.max_new_tokens), 1), 4096),
            seed=int(self.seed),
            repetition_penalty=min(max(float(self.repetition_penalty), 1.0), MAX_REPETITION_PENALTY),
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SamplingSettings:
        fields = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**fields).validated()


DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant. Answer briefly and clearly."
# A practical cap: the model's window is 8,192 tokens, but on a 2-core CPU a prompt that long is slow.
DEFAULT_CONTEXT_BUDGET = 2048
