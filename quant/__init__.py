"""Quality gate for SDXL-turbo quantized with Olive to QDQ for the QNN execution provider.

The stages live in one module each, in data-flow order:
``source`` → ``export`` → ``calibration`` → ``recipe`` → ``pipeline`` (+ ``runtime`` for ORT sessions),
with ``build`` tying them together through the content-addressed ``cache``.
"""

import os

# Olive sends usage telemetry unless told not to; this project makes no network call it was not asked for.
os.environ.setdefault("OLIVE_DISABLE_TELEMETRY", "1")

__version__ = "0.1.0"

COMPONENTS: tuple[str, ...] = ("text_encoder", "text_encoder_2", "unet", "vae_decoder")
