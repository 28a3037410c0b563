"""The admin home page: what hub is doing right now."""

from __future__ import annotations

from flask import Blueprint, render_template
from sqlalchemy import func, select

from hub.auth.access import login_required
from hub.events.models import Event
from hub.web.database import get_session

bp = Blueprint("home", __name__)


@bp.get("/")
@login_required("viewer")
def index() -> str:
    counts = dict(get_session().execute(select(Event.status, func.count()).group_by(Event.status)).all())
    return render_template("home/index.html", counts=counts)
