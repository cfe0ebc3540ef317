"""Nearest-neighbour indexes of the ANN denoiser (FAISS build, PCA basis)."""
