"""The reproducible benchmark (`make bench`) and ad-hoc load tools for encoder-serve."""
