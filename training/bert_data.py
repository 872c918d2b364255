"""Data for BERT: masked-language-model windows and a word-order classification task, both built from
the embedded corpus (Python's pydoc topics; no downloads).

Pre-training (:func:`mlm_bundle`): fixed-length character windows, each ``bos`` + ``max_len - 1``
characters. Masking is not baked into the data: :func:`mask_tokens` draws fresh masks per batch
(RoBERTa's dynamic masking) from the trainer's seeded generator, so two runs with one seed match.

Fine-tuning (:func:`scrambled_words_bundle`): "is this real corpus text, or the same text with the
inner letters of its words scrambled?" Both have exactly the same characters and length, so unigram
counts, length and padding carry no signal (chance 50%, balanced labels); telling them apart takes
knowing how English words are spelled, which is what character-level masked-LM pre-training learns.
Fine-tuning rows come from the corpus' training paragraphs and test rows from its held-out paragraphs
(``load_corpus``), so no test sentence was seen in pre-training either. (Measured first: telling real
word order from shuffled words reached only 59-63% with a few minutes of pre-training: syntax takes
far longer to learn than spelling.)
"""

from __future__ import annotations

import random

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from training.data import DataError, DatasetBundle
from training.text import SPECIAL_TOKENS, CharTokenizer, builtin_corpus, load_corpus, pad_batch

MASK_PROB = 0.15  # BERT: predict 15% of the tokens ...
MASK_SPLIT = (0.8, 0.1)  # ... of which 80% become <mask>, 10% a random token, and 10% stay unchanged
IGNORE_INDEX = -100  # F.cross_entropy's default: positions without a prediction target


def corpus_tokenizer() -> CharTokenizer:
    """The character tokenizer of the whole built-in corpus (108 ids)."""
    return CharTokenizer.fit([builtin_corpus()])


def mask_tokens(
    ids: Tensor,
    *,
    generator: torch.Generator,
    mask_id: int,
    vocab_size: int,
    num_special: int = len(SPECIAL_TOKENS),
    prob: float = MASK_PROB,
) -> tuple[Tensor, Tensor]:
    """BERT's masking of (B, T) ids. Only ordinary tokens (id >= ``num_special``) are chosen, never
    padding or bos. Returns (inputs, labels), both (B, T): labels hold the original id at chosen
    positions and ``IGNORE_INDEX`` elsewhere; inputs replace the chosen tokens 80/10/10 with ``mask_id``,
    a random ordinary token, or the token itself."""
    if not 0.0 < prob < 1.0:
        raise ValueError(f"prob must be in (0, 1); got {prob}")
    eligible = ids >= num_special  # (B, T)
    chosen = (torch.rand(ids.shape, generator=generator) < prob) & eligible  # (B, T)
    labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE_INDEX))  # (B, T)
    action = torch.rand(ids.shape, generator=generator)  # (B, T): which replacement each position gets
    to_mask = chosen & (action < MASK_SPLIT[0])
    to_random = chosen & (action >= MASK_SPLIT[0]) & (action < MASK_SPLIT[0] + MASK_SPLIT[1])
    random_ids = torch.randint(num_special, vocab_size, ids.shape, generator=generator)  # (B, T)
    inputs = torch.where(to_mask, torch.full_like(ids, mask_id), ids)
    inputs = torch.where(to_random, random_ids, inputs)  # (B, T)
    return inputs, labels


def _windows(text: str, tokenizer: CharTokenizer, max_len: int, limit: int | None) -> Tensor:
    """Non-overlapping windows (N, max_len): bos + max_len - 1 characters each."""
    ids = torch.tensor(tokenizer.encode(text), dtype=torch.long)
    span = max_len - 1
    n = len(ids) // span
    if limit:
        n = min(n, limit)
    if n == 0:
        raise DataError(f"the text is shorter than one window of {span} characters")
    body = ids[: n * span].view(n, span)  # (N, max_len - 1)
    bos = torch.full((n, 1), tokenizer.bos_id, dtype=torch.long)
    return torch.cat([bos, body], dim=1)  # (N, max_len)


