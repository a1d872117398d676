"""The description store: the reading API training uses, variants, counts, old files, JSON lines exchange."""

from __future__ import annotations

import json
import sqlite3

import pytest

from latteclip.describe.store import ANALYSIS_TAG, DescriptionStore, image_key
from latteclip.errors import LatteclipError

PROMPT = "Describe the land use in the photo concisely, using less than 20 words."


def test_get_texts_reads_by_hash_kind_and_model(tmp_path):
    store = DescriptionStore(tmp_path / "d.sqlite")
    store.put("h1", "image", PROMPT, "openai", "llava", "green fields")
    store.put("h1", "image", PROMPT, "openai", "qwen", "fields, green")
    store.put("h2", "group", "group prompt", "openai", "llava", "rows of crops", variant="group4:abc")
    assert store.get_texts(["h1", "h2", "h3"], "image", model="llava") == ["green fields", None, None]
    assert store.get_texts(["h1"], "image") == ["fields, green"]  # the newest row wins
    assert store.get_texts(["h2"], "group") == ["rows of crops"]  # the variant does not hide a group from training
    assert store.get_texts(["h2"], "group", variant="group8:zzz") == [None]
    assert store.has("h2", "group", "group prompt", "openai", "llava", variant="group4:abc")
    assert not store.has("h2", "group", "group prompt", "openai", "llava")
    assert store.keys("openai", "llava") == {("h1", "image", PROMPT, ""), ("h2", "group", "group prompt", "group4:abc")}
    assert store.counts() == {
        ("image", "openai", "llava"): 1,
        ("image", "openai", "qwen"): 1,
        ("group", "openai", "llava"): 1,
    }
    with pytest.raises(ValueError):
        store.put("h1", "caption", PROMPT, "openai", "llava", "x")
    store.close()


def test_a_preferred_variant_wins_over_newer_draws(tmp_path):
    store = DescriptionStore(tmp_path / "d.sqlite")
    store.put("h1", "group", "group prompt", "offline", "m", "seed 0's group", variant="group4:seed0")
    store.put("h1", "group", "group prompt", "offline", "m", "seed 1's group", variant="group4:seed1")
    store.put("h2", "group", "group prompt", "offline", "m", "only draw", variant="group4:other")
    assert store.get_texts(["h1", "h2"], "group") == ["seed 1's group", "only draw"]  # newest
    assert store.get_texts(["h1", "h2"], "group", preferred_variants=["group4:seed0", "group4:absent"]) == [
        "seed 0's group",
        "only draw",
    ]
    store.close()


def test_a_store_from_before_variants_is_upgraded_with_its_rows(tmp_path):
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE descriptions (image_hash TEXT NOT NULL, kind TEXT NOT NULL, prompt TEXT NOT NULL, backend TEXT "
        "NOT NULL, model TEXT NOT NULL, text TEXT NOT NULL, image TEXT, dataset TEXT, meta TEXT, created REAL NOT "
        "NULL, PRIMARY KEY (image_hash, kind, prompt, backend, model));"
    )
    db.execute("INSERT INTO descriptions VALUES ('h1','image','p','openai','m','old text','a.jpg','eurosat',NULL,1.0)")
    db.commit()
    db.close()
    store = DescriptionStore(path)
    assert store.get_texts(["h1"], "image") == ["old text"]
    assert store.has("h1", "image", "p", "openai", "m")
    store.put("h1", "group", "p", "openai", "m", "new group", variant="group4:x")
    assert store.get_texts(["h1"], "group") == ["new group"]
    store.close()


def test_not_a_database(tmp_path):
    path = tmp_path / "junk.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(LatteclipError, match="not a readable SQLite file"):
        DescriptionStore(path)


