"""Quality gate for SDXL-turbo quantized with Olive to QDQ for the QNN execution provider.

One package per stage, in data-flow order: ``models`` (where the pipeline comes from) → ``build`` (export,
calibration, quantization) → ``run`` (the ORT pipeline and the image sets) → ``judge`` (metrics, baselines,
the gate, the report); ``diagnose`` beside them (coverage, per-layer error, QNN parity and divergence).
Shared below them: ``components``, ``runtime``, ``cache``, ``procs``, ``errors``, ``paths``. On top: ``flows``
(the gate end to end), ``cli`` and the pytest plugin.
"""

import os

# Olive sends usage telemetry unless told not to; this project makes no network call it was not asked for.
os.environ.setdefault("OLIVE_DISABLE_TELEMETRY", "1")

__version__ = "0.1.0"
