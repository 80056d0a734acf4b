"""Make sure the model files exist: download them from the Hugging Face hub, or say how to place them.

    python -m stack.download [--release v3|v3.5] [--dir models]

Releases: jina-reranker-v3 (default, in models/) and jina-reranker-v3.5 (in models/v3.5/: its projector has the
same file name). The engine recognises which one a GGUF is from its own metadata (rerank_engine.recipes).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
import sys
import urllib.parse
from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"  # where `make serve` keeps the model files
REPO_ID = "jinaai/jina-reranker-v3-GGUF"
MODEL_FILE = "jina-reranker-v3-Q8_0.gguf"
PROJECTOR_FILE = "projector.safetensors"


@dataclasses.dataclass(frozen=True)
class Release:
    """Where one release's files come from and where `make serve` keeps them."""

    name: str  # what the adapter reports as the model under `make serve`
    repo_id: str
    model_file: str
    directory: Path


RELEASES = {
    "v3": Release("jina-reranker-v3", REPO_ID, MODEL_FILE, MODELS_DIR),
    "v3.5": Release("jina-reranker-v3.5", "jinaai/jina-reranker-v3.5-GGUF", "jina-reranker-v3.5-Q8_0.gguf",
                    MODELS_DIR / "v3.5"),
}


class DownloadError(RuntimeError):
    pass


def manual_instructions(directory: Path, release: Release) -> str:
    return (f"place {release.model_file} and {PROJECTOR_FILE} from https://huggingface.co/{release.repo_id} in "
            f"{directory}/ (or set RERANKER_MODEL and RERANKER_PROJECTOR to where they are)")


def hub_unreachable(endpoint: str, timeout: float = 3.0) -> str | None:
    """Why the hub cannot be reached, or None; checked up front so that offline fails fast and quietly."""
    url = urllib.parse.urlsplit(endpoint)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
    except OSError as exc:
        return f"{url.hostname} is unreachable: {exc.strerror or exc}"
    return None


def fetch(directory: Path | None = None, release: str = "v3") -> tuple[Path, Path]:
    """Download what is missing of ``release`` into ``directory`` (default: the release's own folder under
    models/; resumable); raise DownloadError with one clear message."""
    chosen = RELEASES[release]
    directory = chosen.directory if directory is None else directory
    targets = [directory / chosen.model_file, directory / PROJECTOR_FILE]
    missing = [t for t in targets if not t.is_file()]
    if missing:
        try:
            from huggingface_hub import constants, hf_hub_download
            from huggingface_hub.utils import logging as hub_logging
        except ImportError:
            raise DownloadError(f"huggingface_hub is not installed; {manual_instructions(directory, chosen)}"
                                ) from None
        hub_logging.set_verbosity_error()
        reason = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else hub_unreachable(constants.ENDPOINT)
        if reason:
            raise DownloadError(f"cannot download the model files ({reason}); "
                                f"{manual_instructions(directory, chosen)}")
        for target in missing:
            print(f"downloading {target.name} from {chosen.repo_id} into {directory}/ ...", flush=True)
            try:
                hf_hub_download(chosen.repo_id, target.name, local_dir=directory)
            except Exception as exc:  # offline, hub down, disk full: all end in the same advice
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise DownloadError(f"could not download {target.name} ({type(exc).__name__}: {reason}); "
                                    f"{manual_instructions(directory, chosen)}") from None
    return targets[0], targets[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--release", choices=sorted(RELEASES), default=os.environ.get("RERANKER_RELEASE") or "v3",
                        help="which jina-reranker release (default: $RERANKER_RELEASE, else v3)")
    parser.add_argument("--dir", type=Path, help="where the model files go (default: the release's folder)")
    args = parser.parse_args()
    try:
        model, projector = fetch(args.dir, args.release)
    except DownloadError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(f"model files ready: {model}, {projector}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
