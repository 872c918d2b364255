"""Text for the sequence models: a character tokenizer and the embedded corpus (no downloads).

The tokenizer's vocabulary travels with each exported model (``config.json``), so the server
tokenizes exactly as training did. The default corpus is English prose that ships with Python
itself: the documentation topics of ``pydoc_data.topics``.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from training.data import DataError

PAD, BOS, EOS, MASK, UNK = "<pad>", "<bos>", "<eos>", "<mask>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, MASK, UNK)  # ids 0..4 in every vocabulary; pad is 0 on purpose


@dataclass
class CharTokenizer:
    """Characters -> ids, with the special tokens first (pad = 0, bos = 1, eos = 2, mask = 3, unk = 4)."""

    chars: list[str]
    specials: tuple[str, ...] = SPECIAL_TOKENS
    _index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if len(set(self.chars)) != len(self.chars) or any(len(c) != 1 for c in self.chars):
            raise ValueError("chars must be distinct single characters")
        self._index = {tok: i for i, tok in enumerate((*self.specials, *self.chars))}

    @classmethod
    def fit(cls, texts: Iterable[str], *, min_count: int = 1, max_chars: int | None = None) -> CharTokenizer:
        """Vocabulary of the characters seen at least ``min_count`` times (most frequent first)."""
        counts = Counter()
        for text in texts:
            counts.update(text)
        kept = [c for c, n in counts.most_common(max_chars) if n >= min_count]
        return cls(chars=sorted(kept))

    @property
    def vocab_size(self) -> int:
        return len(self.specials) + len(self.chars)

    def token_id(self, token: str) -> int:
        return self._index[token]

    @property
    def pad_id(self) -> int:
        return self._index[PAD]

    @property
    def bos_id(self) -> int:
        return self._index[BOS]

    @property
    def eos_id(self) -> int:
        return self._index[EOS]

    @property
    def mask_id(self) -> int:
        return self._index[MASK]

    @property
    def unk_id(self) -> int:
        return self._index[UNK]

    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
        unk = self.unk_id
        ids = [self._index.get(c, unk) for c in text]
        return [self.bos_id] * bos + ids + [self.eos_id] * eos

    def decode(self, ids: Iterable[int], *, stop_at_eos: bool = True) -> str:
        """Ids -> text; special tokens are dropped, and decoding stops at the first eos."""
        out = []
        n_special = len(self.specials)
        for i in ids:
            i = int(i)
            if i == self.eos_id and stop_at_eos:
                break
            if n_special <= i < self.vocab_size:
                out.append(self.chars[i - n_special])
        return "".join(out)

    def to_dict(self) -> dict:
        """What config.json stores; :meth:`from_dict` rebuilds the same tokenizer."""
        return {"kind": "char", "specials": list(self.specials), "chars": "".join(self.chars)}

    @classmethod
    def from_dict(cls, data: dict) -> CharTokenizer:
        if data.get("kind") != "char":
            raise ValueError(f"not a character tokenizer: kind={data.get('kind')!r}")
        return cls(chars=list(data["chars"]), specials=tuple(data["specials"]))


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
