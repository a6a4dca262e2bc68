"""Deployment bundle tests: Docker, compose, Kubernetes and monitoring files, checked offline."""
