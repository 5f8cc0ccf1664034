"""FID's Inception-v3 (the 2015-12-05 TensorFlow graph that FID is defined on) in plain torch, for torchmetrics'
``FrechetInceptionDistance(feature=...)``.

torchmetrics computes FID with torch-fidelity's feature extractor, and torch-fidelity imports torchvision when it is
imported; torchvision's wheels on PyPI link CUDA's torch and do not import beside the CPU torch this project pins
(``operator torchvision::nms does not exist``). This module is the same network and preprocessing, reading the same
weights file (``weights-inception-2015-12-05-6726825d.pth`` in torch hub's ``checkpoints``, as torch-fidelity stores
it), and needs nothing but torch: its 2048 features agree with torch-fidelity 0.4.0's on seeded weights and images
(``tests/test_inception.py``; reference made with torch 2.14.1 + torchvision 0.29.1, the stored features say so).

The layer names are torch-fidelity's, so its weights load as they are; they are read with ``torch.load(...,
weights_only=True)`` (tensors only, no code). The TensorFlow port's quirks are kept: average pools that do not
count padding, a max pool in the last block, TensorFlow 1.x's bilinear resize to 299 (corners not aligned).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{WEIGHTS_FILE}"
INPUT_SIZE = 299


def weights_path(torch_home: Path | None = None) -> Path:
    """Where torch hub (and torch-fidelity) keep the weights: ``$TORCH_HOME/hub/checkpoints/<file>`` (``torch_home``:
    that of another environment than this process's)."""
    hub = Path(torch_home) / "hub" if torch_home is not None else Path(torch.hub.get_dir())
    return hub / "checkpoints" / WEIGHTS_FILE


def download_weights() -> Path:
    """Fetch the weights into torch hub's cache, checked against the digest prefix in their name."""
    torch.hub.load_state_dict_from_url(WEIGHTS_URL, progress=False, check_hash=True, weights_only=True)
    return weights_path()


class _Conv(nn.Module):  # torch-fidelity's BasicConv2d: conv (no bias), batch norm, ReLU
    def __init__(self, cin: int, cout: int, kernel: Any, stride: int = 1, padding: Any = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x: torch.Tensor) -> torch.Tensor:  # TensorFlow's: padded zeros do not count
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class _A(nn.Module):
    def __init__(self, cin: int, pool: int) -> None:
        super().__init__()
        self.branch1x1 = _Conv(cin, 64, 1)
        self.branch5x5_1, self.branch5x5_2 = _Conv(cin, 48, 1), _Conv(48, 64, 5, padding=2)
        self.branch3x3dbl_1, self.branch3x3dbl_2 = _Conv(cin, 64, 1), _Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _Conv(96, 96, 3, padding=1)
        self.branch_pool = _Conv(cin, pool, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch5x5_2(self.branch5x5_1(x)),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                self.branch_pool(_avg_pool(x)),
            ],
            1,
        )


class _B(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = _Conv(cin, 384, 3, stride=2)
        self.branch3x3dbl_1, self.branch3x3dbl_2 = _Conv(cin, 64, 1), _Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _Conv(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self.branch3x3(x),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                F.max_pool2d(x, 3, stride=2),
            ],
            1,
        )


class _C(nn.Module):
    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
        self.branch1x1 = _Conv(cin, 192, 1)
        self.branch7x7_1, self.branch7x7_2, self.branch7x7_3 = (
            _Conv(cin, c7, 1),
            _Conv(c7, c7, **row),
            _Conv(c7, 192, **col),
        )
        self.branch7x7dbl_1, self.branch7x7dbl_2 = _Conv(cin, c7, 1), _Conv(c7, c7, **col)
        self.branch7x7dbl_3, self.branch7x7dbl_4 = _Conv(c7, c7, **row), _Conv(c7, c7, **col)
        self.branch7x7dbl_5 = _Conv(c7, 192, **row)
        self.branch_pool = _Conv(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dbl = x
        for i in range(1, 6):
            dbl = getattr(self, f"branch7x7dbl_{i}")(dbl)
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
                dbl,
                self.branch_pool(_avg_pool(x)),
            ],
            1,
        )


