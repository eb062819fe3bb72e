"""The face verification service (FastAPI + onnxruntime; no PyTorch needed)."""
