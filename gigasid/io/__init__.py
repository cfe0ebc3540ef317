"""Reading inputs and writing outputs (images, pyramidal TIFF, DeepZoom, viewer)."""
