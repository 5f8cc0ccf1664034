"""The canary: a synthetic world of coloured shapes (``world``), an SDXL-architecture model and a CLIP-like
scorer trained in it (``model``, ``train``), so that CLIP score and FID mean something offline."""
