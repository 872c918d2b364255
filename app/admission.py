"""Admission: a request is admitted or refused before any work that grows with it is done.

Each model has a :class:`Gate`: a count of its requests in progress (from the moment the model's name
is read off the body until the answer is sent) and a bound on it. The front door (app/frontend.py)
passes a request through the gate before its body is parsed, images decoded or arrays built, so a
refusal costs a few microseconds of the event loop, and an overloaded model spends its time on the
requests it admitted instead of parsing requests it then turns away (which collapsed goodput at a
thousand connections).

The bound is the model's own capacity to hold work: ``batching.max_queue_size`` for batched graphs,
the decode loop's active + queued sequences for language models, and the number of search threads for
seq2seq. The gate runs on the event loop only, so it needs no lock.
"""

from __future__ import annotations

from app import metrics
from app.errors import QueueFull


class Gate:
    def __init__(self, model: str, limit: int, retry_after_s: float = 1.0) -> None:
        self.model = model
        self.limit = limit
        self.retry_after_s = retry_after_s
        self.held = 0
        # Created now, at 0: a series born with its first event loses that event to rate().
        self._rejected = metrics.REJECTED.labels(model, "admission")

    def __enter__(self) -> Gate:
        if self.held >= self.limit:
            self._rejected.inc()
            raise QueueFull(
                f"model {self.model!r} has {self.held} requests in progress, its limit; retry later",
                self.retry_after_s,
            )
        self.held += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self.held -= 1
