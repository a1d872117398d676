"""Evaluation and train-time transforms (method.md 1.3: OpenCLIP's RandomResizedCrop + colour jitter + grey)."""

from __future__ import annotations

from torchvision import transforms as T

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def eval_transform(image_size: int, mean=OPENAI_MEAN, std=OPENAI_STD) -> T.Compose:
    return T.Compose(
        [
            T.Resize(image_size, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(image_size),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )


def train_transform(
    image_size: int, mean=OPENAI_MEAN, std=OPENAI_STD, augment: bool = True, policy: str = "clip"
) -> T.Compose:
    """OpenCLIP's training crop (scale 0.9-1.0), then the policy's own operations.

    clip: the paper's colour jitter (p 0.8) and random grey (p 0.2). trivial-augment-wide and randaugment:
    torchvision's generic policies (one or two random operations of random strength per image), for a
    model that should not depend on the look of its training images without being tuned to any one shift.
    """
    if not augment:
        return eval_transform(image_size, mean, std)
    operations = {
        "clip": [T.RandomApply([T.ColorJitter(0.5, 0.5, 0.5, 0.1)], p=0.8), T.RandomGrayscale(p=0.2)],
        "trivial-augment-wide": [T.TrivialAugmentWide()],
        "randaugment": [T.RandAugment()],
    }[policy]
    return T.Compose(
        [
            T.RandomResizedCrop(image_size, scale=(0.9, 1.0), interpolation=T.InterpolationMode.BICUBIC),
            *operations,
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )
