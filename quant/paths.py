"""Where the package's data and the repository's fixtures, recipes and baselines live."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
DATA_DIR = PACKAGE_DIR / "data"  # shipped with the package: CLIP's BPE vocabulary, the canary's weights
REPO_DIR = PACKAGE_DIR.parent
FIXTURES_DIR = REPO_DIR / "fixtures"
RECIPES_DIR = REPO_DIR / "recipes"
BASELINES_DIR = REPO_DIR / "baselines"
