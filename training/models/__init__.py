"""Model families; importing this package registers every builder."""

from training.models import autoencoder, bert, clip, cnn, gan, gpt, mlp, resnet, rnn, seq2seq, vit  # noqa: F401
