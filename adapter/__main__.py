"""`python -m adapter`: serve the adapter with uvicorn (settings from the environment)."""

from __future__ import annotations

import logging

import uvicorn

from adapter.app import create_app
from adapter.settings import AdapterSettings


def main() -> None:
    settings = AdapterSettings.from_environment()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(settings), host=settings.adapter_host, port=settings.adapter_port, access_log=False,
                log_level="warning", timeout_keep_alive=settings.keep_alive_s)


if __name__ == "__main__":
    main()
