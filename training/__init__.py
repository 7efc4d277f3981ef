"""MT2 training: Multi-task Mean Teacher, synthetic data, and ONNX export (needs torch)."""
