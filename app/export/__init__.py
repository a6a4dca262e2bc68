"""Offline tooling: export encoders to ONNX with parity checks (needs the `export` extra)."""
