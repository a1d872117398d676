"""`describe` (the description stage, method.md 1.2) and `zeroshot --lmm` (the LMM zero-shot baseline):
their command-line options. The work is in `describe_stage`, imported only when a command runs,
so that building the parser stays quick.
"""

from __future__ import annotations

import argparse

from latteclip.cli import add_data_arguments, add_model_arguments, command
from latteclip.config import comma_list
from latteclip.describe.settings import ANSWER_FORMATS, BACKENDS


def add_lmm_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that choose and reach the LMM (shared by `describe` and `zeroshot --lmm`)."""
    group = parser.add_argument_group("LMM")
    group.add_argument("--lmm", choices=BACKENDS, help="openai: a chat-completions server; transformers: a model in this "
                       "process; offline: a substitute that ranks a vocabulary's nouns and attribute phrases with a CLIP model "
                       "(--describer-model; default the adapted model; no LMM); batch (describe): OpenAI Batch files, "
                       "--batch-out then --batch-in")
    group.add_argument("--lmm-url", dest="lmm_url", action="append", type=comma_list,
                       help="base URL of an OpenAI-compatible server, e.g. http://host:8000/v1 (repeat to share the work)")
    group.add_argument("--lmm-model", dest="lmm_model", help="served model name (openai; default: asked from the server), "
                       "or a local folder / hub id (transformers)")
    group.add_argument("--lmm-timeout", dest="lmm_timeout", type=float, help="seconds a request waits while its server answers nothing "
                       "(a server that keeps answering others is waited for, with fewer requests in flight)")
    group.add_argument("--lmm-retries", dest="lmm_retries", type=int, help="retries after 429/5xx/timeouts/bad answers")
    group.add_argument("--lmm-batch-size", dest="lmm_batch_size", type=int, help="images per forward pass in-process")
    group.add_argument("--lmm-ca-bundle", dest="lmm_ca_bundle", metavar="FILE", help="PEM file of the CA that signed "
                       "the server's certificate (a gateway on an internal CA; default: the system's trust store)")
    group.add_argument("--lmm-insecure", dest="lmm_insecure", action="store_true", default=None,
                       help="do not check the server's TLS certificate (proxies: HTTPS_PROXY, HTTP_PROXY, NO_PROXY)")
    group.add_argument("--concurrency", type=int, help="requests in flight at most (default 64 for openai, lowered while the server "
                       "is saturated; 1 in-process)")
    group.add_argument("--stop-after-failures", dest="stop_after_failures", type=int,
                       help="stop the run after this many failed images in a row")
    group.add_argument("--store", help="description store, SQLite (default: descriptions.sqlite in the cache folder)")
    group.add_argument("--prompts", help="JSON/YAML file replacing any of the prompts (image, image_with_label, group, "
                       "group_with_label, lmm_zeroshot), or 'paper' for the paper's printed wording (default: the authors' runs)")


def add_lmm_zeroshot_arguments(parser: argparse.ArgumentParser) -> None:
    add_lmm_arguments(parser)
    parser.add_argument("--answer-cutoff", dest="answer_cutoff", type=float,
                        help="with --lmm: least string similarity that maps an answer to a class")
    parser.add_argument("--lmm-answer-format", dest="lmm_answer_format", choices=ANSWER_FORMATS,
                        help="with --lmm openai: text (free answers, the paper's baseline) or json-schema (the server may "
                        "answer only a class name: OpenAI response_format, for vLLM, SGLang, Ollama)")


# --- describe -----------------------------------------------------------------------------------------
@command("describe", "image and group descriptions of every training image from an LMM, stored for training")
def _describe_parser(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser)
    add_model_arguments(parser)
    add_lmm_arguments(parser)
    group = parser.add_argument_group("what to describe")
    group.add_argument("--kinds", type=comma_list, help="image,group (default both)")
    group.add_argument("--group-size", dest="group_size", type=int, help="images per group collage: 2, 4 (default), 8, 16")
    group.add_argument("--group-draw", dest="group_draw", choices=["class", "anchor"],
                       help="class (default, the authors' runs): each group is random images of one zero-shot class; "
                       "anchor (the paper's text): an image and others of its zero-shot class")
    group.add_argument("--with-label", dest="with_label", action=argparse.BooleanOptionalAction, default=None,
                       help="name each image's zero-shot label in the prompt")
    group.add_argument("--true-class-members", dest="true_class_members", type=int, metavar="K",
                       help="ANALYSIS ONLY, READS THE TRUE LABELS: groups with K images of the anchor's true class")
    group.add_argument("--vocabulary", help="phrase file of the offline describer (default: the bundled one for the dataset)")
    group.add_argument("--describer-model", dest="describer_model", metavar="NAME",
                       help="offline: the OpenCLIP model that describes, e.g. ViT-L-14 (default: the adapted --model)")
    group.add_argument("--describer-pretrained", dest="describer_pretrained", metavar="TAG|FILE",
                       help="offline: the describer's weights, an OpenCLIP tag or a weights file (default: random)")
    group = parser.add_argument_group("run")
    group.add_argument("--config", help="YAML file of options (describe options under 'describe:'); flags override it")
    group.add_argument("--workers", type=int, help="data-loading processes for the zero-shot label pass")
    group.add_argument("--eval-batch-size", dest="eval_batch_size", type=int)
    group.add_argument("--batch-out", dest="batch_out", metavar="FILE.jsonl", help="with --lmm batch: write every missing "
                       "request as an OpenAI Batch file (for vllm run-batch or the OpenAI Batch API); needs --lmm-model")
    group.add_argument("--batch-shards", dest="batch_shards", type=int, metavar="N", help="with --batch-out: N request "
                       "files of near-equal size, FILE-1-of-N.jsonl ... (one per node)")
    group.add_argument("--batch-in", dest="batch_in", metavar="RESULTS.jsonl", nargs="+", help="with --lmm batch: "
                       "store the answers of Batch results files (vllm run-batch or OpenAI Batch API output): paths or "
                       "quoted glob patterns such as 'results-*.jsonl'")
    group.add_argument("--import", dest="import_file", metavar="FILE.jsonl", help="load descriptions made elsewhere first")
    group.add_argument("--export", metavar="FILE.jsonl", help="write every stored description of the dataset's training "
                       "images, one JSON object per line")


@_describe_parser
def run_describe(args: argparse.Namespace) -> int:
    from latteclip.cli.describe_stage import describe_command

    return describe_command(args)


def run_lmm_zeroshot(args: argparse.Namespace) -> int:
    """`zeroshot --lmm ...`: the LMM picks each test image's class; writes a run folder like other methods."""
    from latteclip.cli.describe_stage import lmm_zeroshot_command

    return lmm_zeroshot_command(args)
