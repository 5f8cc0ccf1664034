"""Where the package's data and the repository's fixtures, recipes and baselines live.

In a checkout (an editable install, the tests) they are the repository's folders; a non-editable install
(`pip install .`: the nightly judge, the device profile) ships copies inside the package as ``sdxl_qdq.shipped.*``
(pyproject.toml maps them), read from there."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
DATA_DIR = PACKAGE_DIR / "data"  # shipped with the package: CLIP's BPE vocabulary, the canary's weights
SHIPPED_DIR = PACKAGE_DIR / "shipped"
REPO_DIR = PACKAGE_DIR.parent
IN_CHECKOUT = (REPO_DIR / "pyproject.toml").is_file() and (REPO_DIR / "recipes").is_dir()
_ROOT = REPO_DIR if IN_CHECKOUT else SHIPPED_DIR
FIXTURES_DIR = _ROOT / "fixtures"
RECIPES_DIR = _ROOT / "recipes"
BASELINES_DIR = _ROOT / "baselines"
