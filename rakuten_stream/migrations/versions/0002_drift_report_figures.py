"""drift reports: the window's figures, score, threshold, triggers, episode and HTML report

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04 03:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = (
    ("window_id", sa.String(length=128), "model version, window number"),
    ("drift_score", sa.Float(), None),
    ("drift_threshold", sa.Float(), "bootstrap-calibrated for the window size"),
    ("estimated_f1", sa.Float(), None),
    ("true_f1", sa.Float(), "on the labels that arrived; None without labels"),
    ("triggers", sa.JSON(), None),
    ("episode_id", sa.String(length=64), None),
    ("retrain_request_id", sa.String(length=64), None),
    ("report_html_gz", sa.LargeBinary(), "Evidently's HTML report, gzip"),
)


def upgrade() -> None:
    with op.batch_alter_table("drift_reports", schema=None) as batch_op:
        for name, kind, comment in COLUMNS:
            batch_op.add_column(sa.Column(name, kind, nullable=True, comment=comment))


def downgrade() -> None:
    with op.batch_alter_table("drift_reports", schema=None) as batch_op:
        for name, _, _ in reversed(COLUMNS):
            batch_op.drop_column(name)
