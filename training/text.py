"""Text for the sequence models: a character tokenizer and the embedded corpus (no downloads).

The tokenizer's vocabulary travels with each exported model (``config.json``), so the server
tokenizes exactly as training did. The default corpus is English prose that ships with Python
itself: the documentation topics of ``pydoc_data.topics``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

from app.core.tokenizer import BOS, EOS, MASK, PAD, SPECIAL_TOKENS, UNK, CharTokenizer  # noqa: F401
from training.data import DataError


def pad_batch(
    sequences: Sequence[Sequence[int]], pad_id: int = 0, length: int | None = None
) -> list[list[int]]:
    """Right-pad to the longest sequence (or ``length``)."""
    width = length if length is not None else max((len(s) for s in sequences), default=0)
    return [list(s) + [pad_id] * (width - len(s)) for s in sequences]


# ---------------------------------------------------------------------------------------------- corpus


def builtin_corpus() -> str:
    """English prose that ships with Python: the pydoc documentation topics (~1 MB)."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key].strip() for key in sorted(topics))


def read_text_file(path: str | Path) -> str:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"text file {path} does not exist")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"text file {path} is not UTF-8 (byte {exc.start}: {exc.reason})") from None
    if not text.strip():
        raise DataError(f"text file {path} is empty")
    return text


def load_corpus(
    path: str | Path | None = None, *, seed: int = 0, val_fraction: float = 0.1
) -> tuple[str, str]:
    """(train, validation) text. Paragraphs are shuffled by ``seed`` and split, so both halves cover
    the whole corpus' style; ``path`` replaces the built-in corpus with a user's UTF-8 file."""
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction must be in (0, 1); got {val_fraction}")
    text = read_text_file(path) if path is not None else builtin_corpus()
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    if len(paragraphs) < 2:
        # One long paragraph: split by lines instead, so that both halves are non-empty.
        paragraphs = [line for line in text.splitlines() if line.strip()]
    if len(paragraphs) < 2:
        raise DataError("the text needs at least two non-empty lines to split into train and validation")
    random.Random(seed).shuffle(paragraphs)
    n_val = max(1, int(len(paragraphs) * val_fraction))
    return "\n\n".join(paragraphs[n_val:]), "\n\n".join(paragraphs[:n_val])
