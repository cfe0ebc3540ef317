"""Pure tensor math of the closed-form single-image diffusion model.

Everything here takes tensors and plain numbers and returns tensors: no files, no Dask, no
config objects. Functions that touch pixels work on a *region* given in global image
coordinates, so that a whole image and one tile of a gigapixel image run the same code.
"""
