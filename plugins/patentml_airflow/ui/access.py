"""Who may use the page: Airflow's auth manager decides (not merely "someone is logged in"), and a form post
must come from the page itself (same origin), because the login travels in a cookie the browser sends on its own.

The page is a custom view named :data:`RESOURCE` for the auth manager: reading it is ``GET``, asking the
champion for suggestions is ``POST``. With the FAB auth manager these are the "can read"/"can create"
permissions on a resource of that name; with the simple auth manager every role may read and a user
without a role may do nothing.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any, Callable
from urllib.parse import urlsplit

from airflow.api_fastapi.core_api.security import GetUserDep
from fastapi import Request

log = logging.getLogger(__name__)

RESOURCE = "PatentML"
ACTIONS = {"GET": "read", "POST": "use the suggestion box of"}


class Denied(Exception):
    """The signed-in user lacks a permission, or a post is not from the page; answered with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def is_allowed(user: Any, method: str) -> bool:
    from airflow.api_fastapi.app import get_auth_manager

    return bool(get_auth_manager().is_authorized_custom_view(method=method, resource_name=RESOURCE, user=user))


def requires(method: str) -> Callable[..., Any]:
    """A route dependency: the user (401 without a login) who holds ``method`` on the custom view (else 403)."""

    def check(user: GetUserDep) -> Any:
        if not is_allowed(user, method):
            log.info("PatentML page: %s denied %s on the %s view", user_name(user), method, RESOURCE)
            raise Denied(403, f"Your Airflow account may not {ACTIONS[method]} the {RESOURCE} page: "
                              f"ask an administrator for the {method} permission on the {RESOURCE!r} view.")
        return user

    return check


def same_origin(request: Request) -> bool:
    """Whether a state-changing request comes from a page of this server (cross-site request forgery guard).

    Browsers say so in ``Sec-Fetch-Site``; older ones send ``Origin`` (or at least ``Referer``), which must
    name this host. A request with none of them is no browser form: it is accepted only with an explicit
    ``Authorization`` header, which a forged cross-site form cannot carry.
    """
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site == "same-origin"
    origin = request.headers.get("origin") or request.headers.get("referer")
    if origin:
        return urlsplit(origin).netloc.lower() == request.headers.get("host", "").lower()
    return "authorization" in request.headers


def check_same_origin(request: Request) -> None:
    if not same_origin(request):
        raise Denied(403, "This form must be sent from the PatentML page itself (cross-site request refused).")


def user_name(user: Any) -> str:
    for attr in ("get_name", "get_id"):
        getter = getattr(user, attr, None)
        if callable(getter):
            try:
                return str(getter())
            except Exception:  # noqa: BLE001 - a display name is not worth a 500
                continue
    return str(user)


def reference() -> str:
    """A short id that ties an error page to its full entry in the api-server log."""
    return secrets.token_hex(4)


__all__ = ["RESOURCE", "Denied", "check_same_origin", "is_allowed", "reference", "requires", "same_origin",
           "user_name"]
