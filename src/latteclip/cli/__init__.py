"""The `latteclip` command line: one subcommand per stage, each also reading a YAML `--config`."""

from __future__ import annotations

import argparse
import functools
import sys
import types
import typing
import warnings
from collections.abc import Callable
from typing import Any

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


# --- flags, generated from the settings dataclasses (config.option: help, kind, choices, group) ---------------
class CommaList(argparse.Action):
    """A list option: comma-separated values; repeating the flag adds to the list (e.g. several --lmm-url)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        from latteclip.config import comma_list

        setattr(namespace, self.dest, [*(getattr(namespace, self.dest, None) or []), *comma_list(values)])


def flag_type(hint: Any) -> type:
    """bool, list, int, float or str: how a field's type annotation is read from the command line."""
    unions = (typing.Union, types.UnionType)
    kinds = [t for t in typing.get_args(hint) if t is not type(None)] if typing.get_origin(hint) in unions else [hint]
    base = typing.get_origin(kinds[0]) or kinds[0]
    return list if base in (list, tuple) else base if base in (bool, int, float) else str


def add_flag(
    group: argparse._ActionsContainer,
    name: str,
    hint: Any,
    help_text: str,
    dest: str | None = None,
    choices: tuple[str, ...] | None = None,
) -> None:
    """One flag `--name-with-dashes` for a field; None when not given, so the config file's value stands."""
    flag, kind, help_text = "--" + name.replace("_", "-"), flag_type(hint), help_text.replace("%", "%%")
    if kind is bool:
        group.add_argument(flag, dest=dest or name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
    elif kind is list:
        group.add_argument(flag, dest=dest or name, action=CommaList, metavar="A,B", help=help_text)
    else:
        group.add_argument(
            flag,
            dest=dest or name,
            type=kind,
            choices=choices,
            metavar=None if choices else name.upper(),
            help=help_text,
        )


def add_field_flags(group: argparse._ActionsContainer, settings: type, *names: str) -> None:
    """Flags for fields of a settings dataclass (RunConfig, DescribeSettings), from their declarations."""
    import dataclasses

    fields, hints = {f.name: f for f in dataclasses.fields(settings)}, typing.get_type_hints(settings)
    for name in names:
        if not fields[name].metadata["flag"]:
            raise ValueError(f"{settings.__name__}.{name} has no command-line flag")
        add_flag(group, name, hints[name], fields[name].metadata["help"], choices=fields[name].metadata["choices"])


def add_option_arguments(group: argparse._ActionsContainer, *names: str) -> None:
    """Flags for RunConfig fields."""
    from latteclip.config import RunConfig

    add_field_flags(group, RunConfig, *names)


def add_data_arguments(parser: argparse.ArgumentParser, *extra: str) -> None:
    """The data flags; `extra` names more of them (train_fraction: for the commands that read the training split)."""
    add_option_arguments(
        parser.add_argument_group("data"),
        "dataset",
        "root",
        "limit",
        "classnames",
        "templates",
        "domain",
        "split_file",
        "prompt_set",
        "seed",
        *extra,
    )


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    add_option_arguments(parser.add_argument_group("model"), "model", "pretrained", "device")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("run")
    group.add_argument("--config", help="YAML file of options; command-line flags override it")
    add_option_arguments(group, "output", "name", "overwrite", "workers", "eval_batch_size")


def add_describe_arguments(parser: argparse.ArgumentParser, *sections: str) -> None:
    """The DescribeSettings flags of the help sections named (describe.settings: LMM, WHAT, ANSWERS)."""
    import dataclasses

    from latteclip.describe.settings import DescribeSettings

    for section in sections:
        names = [f.name for f in dataclasses.fields(DescribeSettings) if f.metadata["group"] == section]
        add_field_flags(parser.add_argument_group(section), DescribeSettings, *names)


def add_lmm_arguments(parser: argparse.ArgumentParser, *sections: str) -> None:
    """The flags that choose and reach the LMM (describe, adapt, zeroshot --lmm), the store and the prompts."""
    from latteclip.describe.settings import LMM

    add_describe_arguments(parser, LMM, *sections)
    group = parser.add_argument_group("descriptions")
    add_option_arguments(group, "store")
    group.add_argument(
        "--prompts",
        help="JSON/YAML file replacing any of the prompts (image, image_with_label, group, "
        "group_with_label, lmm_zeroshot), or 'paper' for the paper's printed wording (default: the "
        "authors' runs)",
    )


def describe_settings(args: argparse.Namespace, config):
    """The description stage's settings: defaults, the config's `describe:` mapping, then the flags given."""
    import dataclasses

    from latteclip.describe.settings import DescribeSettings, resolve_settings

    given = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(DescribeSettings)}
    return resolve_settings(config.describe, given)


