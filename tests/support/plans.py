"""PostgreSQL query plans as a long-lived connection keeps them (tests of statements that must probe indexes)."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy.orm import Session


class PreparedPlan:
    """``statement`` prepared on the session's connection, as psycopg prepares it after a few executions: the
    plan PostgreSQL keeps for it (under ``force_generic_plan``) was made when the statement was first run."""

    def __init__(self, session: Session, statement: Any, values: dict[str, Any], mode: str) -> None:
        self.connection = session.connection()
        compiled = statement.compile(dialect=self.connection.dialect)
        params = compiled.construct_params(values)
        order: list[str] = []

        def placeholder(match: re.Match[str]) -> str:
            if match.group(1) not in order:
                order.append(match.group(1))
            return f"${order.index(match.group(1)) + 1}"

        sql = re.sub(r"%\((\w+)\)s", placeholder, str(compiled))
        self.arguments = ", ".join(_literal(params[name]) for name in order)
        self.connection.exec_driver_sql(f"SET LOCAL plan_cache_mode = {mode}")
        self.connection.exec_driver_sql(f"PREPARE kept_plan AS {sql}")

    def explain(self) -> str:
        rows = self.connection.exec_driver_sql(f"EXPLAIN EXECUTE kept_plan({self.arguments})").all()
        return "\n".join(row[0] for row in rows)


def _literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list | tuple):  # an array parameter (``= ANY``); the statement casts it to its type
        return f"ARRAY[{', '.join(_literal(item) for item in value)}]" if value else "'{}'"
    if isinstance(value, bytes):
        return "'\\x" + value.hex() + "'"
    return "'" + str(value).replace("'", "''") + "'"
