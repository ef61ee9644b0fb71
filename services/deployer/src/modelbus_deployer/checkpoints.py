"""Durable live windows: checkpoint each stage's ``LiveWindow`` so a restart continues judging.

``LiveCheckpoints`` restores a stage's window from the ``LiveStatsStore`` the first time a batch
touches the stage, and saves the windows counted into since the last checkpoint (after a batch,
at most every ``live_checkpoint_s``, and on shutdown).

Nothing lost, nothing counted twice. ``deployer-watch`` is a checkpointed group
(``modelbus_platform.offsets``): its offsets are committed only once a checkpoint that holds
what they cover is saved (``commit_after_batch`` after a complete save, and at shutdown), so a
crash makes Kafka hand out again exactly what was counted after the last checkpoint. The
batches carry no offsets to the handler, so the guard against counting twice is the events' own
ids: every checkpoint stores, next to the counts, the ids of the newest ``live_replay_guard``
events counted in that window (``recent_ids``), and an event whose id was counted already (in
this process, or in a restored checkpoint) is skipped:

- handler retried in-process (a failed publish): its ids are in memory, nothing is re-counted;
- crash after a checkpoint, before its commit: the re-delivered batch is in ``recent_ids``;
- crash before the checkpoint (throttled, or MongoDB was down): nothing since the last commit
  was committed, so Kafka hands it all out again and it is counted once.

Two replicas count different partitions into the same window document. ``save`` is a
compare-and-set on the checkpoint's revision: the loser loads the stored window, adds what it
counted since its own last checkpoint (``LiveWindow.since``) and saves again, so the checkpoint
is the sum over replicas and each replica judges on it. Deciding the stage stays the decision
store's compare-and-set; the decided stage's checkpoint is deleted.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from .ports import LiveStatsStore
from .rollout import LiveWindow
from .watch import Bounded, LiveTracker, WindowKey

log = structlog.get_logger(__name__)
SAVE_ATTEMPTS = 5


@dataclass
class _Saved:
    """What the store holds for one window, as far as this replica knows."""

    rev: int
    base: LiveWindow  # the window as of ``rev``
    recent: deque[str]  # ids counted in the window, newest last (saved with it)
    pending: list[str] = field(default_factory=list)  # ids counted since ``rev``


class LiveCheckpoints:
    def __init__(
        self,
        store: LiveStatsStore,
        tracker: LiveTracker,
        *,
        every_s: float = 0.0,
        guard: int = 5000,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.tracker = tracker
        self.every_s = every_s
        self.guard = guard
        self.monotonic = monotonic
        self.seen = Bounded(guard * 20)  # event id -> None: counted already, skip a re-delivery
        self._saved: dict[WindowKey, _Saved] = {}
        self._last_save = float("-inf")

    async def restore(self, key: WindowKey) -> None:
        """Continue the window where the last checkpoint left it (once per key and process)."""
        if key in self._saved:
            return
        stored = await self.store.load(key)
        saved = self._adopt(key, stored)
        if stored is not None:
            self.tracker.windows[key] = saved.base.copy()
            log.info("live.restored", key=key, rev=saved.rev, **self._counts(saved.base))

    def replayed(self, event_id: str) -> bool:
        return event_id in self.seen

    def counted(self, key: WindowKey, event_id: str) -> None:
        self.seen.put(event_id, None)
        saved = self._saved.get(key)
        if saved is not None:
            saved.pending.append(event_id)

    async def maybe_save(self) -> bool:
        """``save`` if the last one is ``every_s`` old; True when it saved everything."""
        if self.monotonic() - self._last_save >= self.every_s:
            return await self.save()
        return False

    async def save(self) -> bool:
        """Checkpoint every window counted into since its last checkpoint; True when every one
        was saved (so the offsets of what was counted may be committed). Best effort: a
        failure is logged and the window stays dirty (its counts are still in memory)."""
        self._last_save = self.monotonic()
        complete = True
        for key in [k for k, s in self._saved.items() if s.pending]:
            try:
                complete = await self._save(key) and complete
            except Exception as exc:
                complete = False
                log.warning("live.checkpoint_failed", key=key, error=str(exc))
        return complete

    async def drop(self, key: WindowKey) -> None:
        """The stage is decided (here or by another replica): forget its checkpoint."""
        self._saved.pop(key, None)
        try:
            await self.store.delete(key)
        except Exception as exc:  # an orphan checkpoint is harmless: its stage never returns
            log.warning("live.checkpoint_delete_failed", key=key, error=str(exc))

    # -- internals -----------------------------------------------------------------------------

    def _adopt(self, key: WindowKey, stored: dict | None) -> _Saved:
        pending = self._saved[key].pending if key in self._saved else []
        if stored is None:
            saved = _Saved(0, LiveWindow(), deque(maxlen=self.guard), pending)
        else:
            ids = [str(i) for i in stored.get("recent_ids") or ()]
            for event_id in ids:
                self.seen.put(event_id, None)
            base = LiveWindow.from_dict(stored.get("window") or {})
            saved = _Saved(int(stored["rev"]), base, deque(ids, maxlen=self.guard), pending)
        self._saved[key] = saved
        return saved

    async def _save(self, key: WindowKey) -> bool:
        for _ in range(SAVE_ATTEMPTS):
            saved, window = self._saved.get(key), self.tracker.windows.get(key)
            if saved is None or window is None:
                return True  # decided meanwhile
            recent = deque(saved.recent, maxlen=self.guard)
            recent.extend(saved.pending)
            checkpoint = {"window": window.to_dict(), "recent_ids": list(recent)}
            if await self.store.save(key, saved.rev, checkpoint):
                self._saved[key] = _Saved(saved.rev + 1, window.copy(), recent)
                return True
            stored = await self.store.load(key)  # another replica counted into it too
            if stored is None and saved.rev > 0:
                await self.drop(key)  # that replica decided the stage
                self.tracker.forget(key)
                return True
            mine = window.since(saved.base)
            merged = self._adopt(key, stored).base.copy()
            merged.absorb(mine)
            self.tracker.windows[key] = merged
            log.info("live.checkpoint_merged", key=key, rev=self._saved[key].rev)
        log.warning("live.checkpoint_contended", key=key, attempts=SAVE_ATTEMPTS)
        return False

    @staticmethod
    def _counts(window: LiveWindow) -> dict[str, int]:
        return {
            "predictions": window.arm.predictions,
            "fallbacks": window.fallbacks,
            "labelled": window.arm.labelled,
            "compared": window.compared,
            "shadow_errors": window.shadow_errors,
            "load_failures": len(window.load_failures),
        }
