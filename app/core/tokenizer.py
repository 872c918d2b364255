"""The character tokenizer shared by training (writes its vocabulary into config.json) and serving
(rebuilds it from there), so the server tokenizes exactly as training did. Torch-free."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

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

    def unknown_characters(self, text: str) -> list[str]:
        """The distinct characters of ``text`` that :meth:`encode` maps to ``<unk>``, in order of first
        appearance. Training maps them silently (its data may rely on that); the server refuses them
        unless the request opts in, since mapped texts become indistinguishable."""
        index = self._index
        return list(dict.fromkeys(c for c in text if c not in index))

    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
        """Text -> ids; a character outside the vocabulary becomes ``<unk>`` (:meth:`unknown_characters`)."""
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
