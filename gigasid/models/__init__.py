"""Pretrained models gigasid can use at the edge of an application (loaded from the user's
files, never bundled): CLIP for text-guided style. Nothing in ``core`` or ``engine`` imports
this package."""
