"""Export a trained method as plain OpenCLIP weights plus a classifier file, usable without this package.

The folder holds:
- `open_clip_model.safetensors`: the fine-tuned CLIP state dict, loadable by
  `open_clip.create_model_and_transforms(arch, pretrained=FILE)`;
- `open_clip_config.json`: model and preprocessing config, so `local-dir:FOLDER` also works;
- `<arch>.json` for architectures OpenCLIP does not ship (the project's tiny configs), to register
  with `open_clip.add_model_config`;
- `classifier.safetensors`: `class_weights` [C, d] (normalised), `logit_scale` (log of the scale, as
  in CLIP), class names in the metadata;
- `clip_benchmark_classifier.pt`: the same weights as the [d, C] tensor CLIP_benchmark's `--load_clfs`
  reads (`torch.load`), columns in the benchmark's class order when the dataset spec names it;
- `README.md`: how to use them, and how to evaluate with CLIP_benchmark.
Only methods whose predictions are exactly `normalize(model.encode_image(x)) @ class_weights.T`
can be exported; the others set `exportable_to_open_clip = False` and are refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
from safetensors.torch import save_file

from latteclip.data.coop import load_spec, spec_names
from latteclip.data.datasets import DatasetInfo
from latteclip.errors import LatteclipError
from latteclip.methods.base import Method

WEIGHTS_FILE = "open_clip_model.safetensors"
CLASSIFIER_FILE = "classifier.safetensors"
OPEN_CLIP_CONFIG_FILE = "open_clip_config.json"
CLIP_BENCHMARK_FILE = "clip_benchmark_classifier.pt"
CLIP_BENCHMARK_VERSION = "1.6.2"  # the release whose --load_clfs format and local-dir loading were checked


@dataclass
class BenchmarkOrder:
    """The class order of CLIP_benchmark's copy of a dataset: its name there and, per benchmark label, our class."""

    dataset: str | None  # None: the spec names no benchmark dataset, so the columns keep this export's label order
    classes: list[int]


@dataclass
class ExportedFiles:
    folder: Path
    arch: str
    weights: Path
    classifier: Path
    model_config: Path | None  # set when plain OpenCLIP does not know `arch` by itself
    benchmark_classifier: Path
    benchmark_order: BenchmarkOrder


def clip_benchmark_order(info: DatasetInfo) -> BenchmarkOrder:
    """CLIP_benchmark's labels of `info`'s dataset, from the spec's `clip_benchmark` entry (its class keys in order).

    Without an entry, or when the trained classes are not exactly the benchmark's, the columns keep our label order.
    """
    entry = load_spec(info.name).get("clip_benchmark") if info.name in spec_names() else None
    if entry is None or sorted(entry["class_keys"]) != sorted(info.class_keys):
        return BenchmarkOrder(None, list(range(info.num_classes)))
    ours = {key: c for c, key in enumerate(info.class_keys)}
    return BenchmarkOrder(entry["dataset"], [ours[key] for key in entry["class_keys"]])


def save_benchmark_classifier(class_weights: torch.Tensor, order: BenchmarkOrder, path: Path) -> None:
    """[d, C] columns in the benchmark's order, a plain tensor: `torch.load` reads it with weights_only."""
    torch.save(class_weights[order.classes].t().contiguous().clone(), path)


def model_config_of(model_name: str) -> dict:
    """The OpenCLIP model config (embed_dim, vision_cfg, text_cfg) the model was built from."""
    if model_name.startswith("hf-hub:"):
        from open_clip.factory import _get_hf_config  # the hub's open_clip_config.json, read from the local cache

        return _get_hf_config(model_name[len("hf-hub:") :])["model_cfg"]
    config = open_clip.get_model_config(model_name)
    if config is None:
        raise LatteclipError(f"OpenCLIP has no config for model '{model_name}'; cannot export it")
    return config


def _builtin_arch(model_name: str) -> bool:
    """Whether a fresh `import open_clip` knows this name without the project's registered configs."""
    from importlib import resources

    builtin = Path(str(resources.files("open_clip").joinpath("model_configs")))
    return (builtin / f"{model_name}.json").is_file()


def export_open_clip(method: Method, out: Path) -> ExportedFiles:
    """Write the fine-tuned weights, the classifier and a README into `out` (created if needed)."""
    if not method.exportable_to_open_clip:
        raise LatteclipError(
            f"method {method.name} changes the image path beyond the OpenCLIP model (adapters or projections), "
            f"so plain OpenCLIP cannot reproduce it; use `latteclip predict` with the checkpoint instead"
        )
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise LatteclipError(f"--out {out} is a file: pass a folder")
    out.mkdir(parents=True, exist_ok=True)
    loaded = method.loaded
    model_name = loaded.model_name
    arch = model_name.replace("/", "-")
    state = {key: value.detach().cpu().contiguous().clone() for key, value in method.model.state_dict().items()}
    weights = out / WEIGHTS_FILE
    save_file(state, str(weights))

    model_config = model_config_of(model_name)
    preprocess = {"mean": list(loaded.mean), "std": list(loaded.std), "size": loaded.image_size}
    (out / OPEN_CLIP_CONFIG_FILE).write_text(
        json.dumps({"model_cfg": model_config, "preprocess_cfg": preprocess}, indent=1)
    )
    config_file = None
    if not model_name.startswith("hf-hub:") and not _builtin_arch(model_name):
        config_file = out / f"{arch}.json"
        config_file.write_text(json.dumps(model_config, indent=1))

    with torch.no_grad():
        class_weights = method.classifier().detach().float().cpu().contiguous()
        logit_scale = method.model.logit_scale.detach().float().cpu().reshape(1).contiguous()
    classifier = out / CLASSIFIER_FILE
    save_file(
        {"class_weights": class_weights, "logit_scale": logit_scale},
        str(classifier),
        metadata={
            "classnames": json.dumps(method.info.classnames),
            "class_keys": json.dumps(method.info.class_keys),
            "dataset": method.info.name,
            "method": method.name,
            "model": model_name,
        },
    )
    order = clip_benchmark_order(method.info)
    save_benchmark_classifier(class_weights, order, out / CLIP_BENCHMARK_FILE)
    files = ExportedFiles(out, arch, weights, classifier, config_file, out / CLIP_BENCHMARK_FILE, order)
    (out / "README.md").write_text(readme_text(files, method, preprocess) + clip_benchmark_text(files, method.info))
    return files


