"""Where the SDXL pipeline comes from (tiny seeded, canary trained, real from the Hugging Face cache, a local
folder), its prompt sets, and the shared SDXL vocabulary (scheduler, tokenizers, configs)."""
