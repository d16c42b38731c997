"""Token-inflation attacks on a reasoning trace, for the benchmark and the tests (coin.md §4.7).

Each attack returns the reasoning a cheating provider would commit to: the honest reasoning
with injected material that makes it about ``ratio`` times longer in extra tokens (the
inflation ratio IR = injected / original tokens). The provider then commits honestly to that
text and bills its full count, so only the audit's sampling and semantic checks stand between
the padding and the bill.

Injected material goes in as chunks of :data:`CHUNK_TOKENS` tokens at uniformly random token
positions (paragraph-sized padding, spread over the trace), except ``duplicate_blocks``, which
copies whole aligned blocks of the trace and inserts them at a block boundary, and
``tokenization_ambiguity``, which injects no material at all:

- ``random_tokens``: uniformly random token ids (naive inflation);
- ``copy_prompt`` / ``copy_answer``: spans of the prompt or answer (repeated when shorter
  than a chunk), CoIn's adaptive variants;
- ``copy_reasoning``: spans copied from elsewhere in the same reasoning (self-duplication);
- ``duplicate_blocks``: whole blocks of the reasoning, repeated;
- ``splice_same_domain``: spans of another trace's reasoning from the same domain;
- ``off_topic``: spans of fluent reasoning from a trace of another domain;
- ``small_model``: plausible new reasoning from a cheap model of the domain. No LLM runs
  offline, so the stand-in is a token-level n-gram model (order :data:`NGRAM_ORDER`,
  Witten-Bell backoff) fitted on honest reasoning of *other* traces of the domain. Its output
  is decoded and re-encoded, as a real model's text would be tokenized canonically. It is the
  weak point of every semantic check (coin.md §4.7): on-topic, fluent-looking, and no copy;
- ``tokenization_ambiguity``: the same visible text billed as more tokens (arXiv 2605.30040
  reports 50.85% over-reporting with fully visible reasoning). The honest reasoning is
  re-tokenized non-canonically, by splitting tokens into shorter vocabulary tokens with the
  same bytes. A token can be split at most down to its single bytes, so the ratio is capped:
  past the cap :attr:`InflatedReasoning.injected_tokens` is what was really injected. Needs a
  :class:`~tallystick.daemon.coin.tokenizer.TiktokenTokenizer` (bytes to token id).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from tallystick.verifier.errors import MalformedInput

from .tokenizer import TiktokenTokenizer, Tokenizer

__all__ = [
    "ATTACKS",
    "CHUNK_TOKENS",
    "INFLATION_RATIOS",
    "NGRAM_ORDER",
    "AttackSource",
    "InflatedReasoning",
    "inflate",
]

#: Every attack family :func:`inflate` knows, in benchmark order.
ATTACKS: Final = (
    "random_tokens",
    "copy_prompt",
    "copy_answer",
    "copy_reasoning",
    "duplicate_blocks",
    "splice_same_domain",
    "off_topic",
    "small_model",
    "tokenization_ambiguity",
)

#: The inflation ratios the issue asks the benchmark for.
INFLATION_RATIOS: Final = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0)

#: Injected chunk sizes, in tokens (inclusive range): paragraph-sized padding.
CHUNK_TOKENS: Final = (32, 128)

#: Random token ids are drawn below this bound: cl100k_base's ordinary tokens (100,256 with
#: its special tokens above them) all lie below it.
_RANDOM_ID_BOUND: Final = 100_000

#: The ``small_model`` stand-in's n-gram order: each token is drawn given the two before it.
#: Order 3 reads locally fluent, and with backoff it recombines the corpus instead of
#: reciting it (a higher order on a corpus of ~50 traces mostly copies runs verbatim).
NGRAM_ORDER: Final = 3


@dataclass(frozen=True)
class AttackSource:
    """What an attack may copy from: the trace's own visible texts and donor reasoning."""

    prompt: str
    reasoning: str
    answer: str
    #: Reasoning of another trace of the same domain (``splice_same_domain``; ``small_model``
    #: also learns from it).
    same_domain_reasoning: str = ""
    #: Reasoning of a trace from another domain (``off_topic``).
    other_domain_reasoning: str = ""
    #: Reasoning texts of other traces of the same domain, the training corpus of
    #: ``small_model``. A text equal to :attr:`reasoning` is left out: the cheap model must
    #: not have seen the trace it pads.
    domain_corpus: tuple[str, ...] = ()


