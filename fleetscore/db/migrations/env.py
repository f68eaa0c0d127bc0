"""Alembic's environment for fleetscore's schema (run by `fleetscore.db.migrate`, never imported).

Online, the migrations run on the connection the caller passes as `config.attributes["connection"]`, inside
its transaction. Offline (`--sql`), they print the SQL for `config.attributes["dialect_name"]`, built with
`config.attributes["dialect_opts"]`; `default_schema` stands in for the default schema a connection would
have given the dialect.
"""

from __future__ import annotations

from alembic import context

from fleetscore.db.schema import metadata

OPTIONS = {
    "target_metadata": metadata,
    # one script serves every dialect: ALTERs go through batch operations, which SQLite needs
    "render_as_batch": True,
}


def run_offline() -> None:
    attributes = context.config.attributes
    context.configure(dialect_name=attributes["dialect_name"], dialect_opts=attributes.get("dialect_opts", {}),
                      literal_binds=True, **OPTIONS)
    dialect = context.get_context().dialect
    dialect.default_schema_name = dialect.default_schema_name or attributes.get("default_schema")
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    context.configure(connection=context.config.attributes["connection"], **OPTIONS)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
