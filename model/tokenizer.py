"""Tokenizers and the Qwen2 chat format with training labels.

- `build_test_tokenizer()`: a small real byte-level BPE (tokenizers library), trained here on a fixed built-in
  text, wrapped as a transformers fast tokenizer with the Qwen2 special tokens `<|endoftext|>`, `<|im_start|>`,
  `<|im_end|>` and the image placeholder `<image>`. Deterministic: the same ids on every machine. No downloads.
- `load_tokenizer(path)`: a real tokenizer from a local directory (Qwen2-7B-Instruct, Qwen2.5-1.5B-Instruct),
  with `<image>` added as a special token when missing.
- `format_chat(conversations, tokenizer, label_mode=...)`: LLaVA-format turns -> (input_ids, labels).
  Label modes (see LABEL_MODES):
  - `"assistant"` (the default, unchanged): the Qwen2 chat template
        <|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n{q}<|im_end|>\\n<|im_start|>assistant\\n{a}<|im_end|>\\n
    training the answer text and its `<|im_end|>` only (header and answer tokenized apart).
  - `"qwen_2"` (alias `"llava"`): the released `preprocess_qwen` of stages 2-4, exactly: the same template, a
    leading non-human turn dropped, every turn tokenized as one string, labels = whole assistant turns (header
    and trailing newline included) plus every `<|im_start|>`, `<|im_end|>` and lone-newline token anywhere.
  - `"plain"`: the released `preprocess_plain` of stage 1: exactly two turns, the human one (which must hold
    `<image>`) replaced by the bare `<image>`; text `<image>` + answer + "\\n"; labels = everything after `<image>`.
    No system turn, no question, no timestamp message.
  `<image>` becomes the single image-token id that `VideoLLM` replaces with the visual tokens; a trained
  `<image>` is masked (the reference would train on the placeholder's id).
- `FastTokenizer(tok)`: the training loader's wrapper, same ids, the Rust tokenizer called directly and the
  constant pieces memoised; `chat_encoder(tok)`: format_chat bound to a tokenizer, as the loader's sample parser
  takes it.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Callable, Literal

from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from longvid.model.constants import IGNORE_INDEX

IMAGE_TOKEN = "<image>"
ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END, IMAGE_TOKEN)
DEFAULT_SYSTEM = "You are a helpful assistant."
ROLES = {"human": "user", "gpt": "assistant"}

LabelMode = Literal["assistant", "qwen_2", "llava", "plain"]
LABEL_MODES = ("assistant", "qwen_2", "llava", "plain")

_TRAIN_TEXT = """\
You are a helpful assistant. The video lasts for 37.50 seconds, and 36 frames are uniformly sampled from it.
Describe the video in detail. What happens in the video? Where is the red car? When does the man open the door?
A person is cooking in a kitchen, cutting vegetables and stirring a pot on the stove.
The event happens in the 12.0 - 18.5 seconds. Answer with the option's letter from the given choices directly.
(A) a dog (B) a cat (C) a bird (D) a horse. Best option: (A). The answer is yes. The answer is no.
A woman walks along the beach at sunset while waves roll in. Two children play football in a park.
First, the chef slices onions; then she adds them to the pan; finally she serves the dish on a white plate.
Question: what color is the umbrella? Answer: blue. How many people appear? Three people appear in the video.
0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 30 40 50 60 100 512 1000 seconds frames minutes hours
"""


def build_test_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A small byte-level BPE with the Qwen2 specials at ids 0..3 (`<|endoftext|>`, `<|im_start|>`,
    `<|im_end|>`, `<image>`), trained on a fixed text; eos = `<|im_end|>`, pad = `<|endoftext|>` as in Qwen2."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_TRAIN_TEXT.splitlines(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=IM_END, pad_token=ENDOFTEXT, unk_token=None, clean_up_tokenization_spaces=False
    )
    fast.add_special_tokens({"additional_special_tokens": [IM_START, IM_END, IMAGE_TOKEN]})
    return fast


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """Load a tokenizer from a local directory (no hub access) and make sure `<image>` is one special token."""
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"load_tokenizer: {p} is not a directory holding a tokenizer")
    tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    if tok.convert_tokens_to_ids(IMAGE_TOKEN) in (None, tok.unk_token_id):
        tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    for t in (IM_START, IM_END):
        if tok.convert_tokens_to_ids(t) in (None, tok.unk_token_id):
            raise ValueError(f"load_tokenizer: {p}: tokenizer has no {t} token (not a Qwen2 chat tokenizer?)")
    return tok


def image_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """Id of the `<image>` placeholder."""
    tid = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if tid is None or tid == tokenizer.unk_token_id:
        raise ValueError("tokenizer has no <image> token: use build_test_tokenizer() or load_tokenizer()")
    return int(tid)


def _ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def format_chat(
    conversations: Sequence[Mapping[str, str]],
    tokenizer: PreTrainedTokenizerBase,
    *,
    system: str | None = DEFAULT_SYSTEM,
    label_mode: LabelMode = "assistant",
    add_generation_prompt: bool = False,
) -> tuple[list[int], list[int]]:
    """LLaVA turns [{"from": "human"|"gpt", "value": str}, ...] -> (input_ids, labels), equal lengths.

    Each turn is `<|im_start|>{role}\\n{value}<|im_end|>\\n`, preceded by the system turn (omitted when
    `system` is None). Labels are IGNORE_INDEX (-100) except on trained tokens (see the module docstring).
    `add_generation_prompt` appends `<|im_start|>assistant\\n` (unlabelled) for inference prompts.
    In "assistant" mode the pieces are tokenized separately and concatenated, so the answer's tokens do not
    depend on the header; "qwen_2"/"llava" tokenize each whole turn as the reference does. "plain" ignores
    `system` and `add_generation_prompt` (see `format_plain`).
    """
    if label_mode not in LABEL_MODES:
        raise ValueError(f"format_chat: label_mode must be one of {', '.join(LABEL_MODES)}, got {label_mode!r}")
    if label_mode == "plain":
        return format_plain(conversations, tokenizer)
    turns = _check_turns(conversations)
    reference = label_mode in ("qwen_2", "llava")
    if reference and turns and turns[0][0] != "human":
        turns = turns[1:]  # preprocess_qwen drops a leading non-human turn
    ids: list[int] = []
    labels: list[int] = []
    encode = _encoder(tokenizer)

    def add(text: str, train: bool) -> None:
        piece = encode(text)
        ids.extend(piece)
        labels.extend(piece if train else [IGNORE_INDEX] * len(piece))

    if system is not None:
        add(f"{IM_START}system\n{system}{IM_END}\n", False)
    for who, value in turns:
        role = ROLES[who]
        if role == "user":
            add(f"{IM_START}user\n{value}{IM_END}\n", False)
        elif reference:
            add(f"{IM_START}assistant\n{value}{IM_END}\n", True)
        else:
            add(f"{IM_START}assistant\n", False)
            add(f"{value}{IM_END}", True)
            add("\n", False)
    if add_generation_prompt:
        add(f"{IM_START}assistant\n", False)

    if reference:
        unmask = {tokenizer.convert_tokens_to_ids(IM_START), tokenizer.convert_tokens_to_ids(IM_END)}
        nl = _ids(tokenizer, "\n")
        if len(nl) == 1:
            unmask.add(nl[0])  # Qwen2's 198, the id the reference hard-codes
        labels = [t if t in unmask else lab for t, lab in zip(ids, labels)]
    return ids, _mask_image(tokenizer, ids, labels)


def format_plain(conversations: Sequence[Mapping[str, str]], tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    """The stage-1 `plain` template (`preprocess_plain`): exactly two turns, the first holding `<image>`.

    Text = `<image>` + the second turn's value + "\\n" (the first turn's question and timestamp message are
    dropped); labels = every token after the `<image>`. Raises ValueError naming the turn otherwise.
    """
    turns = _check_turns(conversations)
    if len(turns) != 2:
        raise ValueError(f"format_chat: the plain template needs exactly 2 turns, got {len(turns)}")
    if IMAGE_TOKEN not in turns[0][1]:
        raise ValueError("format_chat: conversations[0].value must hold <image> for the plain template")
    img = image_token_id(tokenizer)
    answer = _encoder(tokenizer)(turns[1][1] + "\n")
    ids = [img] + answer
    return ids, _mask_image(tokenizer, ids, [IGNORE_INDEX] + list(answer))


def _check_turns(conversations: Sequence[Mapping[str, str]]) -> list[tuple[str, str]]:
    out = []
    for i, turn in enumerate(conversations):
        who = turn.get("from")
        if who not in ROLES:
            raise ValueError(f"format_chat: conversations[{i}].from must be 'human' or 'gpt', got {who!r}")
        value = turn.get("value")
        if not isinstance(value, str):
            raise ValueError(f"format_chat: conversations[{i}].value must be a string, got {type(value).__name__}")
        out.append((who, value))
    return out


def _encoder(tokenizer: PreTrainedTokenizerBase):
    # a tokenizer may offer text_ids(text) -> ids without special tokens (the loader's memoising wrapper does)
    return getattr(tokenizer, "text_ids", None) or (lambda text: _ids(tokenizer, text))


def _mask_image(tokenizer: PreTrainedTokenizerBase, ids: list[int], labels: list[int]) -> list[int]:
    img = image_token_id(tokenizer)
    if img in labels:  # labels hold either the id or IGNORE_INDEX: only a trained <image> needs masking
        labels = [IGNORE_INDEX if t == img else lab for t, lab in zip(ids, labels)]
    return labels


def chat_encoder(tokenizer: PreTrainedTokenizerBase) -> Callable[[Sequence[Mapping[str, str]], str],
                                                                 tuple[list[int], list[int]]]:
    """format_chat bound to a tokenizer: (conversations, label_mode) -> (input_ids, labels), what the training
    loader's sample parser (operators/train_sample.py, which does not import the model) is handed."""

    def chat(conversations: Sequence[Mapping[str, str]], label_mode: LabelMode) -> tuple[list[int], list[int]]:
        return format_chat(conversations, tokenizer, label_mode=label_mode)

    return chat


