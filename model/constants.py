"""The numbers and names every room shares, defined once (no imports: cheap for the CLI and the decode workers).

- `FRAMES_PER_CLIP`: frames per HiCo clip (the released `mm_local_num_frames`); the UMT position table's length.
- `TOKENS_PER_FRAME`: merged HiCo tokens per frame, so `TOKENS_PER_CLIP` = 64 per clip (and per image tile).
- `TILE_TOKENS_PER_SIDE`: the side of the square an image tile's 64 tokens are read as when the grid tiles of an
  `anyres_nopad` image are stitched into one token grid (operators/train_sample.py `stitched_token_order`).
- `IGNORE_INDEX`: the label of tokens the loss does not train on (-100: the transformers / torch default).
- `MODEL_PRESETS`: the names of model/config.py's presets (the jobs' `model` settings accept them without importing
  torch; tests/jobs/test_cli.py keeps the two equal).
- Checkpoint key prefixes: the released (LLaVA-style) names of the vision tower and the projector, and the prefixes
  LongVid's own training checkpoints use. Only model/checkpoint.py reads checkpoints by these names.
"""
from __future__ import annotations

FRAMES_PER_CLIP = 4
TOKENS_PER_FRAME = 16
TOKENS_PER_CLIP = FRAMES_PER_CLIP * TOKENS_PER_FRAME
TILE_TOKENS_PER_SIDE = 8  # an image tile's 64 merged tokens read as 8 x 8 (the released projector's num_image_patches_per_side)
IGNORE_INDEX = -100
MODEL_PRESETS = ("tiny", "videochat-flash-7b", "videochat-flash-2b")

# released VideoChat-Flash checkpoints (model/checkpoint.py; reference: videochat-flash.md "Checkpoint names")
LLAVA_VISION_PREFIX = "model.vision_tower.vision_tower.encoder."
LLAVA_PROJECTOR_PREFIX = "model.mm_projector."
LLAVA_LLM_PREFIXES = ("model.embed_tokens.", "model.layers.", "model.norm.", "lm_head.")  # the Qwen2 names
STANDALONE_ENCODER_PREFIX = "encoder."  # UMT-L_f4_vision.pt
# LongVid's own checkpoints: VideoLLM.state_dict() (llm.*, projector.*) and the train job's stage weights (vlm.*,
# encoder.*: pipelines/train_model.py TrainModel)
VLM_PREFIX = "vlm."
LLM_PREFIX = "llm."
PROJECTOR_PREFIX = "projector."
ENCODER_PREFIX = "encoder."
