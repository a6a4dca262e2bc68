"""End-to-end tests: the real server driven by real outside programs (Prometheus, a browser)."""
