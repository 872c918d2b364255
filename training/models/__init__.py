"""Model families; importing this package registers every builder."""

from training.models import autoencoder, cnn, gan, mlp, resnet, vit  # noqa: F401
