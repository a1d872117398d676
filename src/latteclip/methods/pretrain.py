"""Contrastive pre-training on a labelled source domain: image-caption pairs made from the labels.

Not a label-free method: it stands in for the web-scale pre-training that produced the CLIP
models the other methods adapt (the demo pre-trains a tiny CLIP on clean Fashion-MNIST and
then adapts it to shifted copies). Each image is paired with a caption of its true class,
written with one of the dataset's templates drawn at random per image and step, and the
step is CLIP's symmetric contrastive loss over the batch.

With `attribute_captions` > 0, that share of the captions is instead a sentence of the offline
describer's vocabulary (describe/vocabularies/) made of an object noun and attribute phrases of
the image's class, from what the project writes it knows about each class (the dataset's
`class_attributes`): web captions name things in many words, so a model pre-trained on them
understands the words a describer uses.
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from latteclip.describe.clip_vocab import compose_at_random, read_vocabulary
from latteclip.errors import LatteclipError
from latteclip.methods.base import Method, StepResult
from latteclip.methods.options import PretrainOptions
from latteclip.models import encode_texts
from latteclip.models.losses import contrastive_loss


class ContrastivePretraining(Method):
    name = "pretrain"
    reads_train_labels = True
    Options = PretrainOptions

    def __init__(self, loaded, info, options: PretrainOptions, device):
        super().__init__(loaded, info, options, device)
        if not 0.0 <= options.attribute_captions <= 1.0:
            raise LatteclipError(f"--attribute-captions {options.attribute_captions} must be a share between 0 and 1")
        self.vocab: dict | None = None
        if options.attribute_captions > 0:
            known = info.class_attributes
            missing = [name for name in info.classnames if name not in known]
            if missing:
                raise LatteclipError(
                    f"attribute_captions needs the nouns and attributes of every class of {info.name}; "
                    f"the dataset has none for {', '.join(missing)} (set attribute_captions: 0)"
                )
            self.vocab, _ = read_vocabulary(None, info.name)
            for name in info.classnames:
                if set(known[name]) != set(self.vocab["slots"]):
                    raise LatteclipError(
                        f"{info.name}: the attributes of class '{name}' fill slots {sorted(known[name])}, "
                        f"not the vocabulary's {sorted(self.vocab['slots'])}"
                    )

    def captions(self, labels: torch.Tensor, step: int) -> list[str]:
        """A caption per image, drawn from generators seeded by (seed, step), so a resumed run repeats it."""
        seed = self.ctx.seed * 1_000_003 + step
        generator = torch.Generator().manual_seed(seed)
        choice = torch.randint(len(self.info.templates), (len(labels),), generator=generator).tolist()
        share = torch.rand(len(labels), generator=generator).tolist()
        rng = random.Random(seed)
        captions = []
        for t, c, u in zip(choice, labels.tolist(), share):
            classname = self.info.classnames[c]
            if self.vocab is not None and u < self.options.attribute_captions:
                captions.append(
                    compose_at_random(self.vocab, self.info.class_attributes[classname], self.info.domain, rng)
                )
            else:
                captions.append(self.info.templates[t].format(classname))
        return captions

    def training_step(self, batch: dict, step: int) -> StepResult:
        image_features = F.normalize(self.model.encode_image(batch["image"]), dim=-1)
        text_features = encode_texts(self.model, self.tokens, self.captions(batch["label"], step), self.device)
        loss = contrastive_loss(image_features, text_features, self.model.logit_scale)
        return StepResult(loss, {"loss": loss.item(), "logit_scale": self.model.logit_scale.exp().item()})
