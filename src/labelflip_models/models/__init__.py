"""Classifiers: the architectures (`architectures`), labelflip's reference model per dataset (`reference`), loading
a user's model file safely (`io`), the training loop and its recipes (`train`), and the trained-model cache
(`cache`)."""
