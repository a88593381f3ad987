"""Domain errors. Resolvers raise them; the GraphQL layer shows their message to the client unmasked."""

from __future__ import annotations

from graphql import GraphQLError


class UserInputError(GraphQLError):
    """A bad argument: the message says which one and what is allowed."""

    def __init__(self, message: str) -> None:
        super().__init__(message, extensions={"code": "BAD_USER_INPUT"})


class NotFoundError(GraphQLError):
    """A row that a non-null relation points to is missing (the database is inconsistent)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, extensions={"code": "NOT_FOUND"})


class DatabaseUnavailable(Exception):
    """The database cannot be opened or does not hold the dicom-db tables."""


class UnsupportedDatabaseURL(DatabaseUnavailable):
    """The URL names a database this API cannot use (neither SQLite nor PostgreSQL)."""
