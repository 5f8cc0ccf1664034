"""Running SDXL over ONNX Runtime: one pipeline for float and quantized components on the CPU or QNN EP
(``pipeline``), and the image sets the gate judges (``generate``). ``build`` records calibration data with
the same pipeline."""
