"""The model: its contract (card), the installed models, ONNX Runtime sessions, normalisation and the numpy kernel."""
