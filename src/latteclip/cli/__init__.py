"""The `latteclip` command line: one subcommand per stage, each also reading a YAML `--config`."""

from __future__ import annotations

import argparse
import functools
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

from latteclip.errors import LatteclipError

COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int], str]] = {}


def command(name: str, help_text: str):
    """Register a subcommand: the decorated function adds its arguments; `run` does the work."""

    def wrap(add_arguments: Callable[[argparse.ArgumentParser], None]):
        def bind(run: Callable[[argparse.Namespace], int]):
            COMMANDS[name] = (add_arguments, run, help_text)
            return run

        return bind

    return wrap


# --- shared argument groups -------------------------------------------------------------------------
def add_option_arguments(group: argparse._ActionsContainer, *names: str) -> None:
    """Flags for RunConfig fields, generated from the fields' types, help texts and choices (config.option)."""
    import typing

    from latteclip.config import FIELD_TYPES, FIELDS

    for name in names:
        spec = FIELDS[name]
        if not spec.metadata["flag"]:
            raise ValueError(f"RunConfig.{name} has no command-line flag")
        kinds = [t for t in typing.get_args(FIELD_TYPES[name]) if t is not type(None)] or [FIELD_TYPES[name]]
        flag = "--" + name.replace("_", "-")
        help_text = spec.metadata["help"].replace("%", "%%")
        if kinds[0] is bool:
            group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            group.add_argument(flag, dest=name, type=kinds[0], choices=spec.metadata["choices"], help=help_text)


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    add_option_arguments(parser.add_argument_group("data"), "dataset", "root", "limit", "classnames", "templates", "domain", "split_file",
                         "prompt_set", "seed")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    add_option_arguments(parser.add_argument_group("model"), "model", "pretrained", "device")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("run")
    group.add_argument("--config", help="YAML file of options; command-line flags override it")
    add_option_arguments(group, "output", "name", "overwrite", "workers", "eval_batch_size")


def _flag_kind(annotation: str) -> str:
    """bool, list, int, float or str: how a method option's annotation is read from the command line."""
    parts = [p.strip() for p in annotation.replace("Optional[", "").rstrip("]").split("|") if p.strip() != "None"]
    base = parts[0] if parts else "str"
    if base.startswith(("list", "tuple")):
        return "list"
    return base if base in ("bool", "int", "float", "str") else "str"


@functools.lru_cache(maxsize=1)
def method_option_flags() -> dict[str, tuple[str, str, str]]:
    """Every option of every registered method, as option name -> (kind, description, which methods and defaults).

    Read from the methods' source (`declared_options`), so building the parser never imports torch.
    """
    from latteclip.methods import REGISTRY, declared_options

    kinds: dict[str, str] = {}
    descriptions: dict[str, str] = {}
    defaults: dict[str, list[str]] = {}
    for method in REGISTRY:
        for option in declared_options(method):
            kind = _flag_kind(option.annotation)
            if kinds.setdefault(option.name, kind) != kind:
                raise RuntimeError(f"method option {option.name} has two types across methods")
            descriptions.setdefault(option.name, option.description)
            default = ",".join(map(str, option.default)) if isinstance(option.default, list) else option.default
            defaults.setdefault(option.name, []).append(f"{method}: {default!s}" if default != "" else f"{method}: ''")
    return {name: (kinds[name], descriptions[name], "; ".join(defaults[name])) for name in kinds}


def add_method_option_arguments(parser: argparse.ArgumentParser) -> None:
    from latteclip.config import comma_list

    group = parser.add_argument_group("method options (each applies to the methods named, default after the name; "
                                      "configs/<method>/<dataset>.yaml may set others)")
    for name, (kind, description, methods) in sorted(method_option_flags().items()):
        flag = "--" + name.replace("_", "-")
        dest = f"mopt_{name}"
        help_text = f"{description} ({methods})".replace("%", "%%")
        if kind == "bool":
            group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif kind == "list":
            group.add_argument(flag, dest=dest, metavar="A,B", type=comma_list, help=help_text)
        else:
            group.add_argument(flag, dest=dest, metavar=name.upper(), type={"int": int, "float": float}.get(kind, str), help=help_text)


