"""`python -m adapter`: serve the adapter with uvicorn (settings from the environment)."""

from __future__ import annotations

import logging
import os

import uvicorn

from adapter.app import create_app
from adapter.settings import AdapterSettings


def main() -> None:
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = AdapterSettings.from_environment()
    uvicorn.run(create_app(settings), host=os.environ.get("ADAPTER_HOST", "127.0.0.1"),
                port=int(os.environ.get("ADAPTER_PORT", "8080")), access_log=False, log_level="warning")


if __name__ == "__main__":
    main()
