"""resize_square matches the UMT preprocessor (PIL bicubic via transformers); dhash64 is stable and sensitive."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from longvid.operators.frames import dhash64, hamming, resize_square
from longvid.synthetic.videos import _frame


def _img(h=240, w=320, seed=0):
    return _frame(37, w, h, seed)


def test_resize_is_pil_bicubic_square_no_crop():
    a = _img(240, 320)
    out = resize_square(a, 224)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    ref = np.asarray(Image.fromarray(a).resize((224, 224), Image.BICUBIC))
    np.testing.assert_array_equal(out, ref)
    # no crop: the left and right edge columns survive (the stamp's first/last blocks stay where they were)
    tall = np.zeros((400, 100, 3), np.uint8)
    tall[:, :10] = 255
    r = resize_square(tall, 200)
    assert r[:, :15].mean() > 200 and r[:, 30:].mean() < 5


def test_resize_matches_umt_preprocessor():
    transforms = pytest.importorskip("transformers.image_transforms")
    from transformers.image_utils import ChannelDimension, PILImageResampling

    for h, w, s in [(240, 320, 224), (1080 // 4, 1920 // 4, 224), (120, 160, 448)]:
        a = _img(h, w, seed=h)
        ref = transforms.resize(a, size=(s, s), resample=PILImageResampling.BICUBIC, data_format=ChannelDimension.LAST)
        np.testing.assert_array_equal(resize_square(a, s), ref)


def test_resize_batch_and_identity():
    batch = np.stack([_img(seed=k) for k in range(3)])
    out = resize_square(batch, 64)
    assert out.shape == (3, 64, 64, 3)
    np.testing.assert_array_equal(out[1], resize_square(batch[1], 64))
    sq = _img(64, 64)
    np.testing.assert_array_equal(resize_square(sq, 64), sq)
    with pytest.raises(ValueError):
        resize_square(batch.astype(np.float32), 64)
    with pytest.raises(ValueError):
        resize_square(batch, 0)


def test_dhash_bit_order():
    g = np.zeros((8, 9), np.uint8)
    g[0, 1] = 255  # row 0: rises from column 0 to 1 -> bit (0, 0) is the most significant bit
    assert dhash64(g) == 1 << 63
    g = np.zeros((8, 9), np.uint8)
    g[7, 8] = 255  # row 7: rises from column 7 to 8 -> bit (7, 7) is the least significant bit
    assert dhash64(g) == 1
    assert dhash64(np.zeros((8, 9), np.uint8)) == 0


def test_dhash_stable_under_small_changes():
    a = _img(seed=1)
    h = dhash64(a)
    assert h == dhash64(a.copy())
    assert 0 <= h < 1 << 64
    rng = np.random.default_rng(0)
    noisy = np.clip(a.astype(int) + rng.integers(-6, 7, a.shape), 0, 255).astype(np.uint8)
    assert hamming(h, dhash64(noisy)) <= 4
    assert hamming(h, dhash64(resize_square(a, 224))) <= 4  # resize does not change the hash much
    brighter = np.clip(a.astype(int) + 20, 0, 255).astype(np.uint8)
    assert hamming(h, dhash64(brighter)) <= 6


def test_dhash_sensitive_to_different_pictures():
    rng = np.random.default_rng(1)
    hs = [dhash64(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)) for _ in range(6)]
    for i in range(len(hs)):
        for j in range(i + 1, len(hs)):
            assert hamming(hs[i], hs[j]) > 12
    assert hamming(dhash64(_img(seed=1)), dhash64(_img(seed=1)[:, ::-1].copy())) > 12  # mirrored


def test_hamming():
    assert hamming(0, 0) == 0
    assert hamming(0b1011, 0b0001) == 2
    assert hamming((1 << 64) - 1, 0) == 64


def test_torch_resize_is_within_one_level_of_pil():
    pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    for h, w in [(240, 320), (360, 640)]:
        a = np.clip(_img(h, w).astype(int) + rng.integers(-40, 40, (h, w, 3)), 0, 255).astype(np.uint8)
        ref = resize_square(a, 224)
        fast = resize_square(a, 224, method="torch")
        assert fast.shape == ref.shape and fast.dtype == np.uint8
        d = np.abs(fast.astype(int) - ref.astype(int))
        assert d.max() <= 1 and (d > 0).mean() < 0.01
    with pytest.raises(ValueError):
        resize_square(_img(), 64, method="cv2")
