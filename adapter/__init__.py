"""A FastAPI adapter that speaks Jina's rerank API (and the old fastembed service's) in front of Triton."""

__version__ = "0.1.0"
