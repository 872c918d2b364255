"""Date normalisation, the seq2seq task: human-written dates -> ISO 8601 (no downloads).

``"3rd of March 2021"``, ``"03/03/21"``, ``"WEDNESDAY, MARCH 3, 2021"`` and ``"2021.03.03"`` all map to
``"2021-03-03"``. Dates are drawn from 1950-01-01 .. 2049-12-31 by a seeded RNG, written in one of
:data:`FORMATS` and in mixed, lower or upper case.

Conventions, chosen so that every source string has exactly one answer:

* Numeric formats with the year LAST are DAY first (``03/04/2021`` is 3 April 2021), as in most of
  the world. Year-first formats are year, month, day (``2021.04.03``).
* Two-digit years cover exactly the date range: ``50``..``99`` are 1950..1999, ``00``..``49`` are
  2000..2049.

The held-out split is by DATE, not by string: :func:`split_dates` deals every day of the range into
train or held-out once (``split_seed``), so no held-out date appears in training in any format.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable, Sequence
from datetime import date, timedelta
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from app.core.decoding import DecodeFn, EncodeFn, beam_search, greedy_decode, strip_eos
from training.data import DatasetBundle
from training.text import CharTokenizer, pad_batch

FIRST_DATE = date(1950, 1, 1)
LAST_DATE = date(2049, 12, 31)
# Every character any format can produce (letters in both cases), fixed so that the vocabulary never
# depends on the sample: a model trained on one sample decodes strings from any other.
CHARSET = string.digits + string.ascii_lowercase + string.ascii_uppercase + " ,.-/'"

MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def _ordinal(n: int) -> str:
    suffix = "th" if 11 <= n % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _month(d: date) -> str:
    return MONTHS[d.month - 1]


def _mon(d: date) -> str:
    return MONTHS[d.month - 1][:3]


def _weekday(d: date) -> str:
    return WEEKDAYS[d.weekday()]


def _yy(d: date) -> str:
    return f"{d.year % 100:02d}"


# Name -> writer. Names say the layout; numeric formats with the year last are day-first throughout.
FORMATS: dict[str, Callable[[date], str]] = {
    "ordinal of month year": lambda d: f"{_ordinal(d.day)} of {_month(d)} {d.year}",
    "the ordinal of month, year": lambda d: f"the {_ordinal(d.day)} of {_month(d)}, {d.year}",
    "month day, year": lambda d: f"{_month(d)} {d.day}, {d.year}",
    "month ordinal, year": lambda d: f"{_month(d)} {_ordinal(d.day)}, {d.year}",
    "day month year": lambda d: f"{d.day} {_month(d)} {d.year}",
    "day mon year": lambda d: f"{d.day} {_mon(d)} {d.year}",
    "mon day year": lambda d: f"{_mon(d)} {d.day} {d.year}",
    "mon. day, year": lambda d: f"{_mon(d)}. {d.day}, {d.year}",
    "day mon 'yy": lambda d: f"{d.day} {_mon(d)} '{_yy(d)}",
    "weekday, month day, year": lambda d: f"{_weekday(d)}, {_month(d)} {d.day}, {d.year}",
    "weekday day month year": lambda d: f"{_weekday(d)} {d.day} {_month(d)} {d.year}",
    "wkd day mon year": lambda d: f"{_weekday(d)[:3]} {d.day} {_mon(d)} {d.year}",
    "dd/mm/yy": lambda d: f"{d.day:02d}/{d.month:02d}/{_yy(d)}",
    "dd/mm/yyyy": lambda d: f"{d.day:02d}/{d.month:02d}/{d.year}",
    "d/m/yyyy": lambda d: f"{d.day}/{d.month}/{d.year}",
    "d-m-yyyy": lambda d: f"{d.day}-{d.month}-{d.year}",
    "dd-mm-yy": lambda d: f"{d.day:02d}-{d.month:02d}-{_yy(d)}",
    "d.m.yyyy": lambda d: f"{d.day}.{d.month}.{d.year}",
    "yyyy.mm.dd": lambda d: f"{d.year}.{d.month:02d}.{d.day:02d}",
    "yyyy/mm/dd": lambda d: f"{d.year}/{d.month:02d}/{d.day:02d}",
    "yyyymmdd": lambda d: f"{d.year}{d.month:02d}{d.day:02d}",
    "yyyy-mm-dd": lambda d: d.isoformat(),  # already normalised: the model must learn to copy
}
# Case variants of formats with letters, with their sampling weights: as written, lower, upper.
CASES: tuple[tuple[Callable[[str], str], float], ...] = ((str, 0.5), (str.lower, 0.25), (str.upper, 0.25))

# Longest source any format writes, plus eos; what a seq2seq config's max_len must cover.
MAX_SOURCE_LEN = len("Wednesday, September 30, 2021") + 1  # 30
TARGET_LEN = len("YYYY-MM-DD") + 2  # bos + 10 characters + eos


def iso(d: date) -> str:
    return d.isoformat()


def format_date(d: date, fmt: str, case: Callable[[str], str] = str) -> str:
    """``d`` written in format ``fmt`` (a key of :data:`FORMATS`), then passed through ``case``."""
    return case(FORMATS[fmt](d))


def all_dates() -> list[date]:
    """Every day from :data:`FIRST_DATE` to :data:`LAST_DATE` (36525 days)."""
    return [FIRST_DATE + timedelta(days=i) for i in range((LAST_DATE - FIRST_DATE).days + 1)]


def split_dates(held_out_fraction: float = 0.1, split_seed: int = 0) -> tuple[list[date], list[date]]:
    """(train dates, held-out dates): every day of the range lands in exactly one of the two."""
    if not 0 < held_out_fraction < 1:
        raise ValueError(f"held_out_fraction must be in (0, 1); got {held_out_fraction}")
    days = all_dates()
    random.Random(split_seed).shuffle(days)
    n_held = round(len(days) * held_out_fraction)
    return sorted(days[n_held:]), sorted(days[:n_held])


def make_date_pairs(
    n: int,
    seed: int,
    *,
    split: Literal["all", "train", "held_out"] = "all",
    held_out_fraction: float = 0.1,
    split_seed: int = 0,
) -> list[tuple[str, str]]:
    """``n`` (human string, ISO string) pairs, deterministic in ``seed``.

    ``split`` draws the dates from the whole range, from the training dates only, or from the
    held-out dates only (see :func:`split_dates`; ``split_seed`` fixes that partition independently
    of ``seed``, so pairs drawn with different seeds keep the same partition).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0; got {n}")
    if split == "all":
        pool = all_dates()
    elif split in ("train", "held_out"):
        train, held_out = split_dates(held_out_fraction, split_seed)
        pool = train if split == "train" else held_out
    else:
        raise ValueError(f"split must be 'all', 'train' or 'held_out'; got {split!r}")
    rng = random.Random(seed)
    names = list(FORMATS)
    case_fns, case_weights = zip(*CASES, strict=True)
    pairs = []
    for _ in range(n):
        d = rng.choice(pool)
        fmt = rng.choice(names)
        case = rng.choices(case_fns, case_weights)[0]
        pairs.append((format_date(d, fmt, case), iso(d)))
    return pairs


