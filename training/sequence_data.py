"""Token-input datasets as the trainer's :class:`DatasetBundle` (x = token ids).

* ``order-task``: the generated order-dependent classification task (training.sequence_tasks).
* ``dates``: human-written dates -> ISO 8601 pairs (training.dates); y = target ids.
* ``corpus``: next-token windows of the built-in text (or ``root`` = a user's UTF-8 file).
* ``scrambled-words``: real corpus text vs its words' inner letters scrambled (training.bert_data).
* ``shapes-captions``: images with their attributes (y), captioned per step (training.captions).
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import TensorDataset

from training.bert_data import scrambled_words_bundle
from training.captions import captioned_shapes_bundle
from training.data import DataError, DatasetBundle, dataset_summaries
from training.dates import date_tokenizer, make_date_bundle
from training.sequence_tasks import make_order_task, order_task_tokenizer
from training.text import CharTokenizer, load_corpus

# Name -> one line for `python -m training list`.
SEQUENCE_DATASETS: dict[str, str] = {
    "order-task": "generated token sequences: which of A/B and of C/D comes first (4 classes)",
    "dates": "human-written dates -> ISO 8601 (pairs for the encoder-decoder)",
    "corpus": "next-character windows of Python's pydoc topics (or --data-root: a UTF-8 text file)",
    "scrambled-words": "pydoc text vs the same text with its words' inner letters scrambled (2 classes)",
    "shapes-captions": "generated shapes with their attributes, captioned from templates (image-text pairs)",
}


def all_datasets() -> dict[str, str]:
    """Every dataset a run accepts (``--dataset``), name -> one line: the image/tensor ones of
    training.data, then the token-input ones here."""
    return {**dataset_summaries(), **SEQUENCE_DATASETS}


def _order_task(seed: int, limit: int | None, n_train: int = 4000) -> DatasetBundle:
    n_train = min(n_train, limit) if limit else n_train
    splits = {
        name: make_order_task(n, seed + offset)
        for name, n, offset in (
            ("train", n_train, 0),
            ("val", max(n_train // 4, 8), 1000),
            ("test", 2000, 2000),
        )
    }
    task = splits["train"]
    return DatasetBundle(
        name="order-task",
        **{name: TensorDataset(t.tokens, t.labels) for name, t in splits.items()},
        labels=task.label_names,
        input_shape=(task.tokens.shape[1],),
        mean=(),
        std=(),
        description=(
            "generated order task: which of A/B and of C/D occurs first among repeated markers and "
            f"filler (4 classes, chance 25%; marker counts carry no signal). Splits (seed {seed}): "
            f"train {n_train}, val {len(splits['val'].labels)}, test 2000."
        ),
        chance_accuracy=0.25,
        tokenizer=order_task_tokenizer(),
    )


def _dates(seed: int, limit: int | None) -> DatasetBundle:
    n_train = min(20_000, limit) if limit else 20_000
    small = limit is not None
    bundle = make_date_bundle(
        n_train=n_train, n_val=64 if small else 1000, n_test=64 if small else 2000, seed=seed
    )
    bundle.tokenizer = date_tokenizer()
    return bundle


def _windows(ids: list[int], length: int) -> torch.Tensor:
    """Non-overlapping windows of ``length`` tokens: (N, length) int64."""
    n = len(ids) // length
    return torch.tensor(ids[: n * length], dtype=torch.long).view(n, length)


def _corpus(seed: int, limit: int | None, root: str | None, context_length: int) -> DatasetBundle:
    train_text, val_text = load_corpus(root, seed=seed)
    tokenizer = CharTokenizer.fit([train_text])
    # Windows of context_length + 1 tokens: inputs are the first context_length, targets the last.
    train = _windows(tokenizer.encode(train_text), context_length + 1)
    val = _windows(tokenizer.encode(val_text), context_length + 1)
    if len(train) < 2 or len(val) < 1:
        raise DataError(f"the text is too short for windows of {context_length + 1} characters")
    if limit:
        train = train[:limit]
    return DatasetBundle(
        name="corpus",
        train=TensorDataset(train, torch.zeros(len(train), dtype=torch.long)),
        val=TensorDataset(val, torch.zeros(len(val), dtype=torch.long)),
        # The corpus has no third split: the held-out figures are on the validation text.
        test=TensorDataset(val, torch.zeros(len(val), dtype=torch.long)),
        labels=[],
        input_shape=(context_length + 1,),
        mean=(),
        std=(),
        description=(
            f"{'Python pydoc topics' if root is None else root}: {len(train_text):,} train / "
            f"{len(val_text):,} validation characters, {tokenizer.vocab_size} ids (seed {seed})."
        ),
        chance_accuracy=math.nan,
        tokenizer=tokenizer,
    )


def load_sequence_dataset(
    name: str, *, seed: int, limit: int | None, root: str | None = None, context_length: int = 128
) -> DatasetBundle:
    """A generated or built-in sequence dataset; ``context_length`` cuts text to the model's context."""
    if name == "order-task":
        return _order_task(seed, limit)
    if name == "dates":
        return _dates(seed, limit)
    if name == "corpus":
        return _corpus(seed, limit, root, context_length)
    if name == "scrambled-words":
        small = limit is not None
        return scrambled_words_bundle(
            n_train=min(limit, 4000) if small else 4000,
            n_val=64 if small else 1000,
            n_test=64 if small else 2000,
            max_len=context_length,
            seed=seed,
        )
    if name == "shapes-captions":
        return captioned_shapes_bundle(seed=seed, limit=limit, context_length=context_length)
    raise DataError(f"unknown sequence dataset {name!r}; known: {', '.join(SEQUENCE_DATASETS)}")
