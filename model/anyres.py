"""`anyres_nopad` image tiling as the VideoChat-Flash training code does it (`process_anyres_image_nopad`).

An image is cut into tiles of the encoder's resolution `patch` (224 or 448) at the best grid among the pinpoints
(1x1) ... (6x6), plus one base tile of the whole image, each tile one 64-token unit after merging:

- candidates: (i * patch, j * patch) as (width, height) for i = 1..6 (outer loop) and j = 1..6 (inner loop), the
  order of the reference's expansion of the "(1x1),...,(6x6)" string;
- best grid (`select_best_resolution`): scale the image to fit inside each candidate (keeping its aspect),
  effective resolution = min(int(w * s) * int(h * s), w * h); the candidate with the largest effective resolution
  wins, a tie goes to the smaller wasted area (candidate area - effective), a full tie to the earlier candidate;
- tiling: the image is resized (stretched, PIL bicubic, the default of `Image.resize`) to the chosen size and cut
  row by row, left to right, into patch x patch tiles; the base tile is the whole image resized to
  patch x patch. Order: base tile first, then the grid tiles.
- tokens (operators/train_sample.py `stitched_token_order`, the reference's `prepare_inputs_labels_for_multimodal`
  for `spatial_nopad`, applied where the train loader builds the LLM's input): the
  base tile's 64 tokens first, then the grid tiles' tokens stitched into one grid: each tile's 64 tokens read as
  8 x 8, the tiles' rows laid side by side, so the sequence runs along whole rows of the image (row 0 of tiles
  (0, 0), (0, 1), ..., then row 1 of the same tiles, ...), not tile after tile. No newline token.

The reference sends images of a multi-image record through "pad" instead (one padded square each, no tiles):
that choice belongs to the caller. Pure functions on sizes, plus a PIL tiler.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

PATCH_SIZES = (224, 448)  # the encoder resolutions of the released stages
GRID_PINPOINTS = "(1x1),...,(6x6)"  # the released scripts' image_grid_pinpoints (first and last pair bound the grid)

_PAIR = re.compile(r"\((\d+)x(\d+)\)")


def grid_pinpoints(patch: int, spec: str = GRID_PINPOINTS) -> list[tuple[int, int]]:
    """Candidate (width, height) sizes of a pinpoint range string: the first and the last "(AxB)" of `spec`
    bound the grid, expanded as the reference does (first number outer, second inner), times `patch`."""
    if patch <= 0:
        raise ValueError(f"grid_pinpoints: patch must be positive, got {patch}")
    pairs = _PAIR.findall(spec)
    if not pairs:
        raise ValueError(f"grid_pinpoints: no '(AxB)' pair in {spec!r}")
    (a0, b0), (a1, b1) = (tuple(map(int, pairs[0])), tuple(map(int, pairs[-1])))
    return [(i * patch, j * patch) for i in range(a0, a1 + 1) for j in range(b0, b1 + 1)]


def select_best_resolution(size: tuple[int, int], candidates: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The candidate (width, height) for an image of `size` (width, height): largest effective resolution,
    then least wasted area, then the earliest candidate."""
    w, h = size
    if w <= 0 or h <= 0:
        raise ValueError(f"select_best_resolution: image size must be positive, got {size}")
    best: tuple[int, int] | None = None
    best_eff, best_waste = 0, float("inf")
    for cw, ch in candidates:
        scale = min(cw / w, ch / h)
        eff = min(int(w * scale) * int(h * scale), w * h)
        waste = cw * ch - eff
        if eff > best_eff or (eff == best_eff and waste < best_waste):
            best, best_eff, best_waste = (cw, ch), eff, waste
    if best is None:
        raise ValueError(f"select_best_resolution: no candidate fits an image of {size}")
    return best


def anyres_grid(size: tuple[int, int], patch: int) -> tuple[int, int]:
    """(columns, rows) of the tile grid for an image of `size` (width, height) at encoder resolution `patch`."""
    cw, ch = select_best_resolution(size, grid_pinpoints(patch))
    return cw // patch, ch // patch


def num_tiles(size: tuple[int, int], patch: int) -> int:
    """Tiles an image becomes: the grid's plus the base tile."""
    cols, rows = anyres_grid(size, patch)
    return 1 + cols * rows


def tile_boxes(size: tuple[int, int], patch: int) -> tuple[tuple[int, int], list[tuple[int, int, int, int]]]:
    """The resized size (width, height) and the (left, top, right, bottom) boxes of the grid tiles in it,
    row by row, left to right (`divide_to_patches`)."""
    cw, ch = select_best_resolution(size, grid_pinpoints(patch))
    boxes = [(x, y, x + patch, y + patch) for y in range(0, ch, patch) for x in range(0, cw, patch)]
    return (cw, ch), boxes


def anyres_tiles(image, patch: int, grid_size: tuple[int, int] | None = None) -> list:
    """A PIL image -> [base tile, grid tiles...], each a patch x patch RGB PIL image. `grid_size` (width, height):
    the size the grid is chosen from when the pixels are a resized copy of a larger original (default: the
    image's own size)."""
    from PIL import Image

    if patch not in PATCH_SIZES:
        raise ValueError(f"anyres_tiles: patch must be one of {PATCH_SIZES}, got {patch}")
    img = image.convert("RGB")
    resized_size, boxes = tile_boxes(tuple(grid_size) if grid_size else img.size, patch)
    resized = img.resize(resized_size, Image.BICUBIC)
    base = img.resize((patch, patch), Image.BICUBIC)
    return [base] + [resized.crop(b) for b in boxes]

