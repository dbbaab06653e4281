"""Alembic environment: run with the connection the Store hands over (scepd db upgrade,
scepd serve), never from an alembic.ini of its own."""

from alembic import context

from scepd.store.models import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
