import pytest
from pydantic import ValidationError

from app.core.repository_format import ImagePreprocessing, ModelConfig

GRAPH = {
    "file": "model.onnx",
    "inputs": [{"name": "input", "shape": [-1, 64]}],
    "outputs": [{"name": "logits", "shape": [-1, 10]}],
}


def _config(**fields):
    return {
        "name": "m",
        "family": "mlp",
        "task": "classification",
        "labels": ["a", "b"],
        "graphs": {"model": GRAPH},
        **fields,
    }


def test_valid_config_gets_serving_defaults():
    config = ModelConfig.model_validate(_config())
    assert config.batching.max_batch_size > 1 and config.instances.device == "auto"
    assert config.instances.intra_op_threads == 1  # measured: one thread per session on this CPU


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"labels": None}, "needs labels"),
        ({"task": "generation", "labels": None}, "generation defaults"),
        ({"task": "generation", "generation": {"max_new_tokens": 8}}, "latent_dim"),
        ({"task": "text_generation", "labels": None}, "text preprocessing"),
        ({"name": "Bad Name"}, "name"),
        ({"surprise": 1}, "surprise"),
        ({"graphs": {"model": {**GRAPH, "file": "../escape.onnx"}}}, "file"),
    ],
)
def test_invalid_configs_say_what_is_wrong(fields, message):
    with pytest.raises(ValidationError, match=message):
        ModelConfig.model_validate(_config(**fields))


def test_preprocessing_needs_one_mean_and_std_per_channel():
    with pytest.raises(ValidationError, match="one value per channel"):
        ImagePreprocessing(height=8, width=8, channels=3, mean=[0.5], std=[0.2])
    with pytest.raises(ValidationError, match="positive"):
        ImagePreprocessing(height=8, width=8, channels=1, mean=[0.5], std=[0.0])


def test_text_preprocessing_round_trips():
    text = {
        "kind": "text",
        "tokenizer": {"specials": ["<pad>", "<bos>", "<eos>", "<mask>", "<unk>"], "chars": "abc"},
        "max_length": 32,
        "add_eos": True,
    }
    config = ModelConfig.model_validate(_config(task="text_generation", labels=None, preprocessing=text))
    assert config.preprocessing.tokenizer.chars == "abc"
    again = ModelConfig.model_validate_json(config.model_dump_json())
    assert again == config
