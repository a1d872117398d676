"""Runs jobs through a describer: only what the store lacks, many in flight, each answer committed at once.

Worker threads (as many as the concurrency) take jobs from one queue, build their pictures and
ask the describer; the main thread writes the answers to the store as they arrive, every answer
waiting when it wakes in one commit (under load many arrive together: fewer commits, and no
worker waits on the store's lock), so a run killed at any point keeps every answer it took and
a rerun asks only for the rest. The main thread also counts outcomes, shows a progress bar with
rate and ETA, and stops the run after too many failures in a row or when the describer says no
request can succeed.
"""

from __future__ import annotations

import queue
import sqlite3
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from latteclip.data import CorruptImage
from latteclip.describe.backend import BackendStopped, Describer, ItemFailed
from latteclip.describe.jobs import Job
from latteclip.describe.settings import DEFAULT_STOP_AFTER_FAILURES
from latteclip.describe.store import DescriptionStore

FINISH_IN_FLIGHT_SECONDS = 10.0  # how long a stopping run waits for answers already on their way


@dataclass
class KindCounts:
    total: int = 0
    done: int = 0  # answered in this run
    cached: int = 0  # already in the store (or the same image asked by another job)
    failed: int = 0  # asked, no answer
    not_asked: int = 0  # left when the run stopped


@dataclass
class Summary:
    counts: dict[str, KindCounts] = field(default_factory=lambda: defaultdict(KindCounts))
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (kind, image, reason)
    seconds: float = 0.0
    stopped: str | None = None

    @property
    def complete(self) -> bool:
        """Every job ended with a stored answer."""
        return self.stopped is None and all(c.failed == 0 and c.not_asked == 0 for c in self.counts.values())

    def lines(self, max_failures: int = 10) -> list[str]:
        out = []
        for kind, c in self.counts.items():
            asked = "questions" if kind == "classes" else "images"  # classes: text-only questions, no image
            out.append(
                f"{kind}: {c.total} {asked}, {c.done} described now, {c.cached} already stored, {c.failed} failed"
                + (f", {c.not_asked} not asked" if c.not_asked else "")
            )
        for kind, image, reason in self.failures[:max_failures]:
            out.append(f"  failed {kind} {image}: {reason}")
        if len(self.failures) > max_failures:
            out.append(f"  ... and {len(self.failures) - max_failures} more failures")
        if self.stopped:
            out.append(f"stopped: {self.stopped}")
        out.append(f"time: {self.seconds:.1f} s")
        return out


def stored_keys(store: DescriptionStore, backend: str, model: str, jobs: Sequence[Job]) -> set:
    """The job keys (model tag included) that the store answers for this backend and model."""
    return {(tag, *key) for tag in {job.model_tag for job in jobs} for key in store.keys(backend, model + tag)}


def plan(jobs: Sequence[Job], stored: set) -> tuple[Summary, list[Job], Counter]:
    """What to ask: the jobs whose key is not `stored`, each key once (`followers` counts the identical jobs that
    wait on a pending one), and a summary that has counted the rest as already stored. Batch files use it too."""
    summary = Summary()
    pending: list[Job] = []
    followers: Counter = Counter()
    queued = set()
    for job in jobs:
        counts = summary.counts[job.kind]
        counts.total += 1
        if job.key in stored:
            counts.cached += 1
        elif job.key in queued:
            followers[job.key] += 1
        else:
            queued.add(job.key)
            pending.append(job)
    return summary, pending, followers


