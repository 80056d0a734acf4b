"""Errors the engine raises, split by whose fault they are."""


class ModelLoadError(RuntimeError):
    """The model or projector files are missing, unreadable or not jina-reranker-v3-shaped."""


class InvalidInputError(ValueError):
    """The caller's query, documents or instruction cannot be scored (a client error)."""


class RequestCancelledError(Exception):
    """The caller gave up on the request (cancelled it or passed its deadline) before it was scored."""
