"""A data source for data larger than memory: rows read lazily from a stream (JSON Lines
shards), shuffled in a bounded buffer, tokenized only when their step comes.

Like :class:`~dpokit.train.sources.StaticSource`, the rows of a step are a pure function of
``(seed, step)``: epoch ``e`` is the stream shuffled by a buffer of ``shuffle_buffer`` rows
seeded by ``(seed, e)``, and step ``s`` takes its ``examples_per_step`` rows in order. So
resuming needs only the step: the source re-opens the stream and skips the rows before it
(read, not tokenized); consecutive steps just continue the open stream. Memory holds the
buffer and one step's rows, whatever the size of the data. Every process reads the stream and
tokenizes only its own share (rows ``rank::world`` of each step): no overlap, nothing lost.

    >>> rows = lambda: iter(range(10))
    >>> src = StreamingSource(rows, 10, lambda row, i: row, list, batch_size=2, shuffle_buffer=0)
    >>> src.micro_batches(1), src.steps_per_epoch
    ([[2, 3]], 5)
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..data.io import DataError
from .sources import StepShares


def buffer_shuffled(rows: Iterator[Any], buffer: int, rng: random.Random) -> Iterator[Any]:
    """Rows in a seeded order drawn from a window of ``buffer`` rows (0: in stream order)."""
    if buffer <= 1:
        yield from rows
        return
    window: list[Any] = []
    for row in rows:
        window.append(row)
        if len(window) >= buffer:
            i = rng.randrange(len(window))
            window[i], window[-1] = window[-1], window[i]
            yield window.pop()
    rng.shuffle(window)
    yield from window


@dataclass
class StreamingSource(StepShares):
    """open_stream: a fresh pass over the raw rows, in order. num_rows: how many (one counting
    pass). build(row, position) -> example: tokenizes one row (position: its place in the
    stream, the example's index); raises :class:`DataError` for a bad row, which is skipped
    and counted by reason when ``skip_bad_rows``, else propagated."""

    open_stream: Callable[[], Iterator[Any]]
    num_rows: int
    build: Callable[[Any, int], Any]
    collate: Callable[[list[Any]], Any]
    batch_size: int
    grad_accum_steps: int = 1
    seed: int = 0
    shuffle_buffer: int = 10_000
    fingerprint: str | None = None
    collate_key: str = ""
    skip_bad_rows: bool = False
    world: int = 1
    rank: int = 0
    precomputable: bool = False  # no table of every example's reference log-probs
    skipped: Counter = field(default_factory=Counter)
    _cursor: tuple[int, int] | None = None  # (epoch, rows taken) of the open stream
    _stream: Iterator[Any] | None = None

    @property
    def steps_per_epoch(self) -> int:
        return self.steps_for(self.num_rows)

    def _epoch_stream(self, epoch: int) -> Iterator[tuple[int, Any]]:
        rng = random.Random(self.seed * 100_003 + epoch)
        return buffer_shuffled(enumerate(self.open_stream()), self.shuffle_buffer, rng)

    def step_rows(self, step: int) -> list[tuple[int, Any]]:
        """(position, raw row) of every row the step takes, over all processes."""
        epoch, offset = divmod(step, self.steps_per_epoch)
        start = offset * self.examples_per_step
        if self._cursor != (epoch, start) or self._stream is None:
            self._stream = self._epoch_stream(epoch)
            for _ in range(start):  # fast-forward: read, do not tokenize
                next(self._stream)
        rows = [row for _, row in zip(range(self.examples_per_step), self._stream, strict=False)]
        self._cursor = (epoch, start + len(rows))
        return rows

    def micro_batches(self, step: int, policy: Any = None) -> list[Any]:
        mine = self.step_rows(step)[self.rank::self.world]
        examples = []
        for position, row in mine:
            try:
                examples.append(self.build(row, position))
            except DataError as err:
                if not self.skip_bad_rows:
                    raise
                self.skipped[err.reason.split(":")[0]] += 1
        return [self.collate(examples[i:i + self.batch_size])
                for i in range(0, len(examples), self.batch_size)]

    def step_metrics(self) -> dict[str, float]:
        return {"data/skipped_rows": float(sum(self.skipped.values()))} if self.skipped else {}

    def state_dict(self) -> dict[str, Any]:
        return {}  # the rows of a step are a pure function of (seed, step)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._cursor = self._stream = None
