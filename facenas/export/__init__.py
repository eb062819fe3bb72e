"""Export of face models to ONNX (insightface's contract), verification, model cards, int8 quantisation."""
