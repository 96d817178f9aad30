"""Node inventory, by concern: reading (:mod:`~provisioner.nodes.queries`), the checks
enrollment and changes share (:mod:`~provisioner.nodes.checks`),
:mod:`~provisioner.nodes.enrollment` (which :mod:`~provisioner.nodes.adoption` of
discovered nodes serves), :mod:`~provisioner.nodes.changes` and deletion,
lifecycle :mod:`~provisioner.nodes.actions`, and asking a node's BMC directly
(:mod:`~provisioner.nodes.control`, imported on its own).

Node state and events are written only through :mod:`provisioner.timeline`.
"""

from provisioner.nodes.actions import act, agent_built, inspector, wiper
from provisioner.nodes.changes import change, remove
from provisioner.nodes.enrollment import enroll, enroll_one
from provisioner.nodes.queries import (
    NodeFilter,
    count_by_state,
    events,
    find,
    last_inspection,
    page,
    present,
    wipes,
)

__all__ = [
    "NodeFilter",
    "act",
    "agent_built",
    "change",
    "count_by_state",
    "enroll",
    "enroll_one",
    "events",
    "find",
    "inspector",
    "last_inspection",
    "page",
    "present",
    "remove",
    "wiper",
    "wipes",
]
