"""OpenAI Batch files: the description stage for clusters that run the LMM offline (`vllm run-batch`, the
OpenAI Batch API) instead of serving it.

`write_requests` writes one line per request the store lacks, with the body the live `openai` client would
send (`chat_body`); `read_results` stores the answers of a results file. Both follow the live client's
rules: what the store holds is never asked or overwritten, each key is asked once, and answers are stored
under backend `openai` with the requested model, so live runs and batch files skip each other's answers.
A line's `custom_id` is its store key: kind, image hash, variant, a digest of the prompt, and the model tag
of label-reading analysis groups.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

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
    return f"{job.kind}:{job.image_hash}:{job.variant}:{hashlib.sha1(job.prompt.encode()).hexdigest()[:16]}{job.model_tag}"


def write_requests(jobs: Sequence[Job], store: DescriptionStore, model: str, path: str | Path,
                   max_tokens: int = MAX_TOKENS) -> tuple[Summary, int]:
    """Write every request the store lacks to `path` (none: no file); the summary (of what is stored or unreadable)
    and the number of lines."""
    summary, pending, followers = plan(jobs, stored_keys(store, BACKEND, model, jobs))
    target = Path(path)
    if not pending:
        return summary, 0
    if target.exists():
        raise LatteclipError(f"batch file {target} exists: pass another --batch-out FILE or remove it")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    written = 0
    with open(partial, "w", encoding="utf-8") as handle:
        for job in pending:
            try:
                body = chat_body(model, job.build(), max_tokens)
            except CorruptImage as err:
                summary.counts[job.kind].failed += 1 + followers[job.key]
                summary.failures.append((job.kind, job.image, f"unreadable image ({err})"))
                continue
            handle.write(json.dumps({"custom_id": custom_id(job), "method": "POST", "url": BATCH_URL, "body": body}) + "\n")
            written += 1
    os.replace(partial, target)
    return summary, written


def result_text(record: dict) -> tuple[str | None, str]:
    """(answer, its finish_reason or "") of one results line, or (None, why not). Reads the OpenAI Batch API and `vllm run-batch`
    output ({custom_id, response: {status_code, body: chat completion}, error}) and older vLLM lines whose
    `response` is the completion itself."""
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


def read_results(jobs: Sequence[Job], store: DescriptionStore, model: str, path: str | Path, dataset_name: str) -> tuple[Summary, int]:
    """Store the answers of a results file for the jobs the store lacks; (summary, lines that matched no such job)."""
    file = Path(path)
    if not file.is_file():
        raise LatteclipError(f"batch results file {path} does not exist")
    summary, pending, followers = plan(jobs, stored_keys(store, BACKEND, model, jobs))
    by_id = {custom_id(job): job for job in pending}
    answered: dict[str, tuple[Job, str, str]] = {}  # custom_id -> (job, text, finish_reason)
    failed: dict[str, tuple[Job, str]] = {}
    unmatched = 0
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise LatteclipError(f"{path}, line {number} is not valid JSON: {err.msg}") from err
        job = by_id.get(record.get("custom_id")) if isinstance(record, dict) else None
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
    store.put_many([(job.image_hash, job.kind, job.prompt, BACKEND, model + job.model_tag, text, job.image, dataset_name,
                     {**(job.meta or {}), "finish_reason": finish} if finish else job.meta, job.variant)
                    for job, text, finish in answered.values()])
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
