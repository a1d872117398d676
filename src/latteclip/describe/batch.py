"""OpenAI Batch files: the description stage for clusters that run the LMM offline (`vllm run-batch`, the
OpenAI Batch API) instead of serving it.

`write_requests` writes one line per request the store lacks, with the body the live `openai` client would
send (`chat_body`); `read_results` stores the answers of a results file. Both follow the live client's
rules: what the store holds is never asked or overwritten, each key is asked once, and answers are stored
under backend `openai` with the requested model, so live runs and batch files skip each other's answers.
A line's `custom_id` is its store key: kind, image hash, variant, a digest of the prompt, and the model tag
of label-reading analysis groups.

For N nodes running `vllm run-batch` at once, the requests can be split into shards (`requests-1-of-N.jsonl`, ...)
dealt line by line, so their line counts differ by one at most and each holds the same mix of image and group
requests; the results files come back together (several paths, or a glob pattern).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from latteclip.data import CorruptImage
from latteclip.describe.jobs import Job
from latteclip.describe.openai_http import CHAT_ROUTE, MAX_TOKENS, answer_text, chat_body
from latteclip.describe.runner import Summary, plan, stored_keys
from latteclip.describe.store import DescriptionStore
from latteclip.errors import LatteclipError

BACKEND = "openai"  # the same protocol and body as the live client, so the same store rows
BATCH_URL = "/v1" + CHAT_ROUTE


def custom_id(job: Job) -> str:
    """The store key of a job as one string (the prompt as a digest: the body holds its text)."""
    return (
        f"{job.kind}:{job.image_hash}:{job.variant}:{hashlib.sha1(job.prompt.encode()).hexdigest()[:16]}{job.model_tag}"
    )


def shard_paths(path: str | Path, shards: int) -> list[Path]:
    """The names of `shards` request files for `path`: `stem-K-of-N.suffix`, K zero-padded so they sort in order."""
    target = Path(path)
    width = len(str(shards))
    return [target.with_name(f"{target.stem}-{k:0{width}d}-of-{shards}{target.suffix}") for k in range(1, shards + 1)]


def write_requests(
    jobs: Sequence[Job],
    store: DescriptionStore,
    model: str,
    path: str | Path,
    max_tokens: int = MAX_TOKENS,
    shards: int = 1,
) -> tuple[Summary, list[tuple[Path, int]]]:
    """Write every request the store lacks to `path`, or dealt over `shards` files (`shard_paths`; fewer when there are
    fewer requests, none when there are none); the summary (of what is stored or unreadable) and each file written with
    its number of lines."""
    summary, pending, followers = plan(jobs, stored_keys(store, BACKEND, model, jobs))
    if not pending:
        return summary, []
    target = Path(path)
    shard_pattern = f"{glob.escape(target.stem)}-*-of-*{target.suffix}"
    previous = [target] if shards == 1 else sorted(target.parent.glob(shard_pattern))
    if any(file.exists() for file in previous):
        raise LatteclipError(f"batch file {previous[0]} exists: pass another --batch-out FILE or remove it")
    target.parent.mkdir(parents=True, exist_ok=True)
    partials = [target.with_name(f"{target.name}.{k}.partial") for k in range(min(shards, len(pending)))]
    counts = [0] * len(partials)
    with contextlib.ExitStack() as files:
        handles = [files.enter_context(open(partial, "w", encoding="utf-8")) for partial in partials]
        for job in pending:
            try:
                body = chat_body(model, job.build(), max_tokens)
            except CorruptImage as err:
                summary.counts[job.kind].failed += 1 + followers[job.key]
                summary.failures.append((job.kind, job.image, f"unreadable image ({err})"))
                continue
            shard = sum(counts) % len(handles)  # dealt in turn: line counts differ by one at most
            line = {"custom_id": custom_id(job), "method": "POST", "url": BATCH_URL, "body": body}
            handles[shard].write(json.dumps(line) + "\n")
            counts[shard] += 1
    used = [count for count in counts if count]  # all but when every image was unreadable
    names = ([target] if shards == 1 else shard_paths(target, len(used)))[: len(used)]
    for partial, name in zip(partials, names):
        os.replace(partial, name)
    for partial in partials[len(used) :]:
        partial.unlink()
    return summary, list(zip(names, used))


def result_text(record: dict) -> tuple[str | None, str]:
    """(answer, its finish_reason or "") of one results line, or (None, why not). Reads the OpenAI Batch API and
    `vllm run-batch` output ({custom_id, response: {status_code, body: chat completion}, error}) and older vLLM lines
    whose `response` is the completion itself."""
    if record.get("error"):
        error = record["error"]
        return None, f"the batch reported an error: {error.get('message', error) if isinstance(error, dict) else error}"
    response = record.get("response")
    if not isinstance(response, dict):
        return None, "no response"
    completion = response.get("body") if "status_code" in response else response
    status = response.get("status_code", 200)
    if status != 200:
        return None, f"HTTP {status}"
    try:
        text, finish = answer_text(completion), completion["choices"][0].get("finish_reason")  # type: ignore[index]
    except (KeyError, IndexError, TypeError, AttributeError):
        return None, "malformed chat completion"
    return (text, str(finish or "")) if text else (None, "empty answer")


def results_files(paths: str | Path | Sequence[str | Path]) -> list[Path]:
    """The results files named by paths and glob patterns (quoted, for the shell to leave them: 'results-*.jsonl'),
    each once and in order; one line naming the path when one is missing, so nothing is read before all are there."""
    files: list[Path] = []
    for name in [paths] if isinstance(paths, (str, Path)) else paths:
        matches = sorted(glob.glob(str(name))) if glob.escape(str(name)) != str(name) else [str(name)]
        if not matches:
            raise LatteclipError(f"batch results pattern {name} matches no file")
        for match in matches:
            if not Path(match).is_file():
                raise LatteclipError(f"batch results file {match} does not exist")
            files.append(Path(match))
    return list(dict.fromkeys(files))


def result_records(file: Path) -> Iterator[dict | None]:
    """The JSON object of each non-blank line of a results file (None for a line that is not an object)."""
    with open(file, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise LatteclipError(f"{file}, line {number} is not valid JSON: {err.msg}") from err
            yield record if isinstance(record, dict) else None


def read_results(
    jobs: Sequence[Job],
    store: DescriptionStore,
    model: str,
    paths: str | Path | Sequence[str | Path],
    dataset_name: str,
) -> tuple[Summary, int]:
    """Store the answers of one or more results files (`results_files`) for the jobs the store lacks; (summary, lines
    that matched no such job). A request answered in one file and failed in another counts as answered."""
    files = results_files(paths)
    summary, pending, followers = plan(jobs, stored_keys(store, BACKEND, model, jobs))
    by_id = {custom_id(job): job for job in pending}
    answered: dict[str, tuple[Job, str, str]] = {}  # custom_id -> (job, text, finish_reason)
    failed: dict[str, tuple[Job, str]] = {}
    unmatched = 0
    for record in (record for file in files for record in result_records(file)):
        job = by_id.get(record.get("custom_id")) if record is not None else None
        if job is None:  # stored already, or asked by another dataset, prompt or model
            unmatched += 1
            continue
        text, why = result_text(record)
        if text is not None:
            answered[custom_id(job)] = (job, text, why)
            failed.pop(custom_id(job), None)
        elif custom_id(job) not in answered:
            failed[custom_id(job)] = (job, why)
    # the finish_reason is kept beside the text, as the live client keeps it ("length" marks a cut answer)
    store.put_many(
        [
            (
                job.image_hash,
                job.kind,
                job.prompt,
                BACKEND,
                model + job.model_tag,
                text,
                job.image,
                dataset_name,
                {**(job.meta or {}), "finish_reason": finish} if finish else job.meta,
                job.variant,
            )
            for job, text, finish in answered.values()
        ]
    )
    for job in pending:
        counts, key = summary.counts[job.kind], custom_id(job)
        if key in answered:
            counts.done += 1
            counts.cached += followers[job.key]
        elif key in failed:
            counts.failed += 1 + followers[job.key]
            summary.failures.append((job.kind, job.image, failed[key][1]))
        else:
            counts.not_asked += 1 + followers[job.key]
    return summary, unmatched
