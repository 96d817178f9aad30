"""Schemathesis hooks (SCHEMATHESIS_HOOKS) for the run of tests/api/test_schemathesis.py."""

from __future__ import annotations

import os
import uuid
from typing import Any

import schemathesis
from schemathesis.engine import observations

# The admin token the fuzzer sends: the service refuses to revoke the last admin token,
# but once the fuzzer has created another it could revoke this one and spend the rest
# of the run on 401s.
_KEPT = os.environ.get("PROVISIONER_FUZZ_TOKEN_ID", "").lower()


@schemathesis.hook
def before_call(ctx: Any, case: Any, kwargs: Any) -> None:
    if (
        case.method.upper() == "DELETE"
        and case.path == "/api/v1/tokens/{token_id}"
        and str((case.path_parameters or {}).get("token_id", "")).lower() == _KEPT
    ):
        case.path_parameters["token_id"] = str(uuid.uuid4())


# schemathesis 4.32.5 looks for links in every string of a JSON answer and crashes
# (ValueError, "Invalid IPv6 URL") on one that starts "http://[" without its "]", such
# as a description the fuzzer itself wrote: such a string is no link.
_same_origin_path = observations._same_origin_path


def _no_crash_on_odd_urls(value: str, origin: tuple[str, str]) -> str | None:
    try:
        return _same_origin_path(value, origin)
    except ValueError:
        return None


observations._same_origin_path = _no_crash_on_odd_urls
