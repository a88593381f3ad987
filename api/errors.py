"""Domain errors. Resolvers raise them; the GraphQL layer shows their message to the client unmasked."""

from __future__ import annotations

from graphql import GraphQLError, Node


class UserInputError(GraphQLError):
    """A bad argument: the message says which one and what is allowed."""

    def __init__(self, message: str, nodes: Node | None = None) -> None:
        super().__init__(message, nodes=nodes, extensions={"code": "BAD_USER_INPUT"})


class ForbiddenError(GraphQLError):
    """The request's access level may not do this (a de-identified token filtering on a masked field)."""

    def __init__(self, message: str, nodes: Node | None = None) -> None:
        super().__init__(message, nodes=nodes, extensions={"code": "FORBIDDEN"})


class LimitExceeded(GraphQLError):
    """A query over one of the server's limits (api.limits); the message names the limit and its value."""

    def __init__(self, message: str, code: str, limit: str, value: float) -> None:
        super().__init__(message, extensions={"code": code, "limit": limit, "value": value})


class TimeLimitExceeded(LimitExceeded):
    """Raised by work that finds its request past the deadline; the request is then answered with the time
    limit's error (api.app)."""

    def __init__(self) -> None:
        super().__init__("The request ran past its time limit.", "TIME_LIMIT_EXCEEDED", "timeout", 0)


class DatabaseBusy(GraphQLError):
    """The database did not answer (it is restarting, or every connection failed); worth a retry."""

    def __init__(self) -> None:
        super().__init__("The database is not available right now; try again.", extensions={"code": "UNAVAILABLE"})


class QueryTooComplex(GraphQLError):
    """The database refused a statement as too complex (nested or chained past its parser's limits). The input
    limits (api.inputs) keep queries below them; this is the backstop."""

    def __init__(self) -> None:
        super().__init__(
            "The query's filters are too complex for the database; nest or combine fewer of them.",
            extensions={"code": "QUERY_TOO_COMPLEX"},
        )


class NotFoundError(GraphQLError):
    """A row that a non-null relation points to is missing (the database is inconsistent)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, extensions={"code": "NOT_FOUND"})


class DatabaseUnavailable(Exception):
    """The database cannot be opened, does not hold the dicom-db tables or has another schema version."""


class UnsupportedDatabaseURL(DatabaseUnavailable):
    """The URL names a database this API cannot use (neither SQLite nor PostgreSQL)."""
