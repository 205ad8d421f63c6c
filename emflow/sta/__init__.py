"""Subtomogram-averaging stages (EMAN2 >= 2.99 workflow): import, tomogram, template matching,
picks, extraction, sets, initial model, 3D/subtilt alignment, refinement, postprocess."""