@functools.lru_cache(maxsize=1)
def method_option_flags() -> dict[str, tuple[Any, str, str]]:
    """Every option of every registered method, as option name -> (type hint, help, which methods and defaults)."""
    import dataclasses

    from latteclip.methods.options import OPTIONS

    hints: dict[str, Any] = {}
    descriptions: dict[str, str] = {}
    defaults: dict[str, list[str]] = {}
    for method, options in OPTIONS.items():
        for field in dataclasses.fields(options):
            hint = typing.get_type_hints(options)[field.name]
            if flag_type(hints.setdefault(field.name, hint)) is not flag_type(hint):
                raise RuntimeError(f"method option {field.name} has two types across methods")
            descriptions.setdefault(field.name, field.metadata["help"])
            default = field.default_factory() if field.default is dataclasses.MISSING else field.default
            shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
            defaults.setdefault(field.name, []).append(f"{method}: {shown or chr(39) * 2}")
    return {name: (hints[name], descriptions[name], "; ".join(defaults[name])) for name in hints}


def add_method_option_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "method options (each applies to the methods named, default after the name; "
        "configs/<method>/<dataset>.yaml may set others)"
    )
    for name, (hint, description, methods) in sorted(method_option_flags().items()):
        add_flag(group, name, hint, f"{description} ({methods})", dest=f"mopt_{name}")


def config_from_args(args: argparse.Namespace, **fixed: Any):
    """The RunConfig of the flags given (and of --config FILE), with `fixed` values on top."""
    from latteclip.config import configure

    return configure(run_values(args, **fixed), getattr(args, "config", None))


def run_values(args: argparse.Namespace, **fixed: Any) -> dict[str, Any]:
    """The run options the flags set (None: not given), method options under method_options."""
    from latteclip.config import FIELD_NAMES

    values = {k: v for k, v in vars(args).items() if k in FIELD_NAMES and v is not None}
    values.update({k: v for k, v in fixed.items() if v is not None})
    options = {k[5:]: v for k, v in vars(args).items() if k.startswith("mopt_") and v is not None}
    if options:
        values["method_options"] = options
    return values


def interruptible(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Ctrl-C ends a describing command with a note that the answers received are kept (the runner has stored them)."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except KeyboardInterrupt:
            print(
                "interrupted: every answer received is stored; run the same command again for the rest", file=sys.stderr
            )
            return 130

    return run


def print_descriptions(summary, describer_name: str) -> None:
    """What a describer did (the runner's summary), as `describe` and `zeroshot --lmm` print it."""
    print(f"descriptions by {describer_name}:")
    for line in summary.lines():
        print(f"  {line}")


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    add_option_arguments(
        parser.add_argument_group("evaluation (optional for unlabeled --dataset images)"), "eval_dataset", "eval_root"
    )


def print_summary(results: dict) -> None:
    if results["top1"] is None:
        diagnostics = results["diagnostics"]
        adapted = diagnostics["adapted"]
        measured = (
            f"no labels, label-free diagnostics on {diagnostics['images']} images: top class {adapted['top_class']} "
            f"{100 * adapted['top_class_share']:.1f}%, normalised entropy {adapted['normalized_entropy']:.3f}, "
            f"{100 * diagnostics['changed_from_zero_shot']:.1f}% changed from zero-shot"
        )
    else:
        measured = f"top-1 {100 * results['top1']:.2f}% on {results['test']['n']} test images"
    print(
        f"{results['method']} on {results['dataset']}: {measured} after {results['steps']} steps"
        + (
            f"; unreadable images skipped: train {results['unreadable_train_images']}, test "
            f"{results['unreadable_test_images']}"
            if results["unreadable_train_images"] or results["unreadable_test_images"]
            else ""
        )
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
    "latteclip.cli.experiment",
]


# One description per option that several commands share; a flag added without help gets its text from here.
# Help of flags that set no run option (those that do take the option's own, config.RunConfig).
FLAG_HELP = {
    "format": "table, csv or jsonl",
}


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Help that ends each option with its default: the flag's own, else the package default of the option it sets
    (the run config's declared defaults, the describe settings), so `--help` never shows a stale copy."""

    package: typing.ClassVar[dict[str, Any]] = {}  # set once by the parser builder, shared by every formatter

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
                action.help = (
                    FIELDS[action.dest].metadata["help"] if action.dest in FIELDS else FLAG_HELP.get(action.dest, "")
                )
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