class FastTokenizer:
    """Wraps a transformers fast tokenizer so that `tok(text, add_special_tokens=False)["input_ids"]` (what
    `model.tokenizer.format_chat` calls for every piece of a chat) goes straight to the Rust tokenizer, with the
    constant pieces (system turn, role headers) memoised. Everything else is delegated. The fast path is used only
    when it gives the same ids as the wrapped tokenizer on a probe text; otherwise calls go through unchanged."""

    PROBE = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\nThe video "
             "lasts for 37.50 seconds, and 36 frames are uniformly sampled from it. \nWhat happens? é 你好<|im_end|>\n")

    def __init__(self, tok: Any):
        self._tok = tok
        self._cache: dict[str, list[int]] = {}
        self._ids: dict[str, int] = {}
        self.unk_token_id = tok.unk_token_id  # a transformers property that looks the token up on every read
        rust = getattr(tok, "_tokenizer", None)
        self._rust = None
        self._encode: Callable[[str], list[int]] | None = None
        if rust is not None and hasattr(rust, "encode"):
            # encode_batch_fast (tokenizers >= 0.20) skips the character offsets: ~25% less per call
            fast = getattr(rust, "encode_batch_fast", None)
            candidates: list[Callable[[str], list[int]]] = []
            if fast is not None:
                candidates.append(lambda t: fast([t], add_special_tokens=False)[0].ids)
            candidates.append(lambda t: rust.encode(t, add_special_tokens=False).ids)
            try:
                want = list(tok(self.PROBE, add_special_tokens=False)["input_ids"])
            except Exception:
                want = None
            for enc in candidates:
                try:
                    if want is not None and enc(self.PROBE) == want:
                        self._rust, self._encode = rust, enc
                        break
                except Exception:  # any mismatch in API: try the next, else stay on the slow, exact path
                    continue

    def __call__(self, text: Any, add_special_tokens: bool = True, **kw: Any) -> Any:
        if self._rust is None or add_special_tokens or kw or not isinstance(text, str):
            return self._tok(text, add_special_tokens=add_special_tokens, **kw)
        return {"input_ids": self.text_ids(text)}

    def text_ids(self, text: str) -> list[int]:
        """Ids of `text` without special tokens (what format_chat asks for each piece of a chat). A new list
        every call: callers may extend it."""
        if self._rust is None:
            return list(self._tok(text, add_special_tokens=False)["input_ids"])
        ids = self._cache.get(text)
        if ids is None:
            ids = self._encode(text)  # type: ignore[misc]
            if len(text) <= 64 and len(self._cache) < 4096:
                self._cache[text] = ids
            else:
                return ids
        return list(ids)

    def convert_tokens_to_ids(self, tokens: Any) -> Any:
        """The wrapped tokenizer's lookup, memoised for single tokens it knows (format_chat asks for the image
        token's id on every sample). Tokens it does not know are never memoised, so tokens added later still
        resolve; known tokens keep their ids."""
        if isinstance(tokens, str):
            tid = self._ids.get(tokens)
            if tid is None:
                tid = self._tok.convert_tokens_to_ids(tokens)
                if tid is not None and tid != self.unk_token_id and len(self._ids) < 1024:
                    self._ids[tokens] = tid
            return tid
        return self._tok.convert_tokens_to_ids(tokens)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tok, name)
