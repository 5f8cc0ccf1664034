"""The memory-bounded quantizer: the recipe's passes on the graph only, weights in their data file, MinMax
calibration in segments; the same model as the Olive path."""