def config_from_args(args: argparse.Namespace, **fixed: Any):
    from latteclip.config import FIELD_NAMES, resolve_config

    values = {k: v for k, v in vars(args).items() if k in FIELD_NAMES and v is not None}
    values.update({k: v for k, v in fixed.items() if v is not None})
    options = {k[5:]: v for k, v in vars(args).items() if k.startswith("mopt_") and v is not None}
    if options:
        values["method_options"] = options
    config = resolve_config(values, getattr(args, "config", None))
    if not config.root:
        raise LatteclipError("no dataset root: pass --root DIR (or set root: in the --config file)")
    if Path(config.root).exists():
        config.root = str(Path(config.root).resolve())  # the run folder stays usable from any directory
    if config.eval_root and Path(config.eval_root).exists():
        config.eval_root = str(Path(config.eval_root).resolve())
    return config


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    add_option_arguments(parser.add_argument_group("evaluation (optional for unlabeled --dataset images)"), "eval_dataset", "eval_root")


def print_summary(results: dict) -> None:
    if results["top1"] is None:
        diagnostics = results["diagnostics"]
        adapted = diagnostics["adapted"]
        measured = (f"no labels, label-free diagnostics on {diagnostics['images']} images: top class {adapted['top_class']} "
                    f"{100 * adapted['top_class_share']:.1f}%, normalised entropy {adapted['normalized_entropy']:.3f}, "
                    f"{100 * diagnostics['changed_from_zero_shot']:.1f}% changed from zero-shot")
    else:
        measured = f"top-1 {100 * results['top1']:.2f}% on {results['test']['n']} test images"
    print(
        f"{results['method']} on {results['dataset']}: {measured} after {results['steps']} steps"
        + (f"; unreadable images skipped: train {results['unreadable_train_images']}, test {results['unreadable_test_images']}"
           if results["unreadable_train_images"] or results["unreadable_test_images"] else "")
    )


# Modules that register subcommands with @command; a new command is one module and one line here.
COMMAND_MODULES = [
    "latteclip.cli.train",
    "latteclip.cli.predict",
    "latteclip.cli.export",
    "latteclip.cli.report",
    "latteclip.cli.describe",
    "latteclip.cli.pretrain",
    "latteclip.cli.demo",
    "latteclip.cli.adapt",
    "latteclip.cli.data",
]


# One description per option that several commands share; a flag added without help gets its text from here.
# Help of flags that set no run option (those that do take the option's own, config.RunConfig).
FLAG_HELP = {
    "format": "table, csv or jsonl",
}


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Help that ends each option with its default: the flag's own, else the package default of the option it sets
    (the run config's declared defaults, the describe settings), so `--help` never shows a stale copy."""

    package: dict[str, Any] = {}

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not action.option_strings or action.help is argparse.SUPPRESS or "default" in text:
            return text
        value = action.default if action.default not in (None, argparse.SUPPRESS) else self.package.get(action.dest)
        if value in (None, False, "", [], {}) or isinstance(action, argparse._HelpAction):
            return text
        shown = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
        return f"{text} (default: {shown.replace('%', '%%')})".strip()


def build_parser() -> argparse.ArgumentParser:
    import dataclasses
    import importlib

    from latteclip.config import FIELDS, package_defaults
    from latteclip.describe.settings import DescribeSettings

    for module in COMMAND_MODULES:
        importlib.import_module(module)
    DefaultsHelpFormatter.package = {**dataclasses.asdict(DescribeSettings()), **package_defaults()}
    parser = argparse.ArgumentParser(prog="latteclip", description="Adapt CLIP models to a domain without labels.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (add_arguments, run, help_text) in COMMANDS.items():
        child = sub.add_parser(name, help=help_text, description=help_text, formatter_class=DefaultsHelpFormatter)
        add_arguments(child)
        for action in child._actions:
            if action.option_strings and not action.help:
                action.help = FIELDS[action.dest].metadata["help"] if action.dest in FIELDS else FLAG_HELP.get(action.dest, "")
        child.set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", message=".*No pretrained weights loaded.*")
    import logging

    logging.getLogger().setLevel(logging.ERROR)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    try:
        return args.run(args)
    except LatteclipError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted: what was written so far is kept; rerun with --resume to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
