"""Model families; importing this package registers every builder."""

from training.models import autoencoder, bert, cnn, gan, gpt, mlp, resnet, rnn, seq2seq, unet, vit  # noqa: F401
