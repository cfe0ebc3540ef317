"""The region-based engine: plans scales and tiles, runs transitions tile by tile, reports."""
