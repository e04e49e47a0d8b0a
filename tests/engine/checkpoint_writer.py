"""Child process of the kill test: writes ``last.pt`` with ``save_checkpoint`` over and over.

Each checkpoint holds a 8 MB tensor filled with its sequence number and that number, so a reader can
tell a torn file from a whole one. Prints ``ready`` once the first checkpoint is on disk.
"""

from __future__ import annotations

import sys

import torch

from structured.engine.checkpoint import save_checkpoint


def main(path: str) -> None:
    """Write checkpoints 0, 1, 2, ... to ``path`` until killed."""
    number = 0
    while True:
        save_checkpoint({"number": number, "payload": torch.full((2_000_000,), float(number))}, path)
        if number == 0:
            print("ready", flush=True)
        number += 1


if __name__ == "__main__":
    main(sys.argv[1])
