"""The font of labelled images (apg compare's grid, apg eval's sample grid): one with the Greek of the labels."""

from __future__ import annotations


def font(size: int):
    """DejaVu Sans (matplotlib's, else the system's) for η, β, σ; Pillow's own font (no Greek) as the last resort."""
    from PIL import ImageFont

    try:
        from matplotlib import font_manager

        return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)
    except (ImportError, OSError):
        pass
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        return ImageFont.load_default(size)
