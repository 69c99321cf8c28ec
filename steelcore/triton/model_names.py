"""The models of the Triton repository: triton_models/ and what training.triton_export writes.

Named once here for the exporter, the model lifecycle that edits the serving repository, and the
dashboard that shows which versions are loaded.
"""

from __future__ import annotations

ENSEMBLE = "steel_ensemble"
CASCADE = "steel_cascade"
CLASSIFIER = "classifier"
SEGMENTER = "segmenter"
POSTPROCESS = "postprocess"
MODELS: tuple[str, ...] = (CLASSIFIER, SEGMENTER, POSTPROCESS, ENSEMBLE, CASCADE)
# What the exporter wrote into a repository (bundle, networks, int8), at the repository's root.
MANIFEST = "repository.json"
# The models that hold one version per registered bundle (not the ensemble, which has one version).
VERSIONED_MODELS: tuple[str, ...] = (CLASSIFIER, SEGMENTER, POSTPROCESS, CASCADE)
