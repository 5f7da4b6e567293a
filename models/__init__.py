"""Model bundles: ONNX export with parity checks, the bundle format, the registry, the runtime."""
