"""Prompts: the paper's wording, the label variant, the multiple-choice prompt, user overrides and their checks."""

from __future__ import annotations

import json

import pytest

from latteclip.describe.prompts import load_prompts
from latteclip.errors import LatteclipError


def test_default_prompts_are_the_authors_runs_and_paper_names_the_printed_wording():
    prompts = load_prompts()
    assert (
        prompts.description("image", "land use") == "Describe the land use in the photo concisely, less than 20 words."
    )
    assert prompts.description("image", "texture", label="banded", with_label=True) == (
        "Describe the banded texture in the photo concisely, less than 20 words."
    )
    paper = load_prompts("paper")
    assert (
        paper.description("image", "land use")
        == "Describe the land use in the photo concisely, using less than 20 words."
    )
    assert paper.description("group", "land use") == (
        "Describe the common visual attributes of the land use in all the photos concisely, in fewer than 20 words."
    )


def test_dataset_prompts_of_the_authors_runs_and_the_label_they_name(eurosat_zip):
    from latteclip.data import build_dataset

    eurosat = load_prompts(build_dataset("eurosat", eurosat_zip, "test").info.prompts)
    assert (
        eurosat.description("image", "land use")
        == "Describe the land use in the satellite image concisely, less than 20 words."
    )
    assert eurosat.description("group", "land use") == (
        "Describe the common visual attributes of the land use in all the satellite images concisely, less than 20 "
        "words."
    )
    assert not eurosat.names_label("image") and eurosat.names_label("image", with_label=True)
    from latteclip.data.coop import load_spec

    flowers = load_prompts(load_spec("oxford_flowers")["prompts"])
    assert flowers.names_label("image") and not flowers.names_label("group")  # Flowers names the zero-shot class
    assert flowers.description("image", "flower", label="sunflower") == (
        "Describe the sunflower flower in the photo concisely, less than 20 words."
    )
    with pytest.raises(ValueError, match="names the zero-shot class"):
        flowers.description("image", "flower")
    assert load_prompts(load_spec("food101")["prompts"], "paper").description("image", "food") == (
        "Describe the food in the photo concisely, using less than 20 words."  # --prompts paper overrides the dataset's
    )


def test_multiple_choice_lists_the_class_names():
    prompt = load_prompts().multiple_choice(["forest", "river", "lake or sea"], "land use")
    assert prompt == (
        "Select the most appropriate category for the image from the following options: forest, river, lake or sea. "
        "Write only the category name."
    )


def test_overrides_apply_in_order(tmp_path):
    user_file = tmp_path / "prompts.yaml"
    user_file.write_text("image: 'What {domain} is this?'\n")
    config_prompts = {"image": "Name the {domain}.", "group": "What do these {domain} photos share?"}
    prompts = load_prompts(config_prompts, user_file)
    assert prompts.description("image", "food") == "What food is this?"  # the file wins over the config
    assert prompts.description("group", "food") == "What do these food photos share?"
    assert prompts.lmm_zeroshot == load_prompts().lmm_zeroshot  # untouched prompts stay the paper's


def test_json_override_file(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"lmm_zeroshot": "Which {domain}? Options: {options}"}))
    assert load_prompts(path).multiple_choice(["a", "b"], "pet") == "Which pet? Options: a, b"


@pytest.mark.parametrize(
    "override, message",
    [
        ({"image": "Describe the {colour} photo."}, "may use only {domain}, {label}"),
        ({"lmm_zeroshot": "Pick one."}, "must contain {options}"),
        ({"image_with_label": "Describe the {domain}."}, "must contain {label}"),
        ({"caption": "Describe {domain}."}, "unknown prompt 'caption'"),
        ({"image": "Describe the {domain photo."}, "unbalanced braces"),
        ({"group": ""}, "non-empty string"),
    ],
)
def test_bad_overrides_are_refused_before_any_request(override, message):
    with pytest.raises(LatteclipError, match=message):
        load_prompts(override)


def test_missing_prompts_file(tmp_path):
    with pytest.raises(LatteclipError, match="does not exist"):
        load_prompts(tmp_path / "nope.yaml")