@dataclass(frozen=True)
class InflatedReasoning:
    """An attacked reasoning, as token ids, and how many tokens were injected into it.

    ``ratio`` is the ratio asked for; ``injected_tokens / original_tokens`` is the one reached,
    lower only where ``tokenization_ambiguity`` hit its cap.
    """

    attack: str
    ratio: float
    token_ids: tuple[int, ...]
    original_tokens: int
    injected_tokens: int


def _chunk_sizes(total: int, rng: np.random.Generator) -> list[int]:
    sizes: list[int] = []
    low, high = CHUNK_TOKENS
    while sum(sizes) < total:
        sizes.append(int(rng.integers(low, high + 1)))
    sizes[-1] -= sum(sizes) - total
    return [size for size in sizes if size > 0]


def _random_tokens(tokenizer: Tokenizer, size: int, rng: np.random.Generator) -> list[int]:
    out: list[int] = []
    while len(out) < size:
        token_id = int(rng.integers(0, _RANDOM_ID_BOUND))
        try:
            tokenizer.token_text(token_id)
        except MalformedInput:  # a hole in the vocabulary
            continue
        out.append(token_id)
    return out


def _span(pool: list[int], size: int, rng: np.random.Generator) -> list[int]:
    """``size`` consecutive tokens of ``pool`` from a random start, cycling through a short pool."""
    start = int(rng.integers(0, len(pool)))
    return [pool[(start + offset) % len(pool)] for offset in range(size)]


def _pool(tokenizer: Tokenizer, text: str, what: str) -> list[int]:
    ids = tokenizer.encode(text)
    if not ids:
        raise MalformedInput(f"attack: no {what} to copy from", code="coin.attack_source_empty")
    return ids


def _insert_chunks(
    original: list[int], chunks: list[list[int]], rng: np.random.Generator
) -> list[int]:
    positions = sorted(int(p) for p in rng.integers(0, len(original) + 1, size=len(chunks)))
    out: list[int] = []
    previous = 0
    for position, chunk in zip(positions, chunks, strict=True):
        out.extend(original[previous:position])
        out.extend(chunk)
        previous = position
    out.extend(original[previous:])
    return out


