"""model_versions.held_out_rows: the rows a version held out, which a retrain keeps held out

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 03:40:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('held_out_rows', sa.JSON(), nullable=True,
                                      comment='productids it held out (a retrain keeps them held out)'))


def downgrade() -> None:
    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.drop_column('held_out_rows')
