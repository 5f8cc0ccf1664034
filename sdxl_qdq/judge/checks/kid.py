"""KID of each quantized set against the run's FID reference set (Bińkowski et al. 2018): the unbiased MMD² of the FID
backbone's features with the polynomial kernel (d·d'/dim + 1)³, × 1000. See ``sdxl_qdq/judge/set_distance.py``."""

from __future__ import annotations

from sdxl_qdq.judge.backbones import fid_features
from sdxl_qdq.judge.metrics import polynomial_kernel
from sdxl_qdq.judge.set_distance import SetDistance


class Kid(SetDistance):
    name = "kid"
    order = 31
    label = "KID×1000"
    title = "KID×1000 (the FID backbone's features, polynomial kernel)"

    def embed(self, images, backbones):
        return fid_features(images, backbones.fid)

    def kernel(self, a, b):
        return polynomial_kernel(a, b)

    def backbone(self, backbones) -> str:
        return backbones.fid


METRIC = Kid()
