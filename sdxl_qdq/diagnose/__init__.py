"""Why a quantized model is off: QDQ coverage and float islands, per-layer error (float vs QDQ), component
SQNR and QNN-vs-CPU parity, QNN profiling, and the QNN-vs-CPU divergence localizer."""
