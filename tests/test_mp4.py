"""encode_mp4 / decode_mp4: one H.264 frame per input frame, in order, readable by plain PyAV and decord."""
from __future__ import annotations

import io

import av
import numpy as np
import pytest

from longvid.operators.errors import RecordError
from longvid.operators.frames import resize_square
from longvid.operators.mp4 import decode_mp4, encode_mp4
from longvid.pipelines.synth_video import _frame, read_frame_number


def stamped(numbers, size=224):
    return np.stack([resize_square(_frame(int(i), 320, 240, 3), size) for i in numbers])


@pytest.mark.parametrize("fps", [1.0, 0.25, 2.0, 30000 / 1001])
def test_round_trip_count_and_order(fps):
    nums = [5, 3, 3, 900, 0, 17, 17, 17, 44, 1, 2, 65535, 7, 8, 9, 10, 11]  # repeats and jumps: nothing merged
    data = encode_mp4(stamped(nums), fps=fps)
    assert data[4:8] == b"ftyp"
    back = decode_mp4(data)
    assert back.shape == (len(nums), 224, 224, 3) and back.dtype == np.uint8
    assert [read_frame_number(f) for f in back] == nums


def test_plain_pyav_reads_it():
    frames = stamped(range(40))
    data = encode_mp4(frames, fps=1.0, crf=18)
    with av.open(io.BytesIO(data)) as c:
        st = c.streams.video[0]
        assert st.codec_context.name == "h264"
        assert st.frames == 40
        assert float(st.average_rate) == pytest.approx(1.0)
        assert c.duration / av.time_base == pytest.approx(40.0, abs=0.01)
        got = [f.to_ndarray(format="rgb24") for f in c.decode(st)]
    assert [read_frame_number(f) for f in got] == list(range(40))
    err = np.abs(np.stack(got).astype(int) - frames.astype(int)).mean()
    assert err < 6  # a faithful picture, not just the stamp


def test_decord_reads_it(tmp_path):
    decord = pytest.importorskip("decord")
    data = encode_mp4(stamped(range(24)), fps=2.0)
    p = tmp_path / "s.mp4"
    p.write_bytes(data)
    vr = decord.VideoReader(str(p))
    assert len(vr) == 24 and vr.get_avg_fps() == pytest.approx(2.0)
    assert [read_frame_number(f) for f in vr.get_batch(list(range(24))).asnumpy()] == list(range(24))


def test_single_frame_and_448():
    back = decode_mp4(encode_mp4(stamped([123], size=448)))
    assert back.shape == (1, 448, 448, 3) and read_frame_number(back[0]) == 123


def test_bad_inputs():
    with pytest.raises(ValueError):
        encode_mp4(np.zeros((0, 224, 224, 3), np.uint8))
    with pytest.raises(ValueError):
        encode_mp4(np.zeros((2, 223, 224, 3), np.uint8))  # odd size
    with pytest.raises(ValueError):
        encode_mp4(np.zeros((2, 224, 224, 3), np.float32))
    with pytest.raises(ValueError):
        encode_mp4(np.zeros((2, 224, 224, 3), np.uint8), fps=0)
    with pytest.raises(RecordError):
        decode_mp4(b"")
    with pytest.raises(RecordError):
        decode_mp4(b"definitely not an mp4" * 10)
