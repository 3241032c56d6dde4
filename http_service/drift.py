"""The hook for the drift consumer's results: the latest window of the ``drift_reports`` table.

``latest_drift_window(engine)`` is all the page needs: the newest row as plain JSON values, or
None while the table does not exist (the drift consumer is not deployed) or is empty. It reads
the table by reflection, so it follows the drift consumer's columns without importing its code.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Engine, MetaData, Table, inspect, select

DRIFT_TABLE = "drift_reports"


def latest_drift_window(engine: Engine) -> dict[str, Any] | None:
    try:
        if not inspect(engine).has_table(DRIFT_TABLE):
            return None
        table = Table(DRIFT_TABLE, MetaData(), autoload_with=engine)
        order = next((table.c[name] for name in ("window_end", "created_at") if name in table.c), None)
        query = select(table).limit(1)
        if order is not None:
            query = query.order_by(order.desc())
        with engine.connect() as connection:
            row = connection.execute(query).mappings().first()
    except Exception:  # noqa: BLE001 - an unreachable database shows as "no drift window"
        return None
    if row is None:
        return None
    return {key: value.isoformat() if isinstance(value, datetime) else value for key, value in row.items()}
