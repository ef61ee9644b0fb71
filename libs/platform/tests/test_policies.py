"""Live policies as the services read them: cached for ttl_s, read again after an invalidation,
the last one kept (or none) while the registry cannot be reached."""

from __future__ import annotations

from modelbus_platform.policies import Policies
from modelbus_platform.testing import FakeRegistry


class Tick:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_a_policy_is_cached_read_again_after_ttl_or_invalidation_and_kept_when_down():
    registry, tick = FakeRegistry(), Tick()
    policies = Policies(registry, ttl_s=10, clock=tick)
    assert (await policies.view("m")).revision == 0  # none set: the settings apply
    registry.set_policy("m", {"promotion": {"rollout": "shadow"}})
    assert (await policies.view("m")).revision == 0, "cached for ttl_s"
    tick.now = 11
    assert (await policies.get("m")).promotion.rollout == "shadow"
    registry.set_policy("m", {"promotion": {"rollout": "canary"}})
    policies.invalidate("m")  # a ModelPolicyChanged
    assert (await policies.get("m")).promotion.rollout == "canary"
    reads = registry.calls.count("policy:m")
    registry.down = True
    tick.now = 30
    kept = await policies.view("m")
    assert (kept.revision, kept.policy.promotion.rollout) == (2, "canary")
    await policies.view("m")
    assert registry.calls.count("policy:m") == reads + 1, "a failed read waits ttl_s too"
    # a model never read while the registry is down: no policy, the settings apply
    assert (await policies.view("other")).revision == 0
    assert (await policies.view("other")).revision == 0
    assert policies.known("m") is kept
