"""Redfish error answers: the status code and the ``error`` body the Redfish
specification prescribes (DSP0266 "Error responses"), with one message of the Base
message registry in ``@Message.ExtendedInfo`` that says what went wrong and how to fix
it, as a client's log should show it.
"""

from __future__ import annotations

from dataclasses import dataclass

# The Base registry version the messages come from (messages are looked up by their id
# without the version; 1.8 has every message used here).
_REGISTRY = "Base.1.8"

# (severity, resolution) of each message this lab sends, from the Base registry.
_MESSAGES: dict[str, tuple[str, str]] = {
    "GeneralError": ("Critical", "None."),
    "NoValidSession": (
        "Critical",
        "Establish a session before retrying the operation.",
    ),
    "ResourceAtUriUnauthorized": (
        "Critical",
        "Ensure that the appropriate access is provided for the service in order for it "
        "to access the URI.",
    ),
    "ResourceMissingAtURI": (
        "Critical",
        "Place a valid resource at the URI or correct the URI and resubmit the request.",
    ),
    "OperationNotAllowed": ("Critical", "None."),
    "QueryNotSupported": (
        "Warning",
        "Remove the query parameters and resubmit the request if the operation failed.",
    ),
    "QueryParameterValueFormatError": (
        "Warning",
        "Correct the value for the query parameter in the request and resubmit the "
        "request if the operation failed.",
    ),
    "MalformedJSON": (
        "Critical",
        "Ensure that the request body is valid JSON and resubmit the request.",
    ),
    "PropertyMissing": (
        "Warning",
        "Ensure that the property is in the request body and has a valid value and "
        "resubmit the request if the operation failed.",
    ),
    "PropertyUnknown": (
        "Warning",
        "Remove the unknown property from the request body and resubmit the request if "
        "the operation failed.",
    ),
    "PropertyNotWritable": (
        "Warning",
        "Remove the property from the request body and resubmit the request if the "
        "operation failed.",
    ),
    "PropertyValueNotInList": (
        "Warning",
        "Choose a value from the enumeration list that the implementation can support "
        "and resubmit the request if the operation failed.",
    ),
    "ActionParameterMissing": (
        "Critical",
        "Supply the action with the required parameter in the request body when the "
        "request is resubmitted.",
    ),
    "ActionParameterValueNotInList": (
        "Warning",
        "Choose a value from the enumeration list that the implementation can support "
        "and resubmit the request if the operation failed.",
    ),
    "ActionNotSupported": (
        "Critical",
        "The action supplied cannot be resubmitted to the implementation.  Perhaps the "
        "action was invalid, the wrong resource was the target or the implementation "
        "documentation may be of assistance.",
    ),
    "PreconditionFailed": (
        "Critical",
        "Try the operation again using the appropriate ETag.",
    ),
    "PreconditionRequired": (
        "Critical",
        "Try the operation again using the appropriate ETag.",
    ),
    "ServiceTemporarilyUnavailable": (
        "Critical",
        "Wait for the indicated retry duration and retry the operation.",
    ),
    "InsufficientPrivilege": (
        "Critical",
        "Either abandon the operation or change the associated access rights and "
        "resubmit the request if the operation failed.",
    ),
}


# Not frozen: code that handles exceptions (contextlib, asyncio) assigns their
# __traceback__.
@dataclass
class RedfishError(Exception):
    """An answer other than success: raised anywhere below the request handler, which
    turns it into the response."""

    status: int
    message_id: str
    message: str
    message_args: tuple[str, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()

    def body(self) -> dict[str, object]:
        severity, resolution = _MESSAGES[self.message_id]
        qualified = f"{_REGISTRY}.{self.message_id}"
        return {
            "error": {
                "code": qualified,
                "message": self.message,
                "@Message.ExtendedInfo": [
                    {
                        "@odata.type": "#Message.v1_1_1.Message",
                        "MessageId": qualified,
                        "Message": self.message,
                        "MessageArgs": list(self.message_args),
                        "Severity": severity,
                        "MessageSeverity": severity,
                        "Resolution": resolution,
                    }
                ],
            }
        }


def not_found(path: str) -> RedfishError:
    return RedfishError(
        404, "ResourceMissingAtURI", f"The resource at the URI {path} was not found.", (path,)
    )


def unauthorized(path: str, why: str, *, basic: bool) -> RedfishError:
    """401, with a ``WWW-Authenticate`` challenge only where basic auth is offered."""
    headers = (("WWW-Authenticate", 'Basic realm="Redfish"'),) if basic else ()
    return RedfishError(
        401,
        "ResourceAtUriUnauthorized",
        f"While accessing the resource at {path}, the service received an authorization "
        f"error: {why}",
        (path, why),
        headers,
    )


def not_allowed(method: str, path: str, allowed: str) -> RedfishError:
    return RedfishError(
        405,
        "OperationNotAllowed",
        f"The HTTP method {method} is not allowed on {path}.",
        headers=(("Allow", allowed),),
    )


def busy(retry_after: int) -> RedfishError:
    return RedfishError(
        503,
        "ServiceTemporarilyUnavailable",
        f"The service is temporarily unavailable.  Retry in {retry_after} seconds.",
        (str(retry_after),),
        (("Retry-After", str(retry_after)),),
    )


def value_not_in_list(value: object, prop: str, action: bool = False) -> RedfishError:
    if action:
        return RedfishError(
            400,
            "ActionParameterValueNotInList",
            f"The value '{value}' for the parameter {prop} is not in the list of "
            "acceptable values.",
            (str(value), prop),
        )
    return RedfishError(
        400,
        "PropertyValueNotInList",
        f"The value '{value}' for the property {prop} is not in the list of acceptable values.",
        (str(value), prop),
    )
