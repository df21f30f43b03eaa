"""Per-frame image operations: the UMT square resize, and a 64-bit difference hash for near-duplicates.

Resize semantics (matching VideoChat-Flash's `UMTImageProcessor`): each uint8 RGB frame goes through
`transformers.image_transforms.resize(size=(S, S), resample=PILImageResampling.BICUBIC)`, which is PIL's
`Image.resize((S, S), Image.BICUBIC)` on the uint8 image: bicubic (with PIL's antialiasing when shrinking) to a
square, no crop, aspect ratio not kept, result rounded to uint8. `resize_square` calls PIL directly, so its
output is byte-identical to that preprocessor's before its /255 and mean/std normalisation.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

_BICUBIC = Image.Resampling.BICUBIC


def _check_frame(a: np.ndarray) -> None:
    if a.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {a.dtype}")
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"a frame must be [H, W, 3] RGB, got shape {a.shape}")


def dhash64(frame: np.ndarray) -> int:
    """64-bit difference hash of an RGB (or grey) uint8 frame: the manifest's `frame_hashes` (ingest writes them,
    the audit compares them).

    The frame is turned to grey (PIL "L": ITU-R 601 luma) and box-averaged to 9 columns x 8 rows. Bit for
    (row r, column c), c < 8, is 1 when grey[r, c + 1] > grey[r, c] (brightness rises to the right).
    Bits are packed row-major with (0, 0) as the most significant bit: bit index 63 - (8 * r + c).
    Equal frames give equal hashes; near-duplicates differ in a few bits (compare with Hamming distance).
    """
    a = np.asarray(frame)
    if a.dtype != np.uint8 or a.ndim not in (2, 3):
        raise ValueError(f"dhash64 needs a uint8 [H, W] or [H, W, 3] frame, got {a.dtype} {a.shape}")
    img = Image.fromarray(np.ascontiguousarray(a))
    if img.mode != "L":
        img = img.convert("L")
    g = np.asarray(img.resize((9, 8), Image.Resampling.BOX), dtype=np.int16)
    bits = (g[:, 1:] > g[:, :-1]).reshape(-1).astype(np.uint64)
    return int((bits << np.arange(63, -1, -1, dtype=np.uint64)).sum())


RESIZE_METHODS = ("pil", "torch")


def resize_one(frame: np.ndarray, size: int, method: str = "pil") -> np.ndarray:
    """Bicubic resize of one [H, W, 3] uint8 RGB frame to [size, size, 3].

    method "pil" (default): PIL bicubic, byte-identical to the UMT preprocessor.
    method "torch": torch's uint8 antialiased bicubic kernel, 4-10x faster on 720p/1080p frames; it differs
    from PIL by 1-2 (of 255) on about 0.1-0.2% of the values (measured on synthetic 1080p frames and in
    tests/operators/test_frames.py); the stored mp4 (4:4:4 crf 15) differs from its input by about 1 on average,
    4 at p99.
    """
    _check_frame(frame)
    if frame.shape[0] == size and frame.shape[1] == size:
        return np.array(frame, copy=True)
    if method == "pil":
        img = Image.fromarray(np.ascontiguousarray(frame))
        return np.asarray(img.resize((size, size), _BICUBIC))
    if method == "torch":
        import torch

        x = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1).unsqueeze(0)  # channels-last view
        y = torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
        return np.ascontiguousarray(y[0].permute(1, 2, 0).numpy())
    raise ValueError(f"unknown resize method {method!r}; expected one of {RESIZE_METHODS}")


def resize_square(frame_or_frames: np.ndarray, size: int, method: str = "pil") -> np.ndarray:
    """[H, W, 3] -> [size, size, 3] or [N, H, W, 3] -> [N, size, size, 3], uint8, bicubic, no crop."""
    if not isinstance(size, (int, np.integer)) or size <= 0:
        raise ValueError(f"size must be a positive int, got {size!r}")
    if method not in RESIZE_METHODS:
        raise ValueError(f"unknown resize method {method!r}; expected one of {RESIZE_METHODS}")
    a = np.asarray(frame_or_frames)
    if a.ndim == 3:
        return resize_one(a, int(size), method)
    if a.ndim == 4:
        out = np.empty((a.shape[0], size, size, 3), np.uint8)
        for k in range(a.shape[0]):
            out[k] = resize_one(a[k], int(size), method)
        return out
    raise ValueError(f"expected [H, W, 3] or [N, H, W, 3] uint8, got shape {a.shape}")


def hamming(a: int, b: int) -> int:
    """Number of differing bits between two hashes."""
    return int(a ^ b).bit_count()