def _duplicate_blocks(
    original: list[int], injected: int, block_size: int, rng: np.random.Generator
) -> list[int]:
    # Insert at a block boundary copies of the whole blocks before it (cycling through them):
    # the blocks before the boundary keep their alignment, so each copy repeats one of them.
    full_blocks = len(original) // block_size
    if full_blocks == 0:  # shorter than a block: nothing aligned to repeat, append copies
        return original + [original[offset % len(original)] for offset in range(injected)]
    boundary = int(rng.integers(1, full_blocks + 1)) * block_size
    first = int(rng.integers(0, boundary // block_size)) * block_size
    span = boundary - first
    copy = [original[first + offset % span] for offset in range(injected)]
    return original[:boundary] + copy + original[boundary:]


def _tiktoken_encoding(tokenizer: Tokenizer) -> Any:
    """The ``tiktoken.Encoding`` behind ``tokenizer``: the only way here from bytes to an id.

    The :class:`Tokenizer` protocol maps ids to text, never bytes to ids, and stays that small.
    """
    if not isinstance(tokenizer, TiktokenTokenizer):
        raise MalformedInput(
            f"attack: tokenization_ambiguity needs a tiktoken tokenizer, not {tokenizer!r}",
            code="coin.attack_unsupported",
        )
    return tokenizer._encoding


def _decode(tokenizer: Tokenizer, token_ids: list[int]) -> str:
    """The text of ``token_ids``, from their bytes where the tokenizer has them.

    Joining bytes first keeps a character that is split over two tokens whole, which joining
    :meth:`Tokenizer.token_text` would turn into two U+FFFD.
    """
    if isinstance(tokenizer, TiktokenTokenizer):
        decoded: str = tokenizer._encoding.decode_bytes(token_ids).decode("utf-8", "replace")
        return decoded
    return "".join(tokenizer.token_text(token_id) for token_id in token_ids)


# --- small_model: an n-gram stand-in for a cheap LLM ------------------------------------------


@dataclass(frozen=True)
class _NGramModel:
    """Token n-grams of a corpus: every context of up to ``NGRAM_ORDER - 1`` tokens, with the
    tokens that followed it (one entry per occurrence) and how many of them are distinct."""

    texts: tuple[tuple[int, ...], ...]
    followers: dict[tuple[int, ...], tuple[tuple[int, ...], int]]


#: How many fitted corpora :func:`_ngram_model` keeps (least recently used go first).
_MODEL_CACHE_SIZE: Final = 8
_model_cache: dict[tuple[str, tuple[str, ...]], _NGramModel] = {}


def _ngram_model(tokenizer: Tokenizer, corpus: tuple[str, ...]) -> _NGramModel:
    """The n-gram model of ``corpus``, fitted once per tokenizer id and corpus.

    The benchmark inflates each trace at every ratio with one corpus, and fitting ~50 traces
    (~0.5 s for 200k tokens) costs twenty times one inflation. The key is the tokenizer's
    :attr:`~Tokenizer.id`, which changes whenever its encoding could.
    """
    key = (tokenizer.id, corpus)
    model = _model_cache.pop(key, None) or _fit_ngram_model(tokenizer, corpus)
    _model_cache[key] = model  # most recently used last
    while len(_model_cache) > _MODEL_CACHE_SIZE:
        del _model_cache[next(iter(_model_cache))]
    return model


def _fit_ngram_model(tokenizer: Tokenizer, corpus: tuple[str, ...]) -> _NGramModel:
    texts = tuple(tuple(ids) for ids in map(tokenizer.encode, corpus) if ids)
    if not texts:
        raise MalformedInput(
            "attack: no same-domain corpus to learn from", code="coin.attack_source_empty"
        )
    seen: defaultdict[tuple[int, ...], list[int]] = defaultdict(list)
    for ids in texts:  # contexts never cross from one text into the next
        for index, token_id in enumerate(ids):
            for order in range(min(index, NGRAM_ORDER - 1) + 1):
                seen[ids[index - order : index]].append(token_id)
    followers = {context: (tuple(ids), len(set(ids))) for context, ids in seen.items()}
    return _NGramModel(texts, followers)


def _next_token(model: _NGramModel, history: list[int], rng: np.random.Generator) -> int:
    # Witten-Bell interpolation, sampled: in a context seen c times with t distinct followers,
    # draw an observed follower with probability c / (c + t), otherwise back off to the
    # context one token shorter. A context seen once backs off half the time, which is what
    # keeps the output from reciting the corpus.
    for order in range(min(len(history), NGRAM_ORDER - 1), 0, -1):
        entry = model.followers.get(tuple(history[-order:]))
        if entry is None:
            continue
        followers, distinct = entry
        if rng.random() * (len(followers) + distinct) < len(followers):
            return followers[int(rng.integers(len(followers)))]
    unigrams, _ = model.followers[()]
    return unigrams[int(rng.integers(len(unigrams)))]


def _small_model_chunk(
    model: _NGramModel, tokenizer: Tokenizer, size: int, rng: np.random.Generator
) -> list[int]:
    """``size`` tokens of generated reasoning, as the canonical tokens of its text."""
    # Start mid-stream, after the tokens before a random corpus position: the padding opens
    # like a continuation, not always at the start of a trace.
    text = model.texts[int(rng.integers(len(model.texts)))]
    start = int(rng.integers(len(text)))
    history = list(text[max(0, start - NGRAM_ORDER + 1) : start])
    sampled: list[int] = []
    target = size + 8  # decoding and re-encoding usually merges a few tokens
    while True:
        while len(sampled) < target:
            token_id = _next_token(model, history, rng)
            sampled.append(token_id)
            history.append(token_id)
        ids = tokenizer.encode(_decode(tokenizer, sampled))
        if len(ids) >= size:
            return ids[:size]
        target += size - len(ids) + 8


def _small_model_corpus(source: AttackSource) -> tuple[str, ...]:
    texts = (*source.domain_corpus, source.same_domain_reasoning)
    return tuple(dict.fromkeys(t for t in texts if t.strip() and t != source.reasoning))


# --- tokenization_ambiguity: the same bytes as more tokens ------------------------------------


def _retokenize(
    original: list[int], injected: int, encoding: Any, rng: np.random.Generator
) -> tuple[list[int], int]:
    """``original`` with ``injected`` more tokens and the same bytes, and the count reached.

    Splits spread breadth-first: each round picks pieces at random without replacement and
    cuts each in two vocabulary tokens, so every token is split once before any piece is split
    again, and the result stays as near canonical as the ratio allows. Every multi-byte token
    of cl100k_base has such a cut (it is a BPE merge of two tokens); rounds end when the budget
    is spent or only single bytes are left.
    """
    special = {encoding.encode_single_token(text) for text in encoding.special_tokens_set}
    cut_cache: dict[int, list[tuple[int, int]]] = {}

    def cuts(token_id: int) -> list[tuple[int, int]]:
        if token_id not in cut_cache:
            raw: bytes = encoding.decode_single_token_bytes(token_id)
            options = []
            for at in range(1, len(raw)):
                try:
                    pair = (
                        int(encoding.encode_single_token(raw[:at])),
                        int(encoding.encode_single_token(raw[at:])),
                    )
                except KeyError:
                    continue
                if not special.intersection(pair):
                    options.append(pair)
            cut_cache[token_id] = options
        return cut_cache[token_id]

    groups = [[token_id] for token_id in original]  # the pieces of each original token
    remaining = injected
    while remaining > 0:
        candidates = [
            (group, piece)
            for group, pieces in enumerate(groups)
            for piece, token_id in enumerate(pieces)
            if cuts(token_id)
        ]
        if not candidates:  # only single bytes left: the ratio is capped here
            break
        split: dict[tuple[int, int], tuple[int, int]] = {}
        for pick in rng.permutation(len(candidates))[:remaining]:
            group, piece = candidates[int(pick)]
            options = cuts(groups[group][piece])
            split[group, piece] = options[int(rng.integers(len(options)))]
        remaining -= len(split)
        for group in sorted({group for group, _ in split}):
            groups[group] = [
                part
                for piece, token_id in enumerate(groups[group])
                for part in split.get((group, piece), (token_id,))
            ]
    return [token_id for pieces in groups for token_id in pieces], injected - remaining


def inflate(
    source: AttackSource,
    attack: str,
    ratio: float,
    *,
    tokenizer: Tokenizer,
    rng: np.random.Generator,
    block_size: int = 256,
) -> InflatedReasoning:
    """The reasoning of ``source`` inflated by ``attack`` at inflation ratio ``ratio``.

    The result is token ids, for :func:`~tallystick.daemon.coin.provider.commit_tokens`: the
    committed count is exactly ``original + injected``. ``injected`` is
    ``max(1, round(ratio * original))``, except that ``tokenization_ambiguity`` stops at its
    cap (every token split down to single bytes) and reports what it injected.

    :raises MalformedInput: an unknown attack or a ratio that is not positive
        (``coin.attack_unknown``), an empty text or corpus to copy from
        (``coin.attack_source_empty``), or ``tokenization_ambiguity`` with a tokenizer that
        is not a :class:`~tallystick.daemon.coin.tokenizer.TiktokenTokenizer`
        (``coin.attack_unsupported``).
    """
    if attack not in ATTACKS:
        raise MalformedInput(f"attack: unknown attack {attack!r}", code="coin.attack_unknown")
    if not ratio > 0:
        raise MalformedInput(
            "attack: the inflation ratio must be positive", code="coin.attack_unknown"
        )
    original = _pool(tokenizer, source.reasoning, "reasoning")
    injected = max(1, round(ratio * len(original)))
    if attack == "tokenization_ambiguity":
        tokens, injected = _retokenize(original, injected, _tiktoken_encoding(tokenizer), rng)
    elif attack == "duplicate_blocks":
        tokens = _duplicate_blocks(original, injected, block_size, rng)
    else:
        sizes = _chunk_sizes(injected, rng)
        if attack == "random_tokens":
            chunks = [_random_tokens(tokenizer, n, rng) for n in sizes]
        elif attack == "small_model":
            model = _ngram_model(tokenizer, _small_model_corpus(source))
            chunks = [_small_model_chunk(model, tokenizer, n, rng) for n in sizes]
        else:
            pool = {
                "copy_prompt": lambda: _pool(tokenizer, source.prompt, "prompt"),
                "copy_answer": lambda: _pool(tokenizer, source.answer, "answer"),
                "copy_reasoning": lambda: original,
                "splice_same_domain": lambda: _pool(
                    tokenizer, source.same_domain_reasoning, "same-domain reasoning"
                ),
                "off_topic": lambda: _pool(
                    tokenizer, source.other_domain_reasoning, "other-domain reasoning"
                ),
            }[attack]()
            chunks = [_span(pool, n, rng) for n in sizes]
        tokens = _insert_chunks(original, chunks, rng)
    return InflatedReasoning(attack, ratio, tuple(tokens), len(original), injected)