class _D(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1, self.branch3x3_2 = _Conv(cin, 192, 1), _Conv(192, 320, 3, stride=2)
        self.branch7x7x3_1, self.branch7x7x3_2 = _Conv(cin, 192, 1), _Conv(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3, self.branch7x7x3_4 = _Conv(192, 192, (7, 1), padding=(3, 0)), _Conv(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, stride=2)], 1)


class _E(nn.Module):
    def __init__(self, cin: int, *, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool  # the graph's last block pools by max where the paper says average
        self.branch1x1 = _Conv(cin, 320, 1)
        self.branch3x3_1 = _Conv(cin, 384, 1)
        self.branch3x3_2a, self.branch3x3_2b = (
            _Conv(384, 384, (1, 3), padding=(0, 1)),
            _Conv(384, 384, (3, 1), padding=(1, 0)),
        )
        self.branch3x3dbl_1, self.branch3x3dbl_2 = _Conv(cin, 448, 1), _Conv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _Conv(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg_pool(x)
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch3x3_2a(b3),
                self.branch3x3_2b(b3),
                self.branch3x3dbl_3a(dbl),
                self.branch3x3dbl_3b(dbl),
                self.branch_pool(pooled),
            ],
            1,
        )


def resize_like_tensorflow1(x: torch.Tensor, size: int) -> torch.Tensor:
    """TensorFlow 1.x's ``resize_bilinear`` (corners not aligned): source coordinate = destination × in/out, no
    half-pixel offset, the last row and column repeated at the border."""

    def axis(n_in: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        src = torch.arange(size, dtype=torch.float32) * (n_in / size)
        lo = src.long()
        return lo, (lo + 1).clamp_max(n_in - 1), (src - lo.float()).to(x.dtype)

    (y0, y1, fy), (x0, x1, fx) = axis(x.shape[2]), axis(x.shape[3])
    top, bottom = x[:, :, y0], x[:, :, y1]
    rows = top + (bottom - top) * fy.view(1, 1, -1, 1)
    left, right = rows[:, :, :, x0], rows[:, :, :, x1]
    return left + (right - left) * fx.view(1, 1, 1, -1)


class FidInceptionV3(nn.Module):
    """uint8 N×3×H×W → the 2048 pool features FID compares (float32). ``weights``: a state dict file of
    torch-fidelity's layout (default: torch hub's cache); ``None`` and ``random=True``: seeded random weights, for
    stand-ins and tests."""

    num_features = 2048

    def __init__(self, weights: str | Path | None = None, *, random: bool = False) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = _Conv(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _Conv(32, 32, 3)
        self.Conv2d_2b_3x3 = _Conv(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _Conv(64, 80, 1)
        self.Conv2d_4a_3x3 = _Conv(80, 192, 3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = _A(192, 32), _A(256, 64), _A(288, 64)
        self.Mixed_6a = _B(288)
        self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e = (
            _C(768, 128),
            _C(768, 160),
            _C(768, 160),
            _C(768, 192),
        )
        self.Mixed_7a = _D(768)
        self.Mixed_7b, self.Mixed_7c = _E(1280, max_pool=False), _E(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)  # the logits head: unused by FID, present in the weights file
        if not random:
            path = Path(weights) if weights is not None else weights_path()
            self.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        self.requires_grad_(False)
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 N×3×H×W images, got {images.dtype} {tuple(images.shape)}")
        x = (resize_like_tensorflow1(images.float(), INPUT_SIZE) - 128) / 128
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(F.max_pool2d(x, 3, stride=2)))
        x = F.max_pool2d(x, 3, stride=2)
        for block in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{block}")(x)
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


def write_random_weights(path: Path, *, seed: int = 0) -> Path:
    """Seeded random weights of the real architecture at ``path`` (a stand-in placed where the loader looks)."""
    torch.manual_seed(seed)
    model = FidInceptionV3(random=True)
    for module in model.modules():  # He-initialized convolutions: features that depend on the image all the way down
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 2.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(path)
    return path