def test_export_then_import_elsewhere_gives_the_same_texts(tmp_path):
    source = DescriptionStore(tmp_path / "a.sqlite")
    source.put("h1", "image", PROMPT, "openai", "llava", "green fields", image="x/1.jpg", dataset="eurosat")
    source.put(
        "h1",
        "group",
        "gp",
        "openai",
        "llava",
        "crops",
        dataset="eurosat",
        meta={"members": ["x/2.jpg"]},
        variant="group2:q",
    )
    source.put("h2", "image", PROMPT, "openai", "llava", "a river")
    source.put("h9", "image", PROMPT, "openai", "llava", "not in this dataset")
    source.put("h1", "zeroshot", "pick", "openai", "llava", "forest")  # answers are not descriptions
    out = tmp_path / "d.jsonl"
    assert source.export_jsonl(out, {"h1": "Forest/1.jpg", "h2": "River/2.jpg"}) == 3
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert {(r["image"], r["kind"], r["text"]) for r in lines} == {
        ("Forest/1.jpg", "image", "green fields"),
        ("Forest/1.jpg", "group", "crops"),
        ("River/2.jpg", "image", "a river"),
    }
    assert all({"image", "kind", "text", "prompt", "model"} <= set(r) for r in lines)

    target = DescriptionStore(tmp_path / "b.sqlite")
    # the other machine finds images by path: drop the hashes so the import must hash through the dataset
    out.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "image_hash"}) + "\n" for r in lines))
    paths = {"Forest/1.jpg": "h1", "River/2.jpg": "h2"}
    assert target.import_jsonl(out, paths.get, dataset="eurosat") == 3
    for kind in ("image", "group"):
        assert target.get_texts(["h1", "h2"], kind, model="llava") == source.get_texts(
            ["h1", "h2"], kind, model="llava"
        )
    assert target.has("h1", "group", "gp", "openai", "llava", variant="group2:q")
    assert next(r for r in target.rows() if r["kind"] == "group")["meta"] == {"members": ["x/2.jpg"]}


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "line 2 is not valid JSON"),
        (json.dumps({"kind": "image", "text": "t", "prompt": "p"}), "line 2 lacks model"),
        (json.dumps({"kind": "caption", "text": "t", "prompt": "p", "model": "m", "image": "a.jpg"}), "kind 'caption'"),
        (json.dumps({"kind": "image", "text": "t", "prompt": "p", "model": "m"}), "names no image"),
        (
            json.dumps({"kind": "image", "text": "t", "prompt": "p", "model": "m", "image": "zzz.jpg"}),
            "zzz.jpg is not in the dataset",
        ),
    ],
)
def test_a_bad_import_line_is_named_and_nothing_is_written(tmp_path, line, message):
    good = json.dumps({"kind": "image", "text": "t", "prompt": "p", "model": "m", "image": "a.jpg"})
    path = tmp_path / "in.jsonl"
    path.write_text(good + "\n" + line + "\n")
    store = DescriptionStore(tmp_path / "s.sqlite")
    with pytest.raises(LatteclipError, match=message):
        store.import_jsonl(path, {"a.jpg": image_key(b"a")}.get)
    assert list(store.rows()) == []


def test_a_description_set_reads_back_the_rows_its_stage_asked_for(tmp_path):
    """The contract of a description stage is stored with its rows; reading a set gives those rows, not the newest."""
    store = DescriptionStore(tmp_path / "d.sqlite")
    store.put("h1", "image", "p1", "openai", "llava", "asked for")
    store.put("h1", "image", "p2", "openai", "llava", "another prompt, newer")
    rows = [("h1", "image", "p1", "llava", ""), ("h2", "image", "p1", "llava", "")]
    name = store.record_set("eurosat", {"describer": "openai llava", "seed": 0}, rows)
    assert store.record_set("eurosat", {"describer": "openai llava", "seed": 0}, rows[::-1]) == name  # recorded once
    assert store.set_rows(name, ["h1", "h2", None], "image") == [("asked for", ""), (None, ""), (None, None)]
    found = store.sets_for("eurosat", ["h1", "h3"], "image")
    assert [(s.name, s.contract, s.images) for s in found] == [(name, {"describer": "openai llava", "seed": 0}, 1)]
    assert store.sets_for("dtd", ["h1"], "image") == [] and store.sets_for("eurosat", ["h1"], "group") == []
    assert store.has_sets("eurosat", "image") and not store.has_sets("eurosat", "group")
    # groups drawn from the true labels are read only when their model is named
    store.record_set("eurosat", {"analysis": True}, [("h1", "group", "g", "llava" + ANALYSIS_TAG, "")])
    assert store.sets_for("eurosat", ["h1"], "group") == []
    assert len(store.sets_for("eurosat", ["h1"], "group", model="llava" + ANALYSIS_TAG)) == 1
    store.close()


def test_a_failed_batch_write_leaves_nothing_for_a_later_commit(tmp_path):
    """A batch whose second row breaks a constraint (no text) stores none of its rows, not even after the next batch
    commits: the describe runner counts such answers as not asked, so they must not appear stored."""
    store = DescriptionStore(tmp_path / "d.sqlite")
    row = ("h1", "image", "p", "b", "m", "first", None, None, None, "")
    with pytest.raises(sqlite3.IntegrityError):
        store.put_many([row, ("h2", "image", "p", "b", "m", None, None, None, None, "")])
    store.put_many([("h3", "image", "p", "b", "m", "third", None, None, None, "")])
    assert store.keys("b", "m") == {("h3", "image", "p", "")}
    store.close()
