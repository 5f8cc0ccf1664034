"""CMMD of each quantized set against the run's FID reference set (Jayasumana et al., CVPR 2024): the MMD² of the CLIP
backbone's unit-norm image embeddings with a Gaussian RBF kernel (σ = 10), × 1000 as the paper scales it; here the
unbiased estimator (the paper's V-statistic carries a 1/n bias, the size of what 100 images measure). See
``sdxl_qdq/judge/set_distance.py``."""

from __future__ import annotations

from sdxl_qdq.judge.backbones import clip_image_embeddings
from sdxl_qdq.judge.metrics import rbf_kernel
from sdxl_qdq.judge.set_distance import SetDistance


class Cmmd(SetDistance):
    name = "cmmd"
    order = 32
    label = "CMMD"
    title = "CMMD (the CLIP backbone's image embeddings, RBF kernel σ=10)"

    def embed(self, images, backbones):
        return clip_image_embeddings(images, backbones.clip)

    def kernel(self, a, b):
        return rbf_kernel(a, b)

    def backbone(self, backbones) -> str:
        return backbones.clip


METRIC = Cmmd()
