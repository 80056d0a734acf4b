"""Relevance scores from projected embeddings, and the multi-block merge rule."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def cosine(query: np.ndarray, docs: np.ndarray) -> np.ndarray:
    """Cosine of each row of ``docs`` with ``query``; 0 where a vector is all zeros."""
    norms = np.linalg.norm(docs, axis=-1) * np.linalg.norm(query)
    dots = docs @ query
    return np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)


def merged_query(query_embeddings: Sequence[np.ndarray], block_scores: Sequence[np.ndarray]) -> np.ndarray:
    """One query embedding from several passes, as the model's reference merges them.

    Each pass's query embedding is weighted by how well its best document matched,
    ``max((1 + score) / 2)``, so blocks without a relevant document count less.
    """
    if len(query_embeddings) == 1:
        return query_embeddings[0]
    weights = np.array([np.max((1.0 + scores) / 2.0) for scores in block_scores], dtype=np.float64)
    stacked = np.stack(query_embeddings).astype(np.float64)
    return (weights[:, None] * stacked).sum(axis=0) / weights.sum()