def readme_text(files: ExportedFiles, method: Method, preprocess: dict) -> str:
    """Usage with plain `open_clip` and `safetensors` only."""
    register = (
        f'open_clip.add_model_config(folder / "{files.model_config.name}")  # {files.arch} is not one of OpenCLIP\'s '
        "own configs\n"
        if files.model_config is not None
        else ""
    )
    arch = files.arch if not method.loaded.model_name.startswith("hf-hub:") else f"local-dir:{files.folder.resolve()}"
    pretrained = f', pretrained=str(folder / "{files.weights.name}")' if not arch.startswith("local-dir:") else ""
    return f"""# {files.arch} fine-tuned with latteclip ({method.name}) on {method.info.name}

Plain OpenCLIP weights and a {method.info.num_classes}-class classifier; this package is not needed to use them.

```python
import json
from pathlib import Path

import open_clip
import torch
from PIL import Image
from safetensors import safe_open

folder = Path("{files.folder.resolve()}")
{register}model, _, preprocess = open_clip.create_model_and_transforms(
    "{arch}"{pretrained}, image_mean={tuple(preprocess["mean"])}, image_std={tuple(preprocess["std"])}
)
model.eval()
with safe_open(str(folder / "{files.classifier.name}"), "pt") as f:
    class_weights, logit_scale = f.get_tensor("class_weights"), f.get_tensor("logit_scale")
    classnames = json.loads(f.metadata()["classnames"])

image = preprocess(Image.open("image.jpg").convert("RGB")).unsqueeze(0)
with torch.no_grad():
    features = torch.nn.functional.normalize(model.encode_image(image), dim=-1)
    probs = (logit_scale.exp() * features @ class_weights.T).softmax(dim=-1)
print(classnames[probs.argmax().item()], probs.max().item())
```

`open_clip.create_model_and_transforms("local-dir:{files.folder.resolve()}")` also works: it reads
`{OPEN_CLIP_CONFIG_FILE}` (model and preprocessing) and `{files.weights.name}` from the folder.
"""


def clip_benchmark_text(files: ExportedFiles, info: DatasetInfo) -> str:
    """The README section on evaluating with CLIP_benchmark: its classifier file, class order and a command."""
    folder, order = files.folder.resolve(), files.benchmark_order
    names = ", ".join(f"{info.classnames[c]} ({info.class_keys[c]})" for c in order.classes)
    if order.dataset is not None:
        where = f"in the label order of CLIP_benchmark's `{order.dataset}`: {names}"
        dataset = order.dataset
    else:
        where = (
            f"in this export's label order, as CLIP_benchmark must then present the classes (for example a "
            f"webdataset built with this class list): {names}"
        )
        dataset = "DATASET"
    return f"""
## Evaluate with CLIP_benchmark

CLIP_benchmark {CLIP_BENCHMARK_VERSION} builds its own zero-shot classifier unless `--load_clfs` gives it one.
`{files.benchmark_classifier.name}` holds this run's class weights as the [d, C] tensor it reads, columns {where}.

```bash
pip install clip_benchmark=={CLIP_BENCHMARK_VERSION} "numpy<2.4"
clip_benchmark eval --task zeroshot_classification --dataset {dataset} --dataset_root DATA_DIR --no_amp \\
    --model "local-dir:{folder}" --load_clfs "{folder / files.benchmark_classifier.name}" \\
    --output "{info.name}_latteclip.json"
```

DATA_DIR is where CLIP_benchmark finds (or downloads) its own copy of the dataset; it reads its own split, so
its numbers need not equal this run's. `local-dir:` loads the model and its preprocessing from
`{OPEN_CLIP_CONFIG_FILE}` and `{files.weights.name}` (`--pretrained` is then ignored); it is the only way for a
model config OpenCLIP does not ship. CLIP_benchmark multiplies cosines by 100 rather than by the model's logit
scale, which ranks the classes the same. `--no_amp` scores in fp32 like `latteclip eval` on the CPU (its default
autocast can flip near-tied images). NumPy 2.4 breaks CLIP_benchmark {CLIP_BENCHMARK_VERSION}'s accuracy (`float()`
of a 1-element array), hence the pin.
"""