def mlm_bundle(
    *, max_len: int = 64, seed: int = 0, limit: int | None = None, tokenizer: CharTokenizer | None = None
) -> DatasetBundle:
    """Masked-LM windows of the corpus (train / validation paragraphs of ``load_corpus(seed=seed)``).
    ``y`` is a dummy zero per window: the targets are drawn by :func:`mask_tokens` at train time."""
    tokenizer = tokenizer or corpus_tokenizer()
    train_text, val_text = load_corpus(seed=seed)
    train = _windows(train_text, tokenizer, max_len, limit)
    val = _windows(val_text, tokenizer, max_len, limit and max(limit // 8, 1))
    test = val[:0]
    return DatasetBundle(
        name="corpus-mlm",
        train=TensorDataset(train, torch.zeros(len(train), dtype=torch.long)),
        val=TensorDataset(val, torch.zeros(len(val), dtype=torch.long)),
        test=TensorDataset(test, torch.zeros(0, dtype=torch.long)),
        labels=[],
        input_shape=(max_len,),
        mean=(),
        std=(),
        description=(
            f"pydoc topics, character windows of {max_len} (bos + {max_len - 1} chars), 15% masked "
            f"80/10/10 per batch. Windows (seed {seed}): train {len(train)}, val {len(val)}."
        ),
        chance_accuracy=0.0,
        tokenizer=tokenizer,
    )


def _sentences(
    text: str, rng: random.Random, count: int, max_chars: int, min_words: int, exclude: set[str] | None = None
) -> list[list[str]]:
    """``count`` distinct runs of whole words (at most ``max_chars`` characters joined by spaces), none
    of them in ``exclude`` (pydoc repeats some passages across topics, so paragraph splits can share runs)."""
    paragraphs = [p.split() for p in text.split("\n\n")]
    paragraphs = [p for p in paragraphs if len(p) >= min_words]
    seen: set[str] = set(exclude or ())
    out: list[list[str]] = []
    for _ in range(count * 20):
        if len(out) == count:
            break
        words = rng.choice(paragraphs)
        start = rng.randrange(len(words))
        run: list[str] = []
        for word in words[start:]:
            if len(" ".join([*run, word])) > max_chars:
                break
            run.append(word)
        if len(run) < min_words or len(set(run)) < 2:
            continue
        key = " ".join(run)
        if key not in seen:
            seen.add(key)
            out.append(run)
    if len(out) < count:
        raise DataError(f"found only {len(out)} distinct word runs; asked for {count}")
    return out


def scramble_word(word: str, rng: random.Random) -> str | None:
    """The word with its inner letters shuffled into a different order, first and last kept
    ("function" -> "fnuticon"); None when no other order exists."""
    inner = list(word[1:-1])
    for _ in range(10):
        rng.shuffle(inner)
        if "".join(inner) != word[1:-1]:
            return word[0] + "".join(inner) + word[-1]
    return None


def _scrambled(words: list[str], rng: random.Random) -> list[str] | None:
    """Every word of 4+ letters scrambled; None when the run has no such word."""
    out, changed = [], False
    for word in words:
        if len(word) >= 4 and word.isalpha() and len(set(word[1:-1])) > 1:
            word = scramble_word(word, rng) or word
            changed = True
        out.append(word)
    return out if changed else None


def _scramble_split(
    runs: list[list[str]], rng: random.Random, tokenizer: CharTokenizer, max_len: int
) -> TensorDataset:
    texts, labels = [], []
    for i, run in enumerate(runs):
        label = i % 2  # balanced: 1 = real text, 0 = the same text with its words scrambled
        words = run if label == 1 else _scrambled(run, rng)
        texts.append(tokenizer.encode(" ".join(words), bos=True))
        labels.append(label)
    order = list(range(len(texts)))
    rng.shuffle(order)
    ids = torch.tensor(pad_batch([texts[i] for i in order], tokenizer.pad_id, max_len), dtype=torch.long)
    return TensorDataset(ids, torch.tensor([labels[i] for i in order], dtype=torch.long))


def scrambled_words_bundle(
    *,
    n_train: int = 4000,
    n_val: int = 1000,
    n_test: int = 2000,
    max_len: int = 64,
    min_words: int = 5,
    seed: int = 0,
    tokenizer: CharTokenizer | None = None,
) -> DatasetBundle:
    """Real corpus text vs the same text with the inner letters of its words scrambled; rows are bos +
    text, right-padded with pad to ``max_len``."""
    tokenizer = tokenizer or corpus_tokenizer()
    train_text, held_out_text = load_corpus(seed=seed)
    rng = random.Random(seed)
    max_chars = max_len - 1  # room for bos

    def usable(runs: list[list[str]]) -> list[list[str]]:
        return [r for r in runs if _scrambled(r, random.Random(0)) is not None]

    fit_runs = usable(_sentences(train_text, rng, (n_train + n_val) * 11 // 10, max_chars, min_words))
    if len(fit_runs) < n_train + n_val:
        raise DataError(f"found only {len(fit_runs)} usable word runs; asked for {n_train + n_val}")
    fit_runs = fit_runs[: n_train + n_val]
    fit_texts = {" ".join(run) for run in fit_runs}
    test_runs = usable(
        _sentences(held_out_text, rng, n_test * 11 // 10, max_chars, min_words, exclude=fit_texts)
    )
    test_runs = test_runs[:n_test]
    return DatasetBundle(
        name="scrambled-words",
        train=_scramble_split(fit_runs[:n_train], rng, tokenizer, max_len),
        val=_scramble_split(fit_runs[n_train:], rng, tokenizer, max_len),
        test=_scramble_split(test_runs, rng, tokenizer, max_len),
        labels=["scrambled", "real"],
        input_shape=(max_len,),
        mean=(),
        std=(),
        description=(
            f"pydoc text: real vs the inner letters of every 4+ letter word scrambled ({min_words}+ words, "
            f"<= {max_chars} chars; 2 classes, balanced, chance 50%; same characters either way). "
            f"Train/val from training paragraphs, test from held-out paragraphs (seed {seed}): "
            f"train {n_train}, val {n_val}, test {len(test_runs)}."
        ),
        chance_accuracy=0.5,
        tokenizer=tokenizer,
    )
