"""From a model source to quantized components: torch → ONNX at fixed shapes (``export``), calibration inputs
recorded by the float pipeline (``calibration``), the recipe's Olive workflows (``recipe``, ``surgeons``) or
the same passes memory-bounded (``lean``), tied together through the cache (``stages``)."""
