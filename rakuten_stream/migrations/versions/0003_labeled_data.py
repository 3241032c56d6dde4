"""labeled data: the labels' positions and time, the stream's listings, each version's training rows, a retrain job's steps

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04 03:00:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('stream_listings',
    sa.Column('productid', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('imageid', sa.BigInteger(), nullable=True),
    sa.Column('designation', sa.Text(), nullable=False),
    sa.Column('description', sa.Text(), nullable=True),
    sa.Column('image_uri', sa.Text(), nullable=True, comment='by-reference images only; inline bytes are not kept'),
    sa.Column('event_time', sa.DateTime(timezone=True), nullable=True),
    sa.Column('source_partition', sa.Integer(), nullable=True),
    sa.Column('source_offset', sa.BigInteger(), nullable=True),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('productid')
    )
    with op.batch_alter_table('labels', schema=None) as batch_op:
        batch_op.add_column(sa.Column('event_time', sa.DateTime(timezone=True), nullable=True,
                                      comment="the label's own time"))
        batch_op.add_column(sa.Column('source_partition', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('source_offset', sa.BigInteger(), nullable=True))
    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('training_rows', sa.JSON(), nullable=True,
                                      comment='productids the version was trained on (the gate scores on the others)'))
    with op.batch_alter_table('retrain_jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('steps', sa.JSON(), nullable=True,
                                      comment='each step as it finished: what it did, found, decided'))
        batch_op.add_column(sa.Column('snapshot_id', sa.String(length=64), nullable=True,
                                      comment='the dataset snapshot the job trained on'))


def downgrade() -> None:
    with op.batch_alter_table('retrain_jobs', schema=None) as batch_op:
        batch_op.drop_column('snapshot_id')
        batch_op.drop_column('steps')
    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.drop_column('training_rows')
    with op.batch_alter_table('labels', schema=None) as batch_op:
        batch_op.drop_column('source_offset')
        batch_op.drop_column('source_partition')
        batch_op.drop_column('event_time')
    op.drop_table('stream_listings')
