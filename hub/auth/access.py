"""Who is asking: the signed-in admin-UI user (cookie session) and role checks."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from flask import Flask, abort, g, redirect, request, session, url_for

from hub.auth.models import ROLES, User
from hub.web.database import get_session

F = TypeVar("F", bound=Callable[..., Any])

# A role may do everything the roles after it may do.
ROLE_RANK = {role: len(ROLES) - i for i, role in enumerate(ROLES)}


def has_role(user: User | None, role: str) -> bool:
    return user is not None and not user.disabled and ROLE_RANK[user.role] >= ROLE_RANK[role]


def login_required(role: str = "viewer") -> Callable[[F], F]:
    """Admin pages: redirect to login when signed out, 403 when the role is too low."""
    if role not in ROLE_RANK:
        raise ValueError(f"unknown role {role!r}")

    def decorator(view: F) -> F:
        @wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if g.get("user") is None:
                return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
            if not has_role(g.user, role):
                abort(403, description=f"This page needs the {role} role.")
            return view(*args, **kwargs)

        return wrapped  # type: ignore[return-value]

    return decorator


def init_app(app: Flask) -> None:
    @app.before_request
    def _load_user() -> None:
        g.user = None
        user_id = session.get("user_id")
        if user_id is None:
            return
        user = get_session().get(User, user_id)
        if user is None or user.disabled:
            session.clear()
            return
        g.user = user

    @app.context_processor
    def _inject_user() -> dict[str, Any]:
        return {"current_user": g.get("user"), "has_role": has_role, "paused_destinations": _paused_for_banner}


def _paused_for_banner() -> list[Any]:
    """Paused destinations, for the banner every signed-in page shows (a token Meta refused stops delivery)."""
    if g.get("user") is None:
        return []
    from hub.delivery.destinations import paused_destinations

    return paused_destinations(get_session())