def date_tokenizer() -> CharTokenizer:
    """The fixed tokenizer of the task (specials 0..4, then :data:`CHARSET` sorted): 73 ids."""
    return CharTokenizer(chars=sorted(CHARSET))


def encode_pairs(
    pairs: Sequence[tuple[str, str]], tokenizer: CharTokenizer | None = None
) -> tuple[Tensor, Tensor]:
    """(src (N, S) int64 = chars + eos, tgt (N, T) int64 = bos + chars + eos), right-padded with pad."""
    tokenizer = tokenizer or date_tokenizer()
    src = pad_batch([tokenizer.encode(s, eos=True) for s, _ in pairs], tokenizer.pad_id)
    tgt = pad_batch([tokenizer.encode(t, bos=True, eos=True) for _, t in pairs], tokenizer.pad_id)
    return torch.tensor(src, dtype=torch.long), torch.tensor(tgt, dtype=torch.long)


def make_date_bundle(
    n_train: int = 20_000, n_val: int = 2_000, n_test: int = 2_000, seed: int = 0
) -> DatasetBundle:
    """The task as the trainer's :class:`DatasetBundle`: ``x`` = src ids, ``y`` = tgt ids.

    Train pairs come from the training dates; validation and test pairs from the held-out dates
    (different seeds, so different draws; the same held-out date may appear in both).
    """
    splits = {
        "train": make_date_pairs(n_train, seed, split="train"),
        "val": make_date_pairs(n_val, seed + 1, split="held_out"),
        "test": make_date_pairs(n_test, seed + 2, split="held_out"),
    }
    tokenizer = date_tokenizer()
    data = {name: TensorDataset(*encode_pairs(pairs, tokenizer)) for name, pairs in splits.items()}
    return DatasetBundle(
        name="dates",
        train=data["train"],
        val=data["val"],
        test=data["test"],
        labels=[],
        input_shape=(int(data["train"].tensors[0].shape[1]),),
        mean=(0.0,),
        std=(1.0,),
        description="human-written dates -> ISO 8601 (YYYY-MM-DD); day-first numeric formats",
        chance_accuracy=0.0,
    )


def translate(
    encode: EncodeFn,
    decode: DecodeFn,
    sources: Sequence[str],
    tokenizer: CharTokenizer | None = None,
    *,
    beam_size: int = 1,
    length_penalty: float = 1.0,
    max_len: int = TARGET_LEN,
    batch_size: int = 256,
) -> list[str]:
    """Decode ``sources`` with :mod:`app.core.decoding` (greedy for ``beam_size=1``, else the best beam)
    over ``encode``/``decode`` callables: the PyTorch model's or the exported ONNX graphs'."""
    tokenizer = tokenizer or date_tokenizer()
    out: list[str] = []
    for start in range(0, len(sources), batch_size):
        chunk = sources[start : start + batch_size]
        src = np.array(pad_batch([tokenizer.encode(s, eos=True) for s in chunk], tokenizer.pad_id))
        ids = dict(bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id, max_len=max_len, pad_id=tokenizer.pad_id)
        if beam_size == 1:
            rows = greedy_decode(encode, decode, src, **ids)  # (B, L)
        else:
            result = beam_search(
                encode, decode, src, beam_size=beam_size, length_penalty=length_penalty, **ids
            )
            rows = result.sequences[:, 0]  # (B, L): the best hypothesis
        out.extend(tokenizer.decode(strip_eos(row, tokenizer.eos_id)) for row in rows)
    return out


def exact_match(predictions: Sequence[str], targets: Sequence[str]) -> float:
    """Fraction of predictions equal to their target string."""
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions for {len(targets)} targets")
    return sum(p == t for p, t in zip(predictions, targets, strict=True)) / max(len(targets), 1)