class Runner:
    """Runs one list of jobs once (a cancelled runner stays cancelled: make a new one to go on)."""

    def __init__(
        self,
        describer: Describer,
        store: DescriptionStore,
        dataset_name: str,
        concurrency: int | None = None,
        stop_after_failures: int = DEFAULT_STOP_AFTER_FAILURES,
        progress: bool = True,
    ):
        self.describer = describer
        self.store = store
        self.dataset_name = dataset_name
        self.concurrency = max(1, concurrency or describer.default_concurrency)
        self.stop_after_failures = stop_after_failures
        self.progress = progress
        self._stop = threading.Event()
        self._stop_reason: str | None = None

    def cancel(self, reason: str = "cancelled") -> None:
        """Stop taking new jobs; answers already on their way are still stored."""
        self._stop_reason = self._stop_reason or reason
        self._stop.set()

    def run(self, jobs: Sequence[Job]) -> Summary:
        started = time.monotonic()
        describer = self.describer
        summary, pending, followers = plan(jobs, stored_keys(self.store, describer.backend, describer.model, jobs))

        threads, outcomes = self._start_workers(pending)
        progress = tqdm(
            total=len(pending),
            desc=f"describe ({describer.backend} {describer.model})",
            unit="req",
            dynamic_ncols=True,
            disable=not (self.progress and pending),
        )
        finished: set[int] = set()
        failures_in_row = 0
        taken: list = []  # outcomes off the queue, not yet in the store: an interrupt in between leaves them here
        try:
            while len(finished) < len(pending):
                try:
                    taken = [outcomes.get(timeout=0.2)]
                except queue.Empty:
                    if not any(t.is_alive() for t in threads):
                        break
                    continue
                taken += _waiting(outcomes)
                stored, taken = self._stored(taken), []
                for job, outcome in stored:
                    if job is None:
                        self.cancel(str(outcome))
                        continue
                    finished.add(id(job))
                    progress.update(1)
                    if self._count(summary, job, outcome, followers[job.key]):
                        failures_in_row = 0
                    else:
                        failures_in_row += 1
                        if failures_in_row >= self.stop_after_failures and not self._stop.is_set():
                            self.cancel(f"{failures_in_row} failures in a row (last: {outcome})")
                progress.set_postfix(failed=sum(c.failed for c in summary.counts.values()), refresh=False)
        except KeyboardInterrupt:
            self.cancel("interrupted")
            raise
        finally:
            self._finish_in_flight(threads, outcomes, summary, finished, followers, taken)
            progress.close()
        for job in pending:
            if id(job) not in finished:
                summary.counts[job.kind].not_asked += 1 + followers[job.key]
        summary.stopped = self._stop_reason
        summary.seconds = time.monotonic() - started
        return summary

    def _start_workers(self, pending: list[Job]) -> tuple[list[threading.Thread], queue.Queue]:
        """The worker threads, started on a queue of the `pending` jobs; the queue they put their outcomes on."""
        work: queue.Queue[Job] = queue.Queue()
        for job in pending:
            work.put(job)
        outcomes: queue.Queue[tuple[Job | None, str | Exception]] = queue.Queue()
        batch = max(1, self.describer.batch_size)
        threads = [
            threading.Thread(target=self._work, args=(work, outcomes, batch), daemon=True, name=f"describe-{i}")
            for i in range(min(self.concurrency, -(-len(pending) // batch)))
        ]
        for thread in threads:
            thread.start()
        return threads, outcomes

    @staticmethod
    def _count(summary: Summary, job: Job, outcome: str | Exception, followers: int) -> bool:
        """Record one outcome (for the job and the identical jobs that wait on it); True when answered."""
        counts = summary.counts[job.kind]
        if isinstance(outcome, str):
            counts.done += 1
            counts.cached += followers
            return True
        counts.failed += 1 + followers
        summary.failures.append((job.kind, job.image, str(outcome)))
        return False

    def _finish_in_flight(
        self, threads, outcomes, summary: Summary, finished: set[int], followers: Counter, taken: list
    ) -> None:
        """Let answers already on their way land in the store (after a stop), then store and count them with those
        `taken` off the queue but not yet stored (a Ctrl-C in the main thread's store write: written again, the same
        rows replace themselves)."""
        deadline = time.monotonic() + FINISH_IN_FLIGHT_SECONDS
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        for job, outcome in self._stored(taken + _waiting(outcomes)):
            if job is None:
                self.cancel(str(outcome))
            else:
                finished.add(id(job))
                self._count(summary, job, outcome, followers[job.key])

    def _stored(self, arrived: list[tuple[Job | None, str | Exception]]) -> list[tuple[Job | None, str | Exception]]:
        """Write the answers among `arrived` to the store in one commit (one per wake-up of the main thread rather
        than one per answer: under load many arrive together); the outcomes to count, which leave out the answers
        a failed write lost (they stay not asked) and say why the run stops."""
        answered = [(job, answer) for job, answer in arrived if job is not None and isinstance(answer, str)]
        if not answered:
            return arrived
        try:
            self.store.put_many([self._row(job, answer) for job, answer in answered])
        except sqlite3.Error as err:
            lost = {id(job) for job, _ in answered}
            stop = BackendStopped(f"cannot write the store {self.store.path}: {err}")
            return [(None, stop)] + [(job, outcome) for job, outcome in arrived if id(job) not in lost]
        return arrived

    def _row(self, job: Job, answer: str) -> tuple:
        """The store row of one answer; why the model stopped is kept beside the text ("length" marks a cut answer)."""
        finish = getattr(answer, "finish_reason", None)
        meta = {**(job.meta or {}), "finish_reason": finish} if finish else job.meta
        model = self.describer.model + job.model_tag
        backend = self.describer.backend
        return (
            job.image_hash,
            job.kind,
            job.prompt,
            backend,
            model,
            str(answer),
            job.image,
            self.dataset_name,
            meta,
            job.variant,
        )

    def _work(self, work: queue.Queue, outcomes: queue.Queue, batch_size: int) -> None:
        describer = self.describer
        while not self._stop.is_set():
            batch: list[Job] = []
            while len(batch) < batch_size:
                try:
                    batch.append(work.get_nowait())
                except queue.Empty:
                    break
            if not batch:
                return
            ready, requests = [], []
            for job in batch:
                try:
                    requests.append(job.build())
                    ready.append(job)
                except CorruptImage as err:
                    outcomes.put((job, ItemFailed(f"unreadable image ({err})")))
            if not ready:
                continue
            try:
                answers = describer.describe(requests, self._stop)
            except BackendStopped as err:
                outcomes.put((None, err))
                return
            except Exception as err:  # a model error fails this batch, and the failures-in-a-row rule decides the rest
                answers = [ItemFailed(f"{type(err).__name__}: {err}")] * len(ready)
            for job, answer in zip(ready, answers):
                outcomes.put((job, answer))


def _waiting(outcomes: queue.Queue) -> list:
    """Every outcome already in the queue, without waiting."""
    waiting = []
    while True:
        try:
            waiting.append(outcomes.get_nowait())
        except queue.Empty:
            return waiting
