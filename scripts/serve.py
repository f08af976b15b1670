"""Serve a VLA checkpoint over HTTP, compatible with OpenVLA's `vla-scripts/deploy.py` (`POST /act`, json_numpy).

    python scripts/serve.py --checkpoint openvla/openvla-7b-finetuned-libero-spatial --device cuda --max_batch 8
    python scripts/serve.py --openvla_path runs/my-run/merged --host 0.0.0.0 --port 8000

Client: `json_numpy.patch(); requests.post("http://HOST:8000/act", json={"image": img, "instruction": "..."}).json()`.
`GET /health` (or `/info`) describes the model. Every field is documented in `vla.server.ServeConfig`; docs/SERVING.md.
"""

from __future__ import annotations

import draccus

from vla.runtime import configure_logging
from vla.server import ServeConfig, serve


def main(cfg: ServeConfig) -> None:
    serve(cfg)


if __name__ == "__main__":
    configure_logging()
    main(draccus.parse(ServeConfig))
