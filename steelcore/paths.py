"""Where the repository keeps what the code reads at run time."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = REPO_ROOT / "models"
TRITON_REPOSITORY = REPO_ROOT / "triton_models"
DOCS_DIR = REPO_ROOT / "docs"
# shared/ sits beside the checkout on developer machines and in CI.
SHARED_DATA_DIR = REPO_ROOT.parent / "shared" / "data"
SEVERSTAL_SAMPLE_DIR = SHARED_DATA_DIR / "severstal_sample"
NEU_SEG_DIR = SHARED_DATA_DIR / "neu_seg"
