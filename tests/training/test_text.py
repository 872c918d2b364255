import pytest

from app.core.repository_format import TokenizerSpec
from training.data import DataError
from training.text import CharTokenizer, builtin_corpus, load_corpus, pad_batch


def test_tokenizer_round_trip_and_special_ids():
    tok = CharTokenizer.fit(["hello world"])
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.mask_id, tok.unk_id) == (0, 1, 2, 3, 4)
    ids = tok.encode("hello", bos=True, eos=True)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert tok.decode(ids) == "hello"
    assert tok.encode("hex")[-1] == tok.unk_id  # unseen character
    assert tok.decode([*tok.encode("he"), tok.eos_id, *tok.encode("llo")]) == "he"  # stops at eos
    again = CharTokenizer.from_dict(tok.to_dict())
    assert again.encode("hello world") == tok.encode("hello world")
    TokenizerSpec.model_validate(tok.to_dict())  # what config.json stores is the serving contract


def test_pad_batch_right_pads_with_pad_id():
    assert pad_batch([[5, 6, 7], [8]]) == [[5, 6, 7], [8, 0, 0]]


def test_builtin_corpus_ships_with_python_and_splits_by_seed():
    assert len(builtin_corpus()) > 100_000
    train, val = load_corpus(seed=0)
    assert train and val and len(val) < len(train)
    assert load_corpus(seed=0) == (train, val)
    assert load_corpus(seed=1)[1] != val


def test_user_text_file_errors_are_clear(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n")
    with pytest.raises(DataError, match="empty"):
        load_corpus(empty)
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\xe9\n\nbar".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        load_corpus(latin)
    with pytest.raises(DataError, match="does not exist"):
        load_corpus(tmp_path / "missing.txt")
    good = tmp_path / "good.txt"
    good.write_text("first paragraph\n\nsecond paragraph\n\nthird one")
    train, val = load_corpus(good, seed=0)
    assert train and val
    assert train.count("paragraph") + val.count("paragraph") == 2  # nothing lost, nothing doubled
