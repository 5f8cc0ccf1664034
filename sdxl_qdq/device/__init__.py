"""What runs on the NPU runner, with the device profile only (numpy, onnxruntime + onnxruntime-qnn, pillow,
pytest): the bundle made on the host (``bundle``), a numpy SDXL pipeline that replays the host's scheduler and
noise (``pipeline``), the night's steps and the results the host judges (``night``), and the runner's own
checks (``check``). Nothing here imports torch, diffusers, transformers, datasets or Olive."""
