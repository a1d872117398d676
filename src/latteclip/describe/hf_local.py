"""The `transformers` describer: an image-text-to-text model (LLaVA-NeXT, ...) run in this process.

For a user with a local GPU and no server. Requests are batched: the processor's chat template
turns each prompt into the model's conversation format, prompts are padded on the left so every
row ends where generation starts, and decoding is greedy with at most 77 new tokens, as with
the HTTP backend. The weights load straight onto the device (`device_map`), never whole into CPU
memory first. With `--concurrency` above 1, one thread prepares the next batch while another
generates: the processor (a fast tokenizer is not thread-safe) and the model each have a lock.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import torch

from latteclip.describe.backend import Describer, ItemFailed, Request
from latteclip.errors import LatteclipError

MAX_NEW_TOKENS = 77


class TransformersDescriber(Describer):
    backend = "transformers"

    def __init__(
        self, model: str, device: torch.device | str = "cpu", batch_size: int = 8, max_new_tokens: int = MAX_NEW_TOKENS
    ):
        try:
            import transformers
            from transformers import AutoModelForImageTextToText, AutoProcessor
        except ImportError as err:
            raise LatteclipError(
                "the transformers backend needs the transformers package: pip install 'latteclip[transformers]'"
            ) from err
        if not model:
            raise LatteclipError("the transformers backend needs --lmm-model (a local folder or a Hugging Face id)")
        self.device = torch.device(device)
        try:
            self.processor = AutoProcessor.from_pretrained(model)
            dtype = {dtype_argument(transformers.__version__): model_dtype(self.device)}
            self.lmm = AutoModelForImageTextToText.from_pretrained(model, device_map={"": self.device}, **dtype).eval()
        except ImportError as err:  # transformers 4.x places weights with accelerate
            raise LatteclipError(
                f"loading {model} onto {self.device} needs accelerate: pip install 'latteclip[transformers]'"
            ) from err
        except (OSError, ValueError) as err:
            raise LatteclipError(
                f"cannot load the image-text-to-text model {model}: {str(err).splitlines()[0]}"
            ) from err
        if not getattr(self.processor, "chat_template", None):
            raise LatteclipError(
                f"the processor of {model} has no chat template, so prompts cannot be put in its format"
            )
        self.processor.tokenizer.padding_side = "left"
        # a local folder is named by its last part, which is the model's name on the hub for downloaded copies
        self.model = Path(model).name if Path(model).is_dir() else model
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self._lock = threading.Lock()  # one generation at a time on the device
        self._processor_lock = threading.Lock()  # the processor's tokenizer is not thread-safe

    def conversation(self, prompt: str, with_image: bool = True) -> str:
        picture = [{"type": "image"}] if with_image else []
        messages = [{"role": "user", "content": [*picture, {"type": "text", "text": prompt}]}]
        with self._processor_lock:
            return self.processor.apply_chat_template(messages, add_generation_prompt=True)

    def describe(self, requests: Sequence[Request], stop: threading.Event) -> list[str | ItemFailed]:
        """Requests with a picture and text-only ones (class descriptions) go through the model apart, in order."""
        textual = [r.image is None for r in requests]
        answers = {
            alone: iter(self.generate([r for r, t in zip(requests, textual) if t == alone], alone))
            for alone in set(textual)
        }
        return [next(answers[alone]) for alone in textual]

    @torch.no_grad()
    def generate(self, requests: Sequence[Request], text_only: bool = False) -> list[str | ItemFailed]:
        texts = [self.conversation(r.prompt, with_image=not text_only) for r in requests]
        images = None if text_only else [r.image.convert("RGB") for r in requests]
        with self._processor_lock:
            inputs = self.processor(images=images, text=texts, return_tensors="pt", padding=True).to(self.device)
        if not text_only:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.lmm.dtype)
        inputs.pop("token_type_ids", None)  # some tokenizers return it; generate() of older transformers refuses it
        with self._lock:
            output = self.lmm.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        with self._processor_lock:
            answers = self.processor.batch_decode(new_tokens, skip_special_tokens=True)
        return [" ".join(text.split()) or ItemFailed("the model answered with no text") for text in answers]


def dtype_argument(version: str) -> str:
    """The keyword `from_pretrained` takes the weights' dtype by: transformers 4.56 renamed `torch_dtype` to `dtype`."""
    from packaging.version import Version

    return "dtype" if Version(version) >= Version("4.56") else "torch_dtype"


def model_dtype(device: torch.device) -> torch.dtype:
    """bf16 on a GPU that does it natively, fp16 on older GPUs (emulated bf16 is slow there), fp32 on the CPU."""
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
