"""The text-only describe kind `classes` (an LLM's descriptions of each class name, for CoFT+): its prompts, the
offline describer's answers, resume, CoFT+ reading them from the store, `adapt --method coft_plus` and the paper's
CoFT+ entry without a class-descriptions file. (The OpenAI-compatible server and the in-process model: see
test_transformers_serve.py.)"""

from __future__ import annotations

import json
import sqlite3

import pytest

from latteclip.cli import main
from latteclip.describe.jobs import class_jobs, class_key
from latteclip.describe.prompts import load_prompts
from latteclip.describe.store import DescriptionStore
from latteclip.engine.checkpoint import load_final_checkpoint
from latteclip.errors import LatteclipError
from latteclip.experiments.orchestrate import class_text_stages
from latteclip.experiments.plan import load_plan
from tests.test_unlabeled import STEPS, TINY, flat, labelled, names  # noqa: F401  (the adapt folders' fixtures)


def test_class_questions_are_prompts_like_the_others():
    prompts = load_prompts()
    questions = prompts.class_questions("forest", "land use")
    assert len(questions) == 5 and questions[0].startswith("What does forest (land use) look like in a photo?")
    own = load_prompts({"classes": ["A {label}?", "Is a {label} a {domain}?"]})
    assert own.class_questions("river", "land use") == ["A river?", "Is a river a land use?"]
    jobs = class_jobs(["river", "lake", "river"], lambda name: own.class_questions(name, "land use"))
    # one job per class name and question, keyed by name and question number, no picture
    assert [(j.image_hash, j.prompt) for j in jobs] == [
        (class_key("river", 0), "A river?"),
        (class_key("river", 1), "Is a river a land use?"),
        (class_key("lake", 0), "A lake?"),
        (class_key("lake", 1), "Is a lake a land use?"),
    ]
    assert jobs[0].build().image is None
    for bad in (["no placeholder"], "A {label}?", ["A {label} in {options}"]):
        with pytest.raises(LatteclipError, match="'classes'"):
            load_prompts({"classes": bad})


def _describe(eurosat_folder, store, *extra: str) -> list[str]:
    args = ["describe", "--dataset", "eurosat", "--root", str(eurosat_folder), "--store", str(store)]
    return [*args, "--kinds", "classes", "--lmm", "offline", *TINY, *extra]


def test_offline_describer_answers_each_class_name_once_and_a_rerun_asks_nothing(eurosat_folder, tmp_path, capsys):
    store = tmp_path / "s.sqlite"
    assert main(_describe(eurosat_folder, store)) == 0
    assert "classes: 50 questions, 50 described now, 0 already stored, 0 failed" in capsys.readouterr().out
    with DescriptionStore(store) as opened:
        texts = opened.class_texts("eurosat")
        counted = {kind: n for (kind, _, _), n in opened.counts().items()}
        assert counted == {"classes": 50}  # no image described
    assert len(texts) == 10 and all(len(answers) == 5 and all(answers) for answers in texts.values())
    # the answer is ranked against the question's own text, which names the class: classes get other sentences
    assert len({answers[0] for answers in texts.values()}) > 1
    assert main(_describe(eurosat_folder, store)) == 0
    assert "classes: 50 questions, 0 described now, 50 already stored, 0 failed" in capsys.readouterr().out


def test_coft_plus_reads_the_newest_class_descriptions_of_the_store(eurosat_folder, tmp_path):
    store = tmp_path / "s.sqlite"
    assert main(_describe(eurosat_folder, store)) == 0
    first = DescriptionStore(store).class_texts("eurosat")
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"classes": ["Name one colour of {label}."]}))
    assert main(_describe(eurosat_folder, store, "--prompts", str(prompts))) == 0
    newest = DescriptionStore(store).class_texts("eurosat")
    assert all(len(answers) == 1 for answers in newest.values()) and newest != first
    run = tmp_path / "runs"
    train = ["train", "--method", "coft_plus", "--dataset", "eurosat", "--root", str(eurosat_folder), "--output"]
    train += [str(run), "--max-steps", "2", "--batch-size", "8", *TINY]
    assert main([*train, "--name", "store", "--store", str(store)]) == 0
    # the same texts given as a file train the same weights: the run read the newest stage's, and only those
    (tmp_path / "newest.json").write_text(json.dumps(newest))
    assert main([*train, "--name", "file", "--class-descriptions", str(tmp_path / "newest.json")]) == 0
    (tmp_path / "first.json").write_text(json.dumps(first))
    assert main([*train, "--name", "first", "--class-descriptions", str(tmp_path / "first.json")]) == 0
    store_run, file_run, first_run = (
        load_final_checkpoint(run / name / "final.pt") for name in ("store", "file", "first")
    )
    assert store_run["classifier"].equal(file_run["classifier"])
    assert not store_run["classifier"].equal(first_run["classifier"])


@pytest.mark.slow
def test_adapt_coft_plus_needs_no_class_descriptions_file(flat, names, tmp_path, capsys):
    out = tmp_path / "runs"
    adapt = ["adapt", "--root", str(flat), "--classnames", str(names), "--method", "coft_plus", "--lmm", "offline"]
    adapt += ["--output", str(out), *TINY, *STEPS]
    assert main(adapt) == 0
    printed = capsys.readouterr().out
    assert "descriptions (classes)" in printed and "classes: 50 questions, 50 described now" in printed
    folder = out / "adapt-tiles"
    assert json.loads((folder / "coft_plus" / "results.json").read_text())["method"] == "coft_plus"
    with sqlite3.connect(folder / "descriptions.sqlite") as db:  # the images' dataset is named by their list file
        (dataset,) = db.execute("SELECT DISTINCT dataset FROM description_sets").fetchone()
    with DescriptionStore(folder / "descriptions.sqlite") as store:
        assert sorted(store.class_texts(dataset)) == sorted(names.read_text().split())
    assert main(adapt) == 0  # a rerun asks the describer nothing again
    assert "classes: 50 questions, 0 described now, 50 already stored" in capsys.readouterr().out


def test_the_papers_coft_plus_entry_asks_the_class_descriptions_once_per_dataset(tmp_path):
    plan = load_plan("paper", entries=["coft", "coft_plus"], datasets=["eurosat", "dtd"], seeds=[0, 1])
    entry = next(e for e in plan.entries if e.name == "coft_plus")
    assert entry.needs == ("class_texts",) and entry.label == "CoFT+" and "llm_descriptions" not in entry.overrides
    stages = class_text_stages(plan)
    assert list(stages) == ["eurosat", "dtd"] and stages["eurosat"].entry.name == "coft_plus"
    stores = {run.name: run.config.store for run in plan.runs()}
    assert stores["eurosat/coft_plus-s1"] == str(plan.output / "descriptions" / "eurosat-classes.sqlite")
    assert stores["eurosat/coft-s0"] is None
