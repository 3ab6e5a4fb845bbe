"""labelflip: where do adversarial examples land? A regression gate for image classifiers."""

__version__ = "0.1.0"
