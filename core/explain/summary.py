"""A plain-language summary of how the model wrote a reply: how sure it was, its closest call,
why a long shot was written, whether it went round in a loop, and whether it answered the
question it was asked. Every sentence is read off the trace; nothing here runs the model.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from typing import Any

from core.explain.candidates import SURE, Repetition, find_repetition, percent, runner_up, uncertain_moments
from core.tokens import readable
from core.trace import Trace

# Words too common to say what a question is about (compared lower-cased, 3+ letters only).
_STOPWORDS = frozenset(
    """the and for are but not you your yours with this that these those what which who whom whose
    when where why how can could would should will shall may might must does did done has have had
    having was were been being its it's his her hers him she they them their theirs our ours out
    from into onto over under about above below again then than there here also just only very
    some any all each both few more most other such own same too nor off once please tell give
    know like make want need get got let say said one two many much is am an as at be by do go
    if in me my no of on or so to up us we""".split()
)
_WORD = re.compile(r"[^\W\d_]+")


def hardest_step(trace: Trace) -> int | None:
    """The step whose chosen token had the lowest probability (ties: higher entropy), or None."""
    if not trace.steps:
        return None
    return min(range(len(trace.steps)), key=lambda i: (trace.steps[i].prob, -trace.steps[i].entropy))


def closest_call(trace: Trace) -> int | None:
    """The step whose runner-up was most likely (the decisive fork), or None."""
    if not trace.steps:
        return None
    return uncertain_moments(trace, 1)[0]


def context_before(tokenizer: Any, trace: Trace, step: int, n_tokens: int = 4) -> str:
    """The few words the model had just written before `step` (plain text, one line)."""
    text = "".join(s.text for s in trace.steps[max(0, step - n_tokens) : step])
    return " ".join(text.split())[-40:]


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _quote(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- why a long shot was written -------------------------------------------------------------
def pick_story(trace: Trace, i: int) -> str:
    """Why step i's token was written although it was not the model's first choice.

    Says what really happened, from the recorded numbers: which filters kept the token in
    the draw, what temperature did to its chance, and that the random draw picked it.
    subtle: the chance in the draw (sample_prob) is the tempered probability divided by the
    share the filters kept, so it is never below the tempered one; when it is still below the
    raw probability, temperature lowered the token, whatever the filters did.
    """
    step, s = trace.steps[i], trace.settings
    if trace.branch_step == i:
        return "It was picked by hand to branch the reply there."
    if s.greedy or step.sample_prob <= 0.0:
        above = step.top_ids[: step.rank - 1]
        read = set(trace.prompt_ids) | set(trace.output_ids[:i])
        if s.greedy and s.repetition_penalty != 1.0 and len(above) == step.rank - 1 and set(above) <= read:
            return (
                f"The repetition penalty ({s.repetition_penalty:g}) lowered the {step.rank - 1} "
                f"token{'s' if step.rank > 2 else ''} above it, which were already in the text, "
                "so greedy decoding took it."
            )
        how = "greedy decoding never picks it" if s.greedy else "the sampler's filters had cut it"
        return (
            f"The sampler could not have drawn it ({how}), so it was written in, not chosen (a forced step)."
        )
    parts = [_filters_story(step, s), _temperature_story(step, s)]
    parts.append(
        f"Then the random draw (seed {s.seed}) picked it, with a {chance(step.sample_prob)} chance: "
        "each step is a new draw, so over a long reply an unlikely token now and then is expected."
    )
    return " ".join(p for p in parts if p)


def _filters_story(step, s) -> str:
    """Which filters kept the token in the draw (the first sentence of pick_story)."""
    if s.top_k == 0 and s.top_p >= 1.0:
        return "With top-k and top-p off, no token is filtered out: every one stays in the draw."
    recorded = len(step.top_sample_probs)
    kept = sum(1 for p in step.top_sample_probs if p > 0)
    known = kept < recorded or (s.top_k and s.top_k <= recorded)  # else: at least the 50 recorded
    active = [f"top-k {s.top_k}"] if s.top_k else []
    active += [f"top-p {s.top_p:g}"] if s.top_p < 1.0 else []
    who = " and ".join(active)
    left = f"the {kept} most likely tokens" if known else f"at least the {recorded} most likely tokens"
    text = f"{who[0].upper()}{who[1:]} left {left} in the draw"
    if len(active) == 2 and known:
        binding = "top-k" if kept == s.top_k else "top-p"
        text += f" ({binding} made the cut)"
    if s.repetition_penalty == 1.0:  # ranks are the model's own: it is among the kept ones by rank
        return f"{text}, and it was the model's {_ordinal(step.rank)} choice, so it stayed in."
    return f"{text}, and it was among them."


def chance(p: float) -> str:
    """A probability with two significant digits however small: 0.38 -> "38%", 0.0002 -> "0.020%"."""
    if p >= 0.001 or p <= 0.0:
        return percent(p) if p > 0.0 else "0%"
    digits = min(1 - math.floor(math.log10(p * 100)), 10)
    return f"{p * 100:.{digits}f}%"


def _temperature_story(step, s) -> str:
    """What temperature (and the filters' sharing out) did to the token's chance.

    Only directions the numbers prove are stated: sample_prob below prob means the token lost
    probability whatever the filters did (they only ever add); without filters, sample_prob is
    the tempered probability itself, so a rise is temperature's too. Otherwise (and whenever a
    repetition penalty also moved the scores) no cause is named.
    """
    t = s.temperature
    filtered = s.top_k > 0 or s.top_p < 1.0
    numbers = f"{chance(step.prob)} in the model's own distribution, {chance(step.sample_prob)} in the draw"
    share = "the filters shared the probability of the tokens they cut among those they kept"
    if s.repetition_penalty != 1.0:  # the penalty moves scores too: no single cause can be named
        return (
            f"After the repetition penalty ({s.repetition_penalty:g}), temperature {t:g} and the filters, "
            f"its chance was {numbers}."
        )
    if t == 1.0:
        if filtered:
            return f"At temperature 1 the odds are the model's own, and {share} ({numbers})."
        return f"At temperature 1 with no filter, the draw uses the model's own probabilities ({numbers})."
    if t < 1.0:
        how = f"Temperature {t:g} (below 1) sharpens the distribution toward the top tokens"
        lower, higher = "so it made this token less likely, not more", "and this token was one of them"
    else:
        how = (
            f"Temperature {t:g} (above 1) flattens the distribution, moving probability from the top "
            "tokens to the long tail of unlikely ones"
        )
        lower, higher = "and that made this token less likely too", "and that made this token more likely"
    if step.sample_prob < step.prob:
        return f"{how}, {lower} ({numbers})."
    if not filtered:
        return f"{how}, {higher} ({numbers})."
    return f"{how}, and {share} ({numbers})."


# -- loops ------------------------------------------------------------------------------------
def loop_story(tokenizer: Any, trace: Trace, loop: Repetition | None = None) -> str:
    """One or two sentences naming the loop and why its confidence is not knowledge ("" if none)."""
    loop = loop or find_repetition(trace)
    if loop is None:
        return ""
    unit = tokenizer.decode(list(loop.unit_ids), skip_special_tokens=True)
    lines = sum(1 for line in unit.splitlines() if line.strip())
    kind = "text" if not unit.endswith("\n") else "line" if lines == 1 else f"{lines} lines"
    until = "to the end of the reply"
    if loop.end < len(trace.steps):
        until = f"until step {loop.end}"
    elif trace.finish_reason == "length":
        until = "until the token limit cut it off"
    steps = trace.steps[loop.start : loop.end]
    sure_in_loop = sum(1 for s in steps if s.prob > SURE)
    mean = sum(s.prob for s in steps) / len(steps)
    return (
        f"From step {loop.start + 1} the reply goes round in a loop: it copies the {kind} "
        f"'{_quote(unit)}' (first written at step {loop.source + 1}) {loop.copies} time"
        f"{'s' if loop.copies != 1 else ''} in a row, {until}. "
        f"{sure_in_loop} of the tokens it was over {SURE:.0%} sure of are in that loop (on average "
        f"{percent(mean)} there): copying text that is already in front of it is easy for a model, "
        "so that confidence comes from repeating, not from knowing."
    )


# -- answering an earlier turn ----------------------------------------------------------------
@dataclass(frozen=True)
class EarlierTurn:
    """Evidence that a reply follows an earlier question instead of the current one."""

    current: str  # the current question's text
    earlier: str  # the earlier question it follows
    current_words: tuple[str, ...]  # the current question's content words, none used in the reply
    fork: int | None  # a step that took an earlier-question word over a current-question word
    repeats_reply: bool  # the reply is (almost) word for word an earlier reply


def content_words(text: str) -> list[str]:
    """Lower-cased words of 3+ letters that say what a text is about (no stopwords), in order."""
    words = (w.lower() for w in _WORD.findall(text))
    return list(dict.fromkeys(w for w in words if len(w) >= 3 and w not in _STOPWORDS))


def _span_texts(tokenizer: Any, trace: Trace, role: str) -> list[str]:
    spans = [s for s in trace.spans if s.kind == "content" and s.role == role and len(s)]
    return [tokenizer.decode(trace.prompt_ids[s.start : s.end]) for s in spans]


def answers_earlier_turn(tokenizer: Any, trace: Trace) -> EarlierTurn | None:
    """Does the reply follow an earlier question rather than the one just asked?

    Said only on firm evidence: the reply uses none of the current question's content words,
    and either (a) at some step it chose a word of an earlier question over a runner-up word
    of the current one (the fork that decided it), or (b) it repeats an earlier reply almost
    word for word. Sharing words with an earlier question alone is not enough: a good answer
    to "What is its population?" may well name the country asked about before.
    """
    questions = _span_texts(tokenizer, trace, "user")
    if len(questions) < 2 or not trace.steps:
        return None
    current, earlier_questions = questions[-1], questions[:-1]
    wanted = content_words(current)
    said = set(content_words(trace.text))
    if not wanted or said & set(wanted):
        return None
    best = max(earlier_questions, key=lambda q: len(said & set(content_words(q))))
    before = set(content_words(best)) - set(wanted)
    if not said & before:
        return None
    fork = None
    for i in range(len(trace.steps)):
        step, other = trace.steps[i], runner_up(trace.steps[i])
        if other is None:
            continue
        chose = content_words(tokenizer.decode([step.token_id]))
        alt = content_words(tokenizer.decode([other[0]]))
        if chose and alt and chose[0] in before and alt[0] in wanted:
            fork = i
            break
    reply = " ".join(trace.text.split())
    repeats = False
    for earlier_reply in _span_texts(tokenizer, trace, "assistant"):
        earlier_reply = " ".join(earlier_reply.split())
        match = difflib.SequenceMatcher(None, reply, earlier_reply, autojunk=False)
        size = match.find_longest_match(0, len(reply), 0, len(earlier_reply)).size
        if reply and size >= 0.8 * len(reply):
            repeats = True
            break
    if fork is None and not repeats:
        return None
    return EarlierTurn(current.strip(), best.strip(), tuple(wanted), fork, repeats)


def earlier_turn_story(tokenizer: Any, trace: Trace, found: EarlierTurn | None = None) -> str:
    """The sentence for answers_earlier_turn ("" when the reply does answer the current question)."""
    found = found or answers_earlier_turn(tokenizer, trace)
    if found is None:
        return ""
    words = ", ".join(f"'{w}'" for w in found.current_words[:4])
    parts = [f"The reply uses none of the current question's words ({words})"]
    if found.fork is not None:
        step = trace.steps[found.fork]
        other = runner_up(step)
        parts.append(
            f"at step {found.fork + 1} it chose '{readable(tokenizer, step.token_id)}' "
            f"({percent(step.prob)}), a word of an earlier question, over "
            f"'{readable(tokenizer, other[0])}' ({percent(other[1])}), a word of the current one"
        )
    if found.repeats_reply:
        parts.append("and it repeats an earlier reply almost word for word")
    joined = parts[0] + (": " + "; ".join(parts[1:]) if len(parts) > 1 else "")
    return (
        f"{joined}. So it follows the earlier question ('{_quote(found.earlier)}') instead of the "
        f"current one ('{_quote(found.current)}')."
    )


# -- the whole summary ------------------------------------------------------------------------
def summarize(tokenizer: Any, trace: Trace) -> str:
    """E.g. "The model was over 90% sure of 41 of 52 tokens. Its hardest choice was after
    'capital of', where it picked ' France' (38%) over ' Italy' (21%)." followed, where they
    apply, by its closest call, why a long shot was written, a loop, and an earlier question
    answered instead of the current one.
    """
    n = len(trace.steps)
    if n == 0:
        return "The model wrote nothing for this reply, so there is nothing to explain."
    sure = sum(1 for s in trace.steps if s.prob > SURE)
    parts = [f"The model was over {SURE:.0%} sure of {sure} of {n} token{'s' if n != 1 else ''}."]
    i = hardest_step(trace)
    step = trace.steps[i]
    picked = f"'{readable(tokenizer, step.token_id)}' ({percent(step.prob)})"
    before = context_before(tokenizer, trace, i)
    where = f"after '{before}'" if before else "at the very start of the reply"
    other = runner_up(step)
    if other is None:
        parts.append(f"Its hardest choice (step {i + 1}) was {where}, where it picked {picked}.")
    else:
        rival = f"'{readable(tokenizer, other[0])}' ({percent(other[1])})"
        parts.append(f"Its hardest choice (step {i + 1}) was {where}, where it picked {picked} over {rival}.")
    if step.rank > 1:
        parts.append(f"That token was only the model's choice number {step.rank}. {pick_story(trace, i)}")
    fork = closest_call(trace)
    fork_other = runner_up(trace.steps[fork]) if fork is not None else None
    if fork is not None and fork != i and fork_other is not None:
        fs = trace.steps[fork]
        before = context_before(tokenizer, trace, fork)
        where = f"after '{before}'" if before else "at the very start of the reply"
        chosen = f"'{readable(tokenizer, fs.token_id)}' ({percent(fs.prob)})"
        road = f"'{readable(tokenizer, fork_other[0])}' ({percent(fork_other[1])})"
        if fs.rank == 1:
            parts.append(f"Its closest call (step {fork + 1}) was {where}, where {chosen} won over {road}.")
        else:
            parts.append(
                f"The likeliest road not taken was at step {fork + 1}, {where}: it wrote {chosen} "
                f"instead of {road}."
            )
    parts.append(earlier_turn_story(tokenizer, trace))
    parts.append(loop_story(tokenizer, trace))
    mean_entropy = sum(s.entropy for s in trace.steps) / n
    parts.append(f"On average it hesitated between about {2**mean_entropy:.1f} likely tokens per step.")
    return " ".join(p for p in parts if p)
