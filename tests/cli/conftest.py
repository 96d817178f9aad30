"""The CLI's tests against the hand-off tests' service: fake BMCs, nodes taken through
the real actions and the reconciler, and the service on a real port."""

from tests.handoff.conftest import app, fleet, live, settings

__all__ = ["app", "fleet", "live", "settings"]
