"""Schemathesis hooks (SCHEMATHESIS_HOOKS) for the run of tests/api/test_schemathesis.py."""

from __future__ import annotations

import os
import uuid
from typing import Any

import schemathesis

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
