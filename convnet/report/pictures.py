"""The report's raster pictures: PNGs encoded in memory by Pillow, inlined as data URIs.

- ``png_uri``: a uint8 image (H, W) or (H, W, 3), or palette indices with a palette, as
  ``data:image/png;base64,...``; ``file_uri`` the same for a PNG file.
- ``activation_grid``: every channel of one activation volume (C, H, W) tiled into one
  palette PNG (viridis, one byte per pixel), each map shrunk by area averaging where it
  is larger than ``max_pixels`` allows and scaled to its own min..max.
- ``tile_size``: the size each map gets in that grid (used to plan a page's size first).
- ``display_images``: the model's normalized inputs back to uint8 pixels for display.
"""

from __future__ import annotations

import base64
import functools
import io
import math

import numpy as np

from convnet.plot import unit_range

MIN_TILE = 8        # a map is never shrunk below 8 pixels a side (or its own size)
KEEP = 1.5          # a map at most 1.5x its share on a side keeps its size
PAD = 1             # pixels between the tiles of a grid
BACKGROUND = 255    # the palette index of the gaps: white (the maps use 0..254)


def require():
    """Pillow and matplotlib (the ``plot`` extra), or an ImportError saying how to get them."""
    try:
        import matplotlib  # noqa: F401
        import PIL  # noqa: F401
    except ImportError:
        raise ImportError("the report needs matplotlib and Pillow: "
                          "pip install 'convnet[plot]'") from None


@functools.lru_cache(maxsize=1)
def palette():
    """viridis in 255 steps (indices 0..254, dark to bright) and white at 255, flat RGB."""
    from matplotlib import colormaps

    rgb = (colormaps["viridis"](np.linspace(0, 1, 255))[:, :3] * 255).round()
    return [int(v) for v in rgb.astype(np.uint8).ravel()] + [255, 255, 255]


def png_uri(image, indexed=False):
    """A uint8 image (H, W) gray or (H, W, 3) RGB as a PNG data URI; indexed=True reads
    (H, W) as indices into ``palette()``."""
    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    if indexed:
        im.putpalette(palette())          # an "L" image becomes "P": one byte per pixel
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=6)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def file_uri(path):
    """A PNG file's bytes as a data URI."""
    with open(path, "rb") as f:
        return "data:image/png;base64," + base64.b64encode(f.read()).decode("ascii")


def tile_size(shape, max_pixels):
    """(TH, TW) for each of the C maps of a (C, H, W) volume so that C * TH * TW stays
    near max_pixels: both sides shrink by one factor, never below MIN_TILE (or H, W).
    Maps within 1.5x of that size on a side keep their own (a shrink by less would blur
    them for little gain)."""
    c, h, w = shape
    factor = math.sqrt(max_pixels / (c * h * w))
    if factor >= 1 / KEEP:
        return h, w
    return (max(min(h, MIN_TILE), round(h * factor)), max(min(w, MIN_TILE), round(w * factor)))


def grid_columns(count, tile):
    """Columns of a grid of ``count`` tiles (TH, TW): one row up to 16, else about 3:1."""
    th, tw = tile
    if count <= 16:
        return count
    return min(count, math.ceil(math.sqrt(3 * count * th / tw)))


def grid_shape(count, tile):
    """(height, width) in pixels of the grid of ``count`` tiles, gaps included."""
    cols = grid_columns(count, tile)
    rows = math.ceil(count / cols)
    return rows * (tile[0] + PAD) + PAD, cols * (tile[1] + PAD) + PAD


def shrink(maps, tile):
    """(C, H, W) float maps -> (C, TH, TW) by area averaging (Pillow's box filter).

    The maps are resized as one (C*H, W) image to (C*TH, TW): the boundary between maps
    c-1 and c falls on row c*H = (c*TH) * (H/TH), an exact output row, so no output pixel
    mixes two maps.
    """
    from PIL import Image

    c, h, w = maps.shape
    th, tw = tile
    if (th, tw) == (h, w):
        return maps
    stacked = Image.fromarray(np.ascontiguousarray(maps, dtype=np.float32).reshape(c * h, w))
    small = stacked.resize((tw, c * th), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32).reshape(c, th, tw)


def activation_grid(maps, max_pixels):
    """All C maps of one activation volume (C, H, W) as one palette PNG.

    Returns (data URI, geometry): geometry has the tile size "th", "tw", "cols", "count",
    "pad" and the grid's "width" and "height" in pixels (the page's hover uses them to
    name the channel under the mouse) and "not_finite", the count of NaN or infinite
    values in the maps. Each map is scaled to its own finite min..max (a constant map,
    and NaN or infinite values, are drawn dark), except maps of one value (after global
    average pooling), which share the volume's min..max; maps are in channel order, row
    by row.
    """
    c = maps.shape[0]
    tile = tile_size(maps.shape, max_pixels)
    small = shrink(maps, tile)                                   # (C, TH, TW)
    axes = (0, 1, 2) if maps.shape[1] * maps.shape[2] == 1 else (1, 2)
    index = (unit_range(small, axes) * 254).round().astype(np.uint8)
    cols = grid_columns(c, tile)
    rows = math.ceil(c / cols)
    th, tw = tile
    tiles = np.full((rows * cols, th + PAD, tw + PAD), BACKGROUND, dtype=np.uint8)
    tiles[:c, :th, :tw] = index
    grid = tiles.reshape(rows, cols, th + PAD, tw + PAD).transpose(0, 2, 1, 3)
    grid = grid.reshape(rows * (th + PAD), cols * (tw + PAD))
    grid = np.pad(grid, ((PAD, 0), (PAD, 0)), constant_values=BACKGROUND)
    geometry = {"th": th, "tw": tw, "cols": cols, "count": c, "pad": PAD,
                "height": grid.shape[0], "width": grid.shape[1],
                "not_finite": int(maps.size - np.isfinite(maps).sum())}
    return png_uri(grid, indexed=True), geometry


def display_images(x, info):
    """Normalized model inputs (N, C, H, W) -> uint8 pixels (N, C, H, W) for display.

    With the model's recorded mean and std the normalization is undone (pixels in [0, 1]
    times 255); without them each image is scaled to its own min..max.
    """
    x = np.asarray(x, dtype=np.float64)
    if "mean" in info and "std" in info:
        mean = np.asarray(info["mean"], dtype=np.float64).reshape(1, -1, 1, 1)
        std = np.asarray(info["std"], dtype=np.float64).reshape(1, -1, 1, 1)
        pixels = x * std + mean
    else:
        low = x.min(axis=(1, 2, 3), keepdims=True)
        span = x.max(axis=(1, 2, 3), keepdims=True) - low
        pixels = (x - low) / np.where(span > 0, span, 1)
    return (np.clip(np.nan_to_num(pixels), 0, 1) * 255).round().astype(np.uint8)


def image_uri(pixels):
    """One uint8 image (C, H, W) as a PNG data URI: RGB for 3 channels, else the first
    channel in gray."""
    pixels = np.asarray(pixels)
    return png_uri(pixels.transpose(1, 2, 0) if pixels.shape[0] == 3 else pixels[0])
