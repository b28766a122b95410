"""Image-text matching: score matrices, Winoground, the CLIP baseline and the CLIP shortlist."""
