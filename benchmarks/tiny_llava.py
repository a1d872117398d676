"""A tiny randomly initialised LLaVA-NeXT saved to a folder, built offline from configs (no download).

The describer tests and the GPU check (benchmarks/gpu_check.py) load it exactly as they would a real model: the
tokenizer is a word-level one made with the `tokenizers` library and the processor is saved next to the model.

    python benchmarks/tiny_llava.py FOLDER
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

WORDS = (
    "describe the land use in photo concisely using less than 20 words common visual attributes of all photos "
    "fewer green field fields river forest road roads city houses crops water trees a and with , ."
).split()
CHAT_TEMPLATE = (
    "{% for message in messages %}USER: {% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image> {% else %}{{ part['text'] }}{% endif %}{% endfor %}{% endfor %} ASSISTANT:"
)
PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64]]
SPECIAL = ["<unk>", "<pad>", "<s>", "</s>", "<image>"]


def build_processor(vocab: dict[str, int]):
    """The word-level tokenizer and the LLaVA-NeXT image processor, as one processor."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlavaNextImageProcessor, LlavaNextProcessor, PreTrainedTokenizerFast

    word_level = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    word_level.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    word_level.decoder = decoders.WordPiece()  # joins words with spaces
    # transformers 5 names the image token; 4.x only needs it to be a special token
    major = int(transformers.__version__.split(".")[0])
    image_token = (
        {"extra_special_tokens": {"image_token": "<image>"}}
        if major >= 5
        else {"additional_special_tokens": ["<image>"]}
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=word_level,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        **image_token,
    )
    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_grid_pinpoints=PINPOINTS
    )
    # a CLIP vision tower adds its class token, which the "default" feature strategy drops: one extra token
    return LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE,
        num_additional_image_tokens=1,
    )


def build_tiny_llava(folder: Path) -> str:
    """Save the model and its processor in `folder` (the describer names the model by the folder's last part)."""
    from transformers import CLIPVisionConfig, LlavaNextConfig, LlavaNextForConditionalGeneration, MistralConfig

    vocab = {token: i for i, token in enumerate(SPECIAL + sorted(set(WORDS)) + ["USER:", "ASSISTANT:"])}
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
        ),
        text_config=MistralConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            max_position_embeddings=512,
            pad_token_id=1,
            bos_token_id=2,
            eos_token_id=3,
        ),
        image_token_index=vocab["<image>"],
        image_grid_pinpoints=PINPOINTS,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        image_seq_length=16,  # (32 / 8)^2 patches: transformers < 4.50 compares against it
    )
    torch.manual_seed(0)
    model = LlavaNextForConditionalGeneration(config)
    with torch.no_grad():  # a random model often ends at once; zero logits for special tokens keep it talking
        model.get_output_embeddings().weight[: len(SPECIAL)] = 0
    folder = Path(folder)
    model.save_pretrained(folder)
    build_processor(vocab).save_pretrained(folder)
    return str(folder)


if __name__ == "__main__":
    print(build_tiny_llava(Path(sys.argv[1])))
