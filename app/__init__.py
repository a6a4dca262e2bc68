"""encoder-serve: a high-throughput inference server for Transformer encoders."""

__version__ = "0.1.0"
