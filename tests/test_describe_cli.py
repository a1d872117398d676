"""`latteclip describe` and `latteclip zeroshot --lmm` end to end on the small EuroSAT copy.

Groups must be drawn by the same zero-shot labels training computes (the engine's function,
recomputed here), collages must reach the server at 672x672, the offline substitute must make
descriptions the LatteCLIP method can read, and the LMM baseline's accuracy and unmapped share
must match answers scripted per image.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from latteclip.cli import main
from latteclip.data import build_dataset
from latteclip.data.transforms import eval_transform
from latteclip.describe.jobs import image_hashes
from latteclip.describe.prompts import load_prompts
from latteclip.describe.store import DescriptionStore
from latteclip.engine.features import zero_shot_labels
from latteclip.engine.session import seed_everything
from latteclip.models import TokenCache, load_clip
from tests.conftest import TINY, describe_argv, flags
from tests.lmm_server import FakeLMMServer, constrained_answer


@pytest.fixture(scope="module")
def train(eurosat_folder):
    return build_dataset("eurosat", eurosat_folder, "train")


@pytest.fixture(scope="module")
def labels(train, tmp_path_factory) -> list[int]:
    """c_zs as training computes it: seeded random latte-tiny, first template, evaluation transform."""
    seed_everything(0)
    loaded = load_clip("latte-tiny", "random")
    data = train.with_transform(eval_transform(loaded.image_size, loaded.mean, loaded.std))
    return zero_shot_labels(
        loaded, TokenCache(loaded.tokenizer), train.info.classnames, train.info.templates[0], data, "cpu"
    ).tolist()


def test_groups_share_the_zero_shot_label_and_prompts_name_it(eurosat_folder, train, labels, tmp_path):
    store_path = tmp_path / "d.sqlite"
    with FakeLMMServer() as server:
        code = main(
            describe_argv(eurosat_folder, *TINY, lmm="openai", lmm_url=server.url, with_label=True, store=store_path)
        )
        seen = list(server.seen)
    assert code == 0
    hashes = image_hashes(train, progress=False)
    index_of_path = {s.path: i for i, s in enumerate(train.samples)}
    store = DescriptionStore(store_path)
    groups = [r for r in store.rows() if r["kind"] == "group"]
    assert len({r["image_hash"] for r in groups}) == len(set(hashes))
    for row in groups:
        anchor = index_of_path[row["image"]]
        assert row["image_hash"] == hashes[anchor] and len(row["meta"]["cells"]) == 4
        assert {labels[index_of_path[m]] for m in row["meta"]["cells"]} == {labels[anchor]}
        assert row["prompt"] == load_prompts().description(
            "group", "land use", train.info.classnames[labels[anchor]], with_label=True
        )
    images = [r for r in store.rows() if r["kind"] == "image"]
    for row in images:
        label = train.info.classnames[labels[index_of_path[row["image"]]]]
        assert row["prompt"] == f"Describe the {label} land use in the photo concisely, less than 20 words."
    assert sorted({s.image_size for s in seen}) == [(64, 64), (672, 672)]
    assert sum(s.image_size == (672, 672) for s in seen) == len(groups)


def test_offline_substitute_end_to_end_with_export_and_import(eurosat_folder, train, tmp_path):
    store_path, exported = tmp_path / "offline.sqlite", tmp_path / "d.jsonl"
    args = describe_argv(eurosat_folder, *TINY, lmm="offline", store=store_path)
    assert main([*args, "--export", str(exported)]) == 0
    hashes = image_hashes(train, progress=False)
    store = DescriptionStore(store_path)
    rows = list(store.rows())
    assert {r["backend"] for r in rows} == {"offline-clip"} and all(
        r["model"].startswith("clip-vocab:latte-tiny:random:") for r in rows
    )
    # what the LatteCLIP method reads: a text for every training image, of both kinds
    image_texts = store.get_texts(hashes, "image")
    group_texts = store.get_texts(hashes, "group")
    assert all(
        t and " texture, " in t and t.endswith(".") for t in image_texts + group_texts
    )  # the land-use vocabulary
    count_before = len(rows)
    assert main(args) == 0 and len(list(store.rows())) == count_before  # a rerun adds nothing

    lines = [json.loads(line) for line in exported.read_text().splitlines()]
    assert len(lines) == count_before and {line["kind"] for line in lines} == {"image", "group"}
    assert {line["image"] for line in lines} == {s.path for s in train.samples}
    elsewhere = tmp_path / "elsewhere.sqlite"
    assert main(describe_argv(eurosat_folder, "--import", str(exported), store=elsewhere)) == 0
    imported = DescriptionStore(elsewhere)
    assert imported.get_texts(hashes, "image") == image_texts and imported.get_texts(hashes, "group") == group_texts


def test_config_file_sets_describe_options_and_prompts(eurosat_folder, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "dataset": "eurosat",
                "root": str(eurosat_folder),
                "store": str(tmp_path / "c.sqlite"),
                "describe": {
                    "lmm": "openai",
                    "kinds": ["image"],
                    "concurrency": 3,
                    "prompts": {"image": "What {domain} is shown?"},
                },
            }
        )
    )
    with FakeLMMServer() as server:
        assert main(["describe", "--config", str(config), "--lmm-url", server.url, "--limit", "10"]) == 0
        assert {s.prompt for s in server.seen} == {"What land use is shown?"} and len(server.seen) == 10


def test_analysis_mode_needs_its_own_store(eurosat_folder, capsys):
    code = main(describe_argv(eurosat_folder, *TINY, lmm="offline", true_class_members=2))
    assert code == 2 and "pass a separate --store" in capsys.readouterr().err


def test_analysis_mode_groups_hold_k_true_class_images(eurosat_folder, train, tmp_path, capsys):
    store_path = tmp_path / "analysis.sqlite"
    argv = describe_argv(eurosat_folder, *TINY, lmm="offline", kinds="group", true_class_members=3, store=store_path)
    assert main(argv) == 0
    assert "ANALYSIS MODE" in capsys.readouterr().out
    label_of = {s.path: s.label for s in train.samples}
    for row in DescriptionStore(store_path).rows():
        same = sum(label_of[m] == label_of[row["image"]] for m in row["meta"]["cells"])
        assert same == 3 and "reads labels" in row["meta"]["draw"]


def lmm_zeroshot_flags(root: Path, tmp_path: Path) -> list[str]:
    """An LMM zero-shot run of the EuroSAT images at `root` through the openai client, its answers in zs.sqlite."""
    return flags(dataset="eurosat", root=root, lmm="openai", store=tmp_path / "zs.sqlite", output=tmp_path / "runs")


def test_lmm_zeroshot_accuracy_and_unmapped_share(eurosat_folder, tmp_path):
    test = build_dataset("eurosat", eurosat_folder, "test")
    names = test.info.classnames
    hashes = image_hashes(test, progress=False)
    # per image: the true name, the true name upper-cased, no class at all, another class's name:
    # 2 of 4 right, 1 of 4 unmapped, and 2 of 4 exact names (one of them wrong)
    scripted = {}
    for i, (sample, image_hash) in enumerate(zip(test.samples, hashes)):
        true = names[sample.label]
        scripted[image_hash] = [true, true.upper(), "I cannot tell.", names[(sample.label + 1) % len(names)]][i % 4]
    args = ["zeroshot", *lmm_zeroshot_flags(eurosat_folder, tmp_path), "--name", "lmm"]
    with FakeLMMServer(answer=lambda image_hash, prompt: scripted[image_hash]) as server:
        assert main([*args, "--lmm-url", server.url]) == 0
        assert {s.prompt for s in server.seen} == {load_prompts().multiple_choice(names, "land use")}
        asked = len(server.seen)
        # answers are reused; the finished run folder is replaced only when asked (--overwrite)
        assert main([*args, "--lmm-url", server.url, "--overwrite"]) == 0 and len(server.seen) == asked
    results = json.loads((tmp_path / "runs" / "lmm" / "results.json").read_text())
    assert len(test) == 60
    assert results["method"] == "lmm_zeroshot" and results["model"] == "fake-llava"
    assert results["top1"] == pytest.approx(30 / 60)
    answers = results["test"]["answers"]
    assert answers == {"exact": 30, "case_insensitive": 15, "similar": 0, "unmapped": 15, "unmapped_share": 0.25}
    confusion = results["test"]["confusion"]
    assert len(confusion) == 10 and all(len(row) == 11 for row in confusion) and sum(r[10] for r in confusion) == 15
    lines = [json.loads(line) for line in (Path(tmp_path / "runs" / "lmm" / "answers.jsonl")).read_text().splitlines()]
    assert sum(line["how"] == "unmapped" for line in lines) == 15


def test_lmm_zeroshot_with_json_schema_answers_maps_every_answer_exactly(eurosat_folder, tmp_path):
    test = build_dataset("eurosat", eurosat_folder, "test")
    names = test.info.classnames
    hashes = image_hashes(test, progress=False)
    args = ["zeroshot", *lmm_zeroshot_flags(eurosat_folder, tmp_path)]
    # the server answers free text with a sentence no class name is close to, and a constrained request with
    # one of the schema's names (it refuses a malformed response_format with HTTP 400)
    with FakeLMMServer(answer=lambda image_hash, prompt: "I cannot tell.") as server:
        assert main([*args, "--lmm-url", server.url, "--name", "text"]) == 0
        assert all("response_format" not in s.body for s in server.seen)  # the default body is unchanged
        free = len(server.seen)
        assert main([*args, "--lmm-url", server.url, "--name", "schema", "--lmm-answer-format", "json-schema"]) == 0
        constrained = server.seen[free:]
    assert len(constrained) == len(set(hashes))  # stored apart from the free-text answers to the same prompt
    assert {s.outcome for s in constrained} == {"choice"}
    assert all(
        s.body["response_format"]
        == {"type": "json_schema", "json_schema": {"name": "class_name", "schema": {"type": "string", "enum": names}}}
        for s in constrained
    )
    lines = [json.loads(line) for line in (tmp_path / "runs" / "schema" / "answers.jsonl").read_text().splitlines()]
    assert [line["mapped"] for line in lines] == [constrained_answer(h, names) for h in hashes]
    assert {line["how"] for line in lines} == {"exact"}
    expected_top1 = sum(constrained_answer(h, names) == names[s.label] for h, s in zip(hashes, test.samples)) / len(
        test
    )
    assert json.loads((tmp_path / "runs" / "schema" / "results.json").read_text())["top1"] == pytest.approx(
        expected_top1
    )
    assert json.loads((tmp_path / "runs" / "text" / "results.json").read_text())["test"]["answers"]["unmapped"] == len(
        test
    )


def test_an_unreadable_image_is_reported_for_each_kind_and_fails_the_run(eurosat_folder, tmp_path, capsys):
    rows = []
    for label in ("Forest", "River"):
        for path in sorted((eurosat_folder / "2750" / label).iterdir())[:4]:
            rows.append(f"{path},{label},train")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    rows.append(f"{broken},River,train")
    table = tmp_path / "data.csv"
    table.write_text("path,label,split\n" + "\n".join(rows) + "\n")
    code = main(describe_argv(table, *TINY, dataset="csv", lmm="offline", store=tmp_path / "s.sqlite"))
    out = capsys.readouterr().out
    assert code == 1
    assert "image: 9 images, 8 described now, 0 already stored, 1 failed" in out
    assert "group: 9 images, 8 described now, 0 already stored, 1 failed" in out
    failed = [line.strip() for line in out.splitlines() if line.strip().startswith("failed ")]
    assert len(failed) == 2 and all("broken.jpg" in line and "unreadable image" in line for line in failed)


def test_offline_describer_with_its_own_model_writes_what_that_model_sees(
    eurosat_folder, train, labels, tmp_path, capsys
):
    """latte-tiny is adapted; a second tiny config (latte-fmnist-describer, its own weights file) describes."""
    import threading

    from safetensors.torch import save_file

    from latteclip.data.collage import make_collage
    from latteclip.describe.backend import Request
    from latteclip.describe.clip_vocab import ClipVocabularyDescriber, describer_model_id, read_vocabulary

    torch = pytest.importorskip("torch")
    torch.manual_seed(7)
    weights = tmp_path / "describer.safetensors"
    save_file(
        {k: v.contiguous() for k, v in load_clip("latte-fmnist-describer", "random").model.state_dict().items()},
        weights,
    )
    store_path = tmp_path / "own.sqlite"
    describer = {"describer_model": "latte-fmnist-describer", "describer_pretrained": weights, "lmm_batch_size": 16}
    args = describe_argv(eurosat_folder, *TINY, lmm="offline", store=store_path, **describer, limit=20)
    assert main(args) == 0
    name = describer_model_id("latte-fmnist-describer", str(weights), read_vocabulary(None, "eurosat")[1])
    assert f"descriptions by offline-clip {name}" in capsys.readouterr().out
    store = DescriptionStore(store_path)
    rows = list(store.rows())
    assert {r["model"] for r in rows} == {name} and len(rows) == 2 * 20
    # what the describer's own model says of each image, and of each group's collage (groups: the ADAPTED model's
    # labels)
    describer = ClipVocabularyDescriber(
        load_clip("latte-fmnist-describer", str(weights)), "land use", dataset="eurosat"
    )
    index_of_path = {s.path: i for i, s in enumerate(train.samples)}
    stop = threading.Event()
    for row in rows[:6] + [r for r in rows if r["kind"] == "group"][:6]:
        members = [
            train.load_image(index_of_path[p])
            for p in (row["meta"]["cells"] if row["kind"] == "group" else [row["image"]])
        ]
        request = (
            Request(make_collage(members), "", parts=tuple(members))
            if row["kind"] == "group"
            else Request(members[0], "")
        )
        assert describer.describe([request], stop)[0] == row["text"]
        if row["kind"] == "group":
            assert {labels[index_of_path[p]] for p in row["meta"]["cells"]} == {labels[index_of_path[row["image"]]]}
    adapted = ClipVocabularyDescriber(load_clip("latte-tiny", "random"), "land use", dataset="eurosat")
    own_texts = [r["text"] for r in rows if r["kind"] == "image"]
    assert own_texts != [
        adapted.describe([Request(train.load_image(index_of_path[r["image"]]), "")], stop)[0]
        for r in rows
        if r["kind"] == "image"
    ]
    described = [h for h in image_hashes(train, progress=False) if h in {r["image_hash"] for r in rows}]
    assert len(described) == 20 and all(
        all(store.get_texts(described, kind, model=name)) for kind in ("image", "group")
    )
    count = len(rows)
    assert main(args) == 0 and len(list(store.rows())) == count  # resumed: nothing left to describe


def test_describer_options_are_checked_before_any_work(eurosat_folder, capsys):
    base = describe_argv(eurosat_folder, *TINY)
    assert main([*base, "--lmm", "offline", "--describer-pretrained", "openai"]) == 2
    assert "--describer-pretrained needs --describer-model NAME" in capsys.readouterr().err
    assert main([*base, "--lmm", "openai", "--lmm-url", "http://127.0.0.1:9/v1", "--describer-model", "ViT-L-14"]) == 2
    assert "--describer-model chooses the CLIP model of --lmm offline" in capsys.readouterr().err
