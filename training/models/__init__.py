"""Model families; importing this package registers every builder."""

from training.models import (  # noqa: F401
    autoencoder,
    bert,
    clip,
    cnn,
    cyclegan,
    gan,
    gpt,
    mlp,
    mobilenet,
    resnet,
    rnn,
    seq2seq,
    unet,
    vit,
)
