"""MT2 inference: an input folder of microscopy images in, one instance-label TIFF per image out.

This package must stay importable without torch: it is what the challenge container runs.
"""

__version__ = "0.1.0"
