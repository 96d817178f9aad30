"""The ``etag-race`` fault: another client of the BMC that writes the System's
``HostName`` just before a client's ``If-Match`` PATCH of the System is judged, so the
ETag that client read a moment ago is stale and the PATCH is refused with 412, as on a
real BMC that two tools drive at once. The write is real: the System shows it and its
ETag changes for good, so a client that reads the System again gets the new ETag.
"""

from __future__ import annotations

from lab import faults
from lab.redfish.odata import Json


class OtherClient:
    """What the other client wrote to one System, laid over the machine's own view."""

    def __init__(self, name: str) -> None:
        self.written: Json = {}
        self._name = name
        self._writes = 0  # never reset: each write differs from every earlier one
        self._fault: faults.Fault | None = None  # the etag-race fault being counted
        self._raced = 0  # PATCHes raced under it

    def before_patch(self, fault: faults.Fault) -> None:
        """Called for each PATCH of the System that carries ``If-Match``: under
        ``etag-race:N`` the first N of them are raced, under ``etag-race`` every one."""
        if fault.kind is not faults.Kind.ETAG_RACE:
            return
        if fault is not self._fault:  # set anew (control channel, test): count afresh
            self._fault, self._raced = fault, 0
        if self._raced >= fault.value:
            return
        self._raced += 1
        self._writes += 1
        self.written["HostName"] = f"{self._name}-other-client-{self._writes}"
