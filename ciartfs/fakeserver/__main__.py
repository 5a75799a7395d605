"""python -m ciartfs.fakeserver [--port-api N] [--port-storage M] [--port-html H]: run the fake
CircleCI with the demo data, print its URLs, and serve until Ctrl-C (or SIGTERM)."""

from __future__ import annotations

import argparse
import signal
import threading

from ciartfs.fakeserver import FakeCI, demo_dataset

DEMO_TOKEN = "demo-token"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ciartfs.fakeserver", allow_abbrev=False,
                                     description="A fake CircleCI v1.1 API and storage host with demo data.")
    parser.add_argument("--port-api", type=int, default=0, metavar="N", help="API host port (default: any free one)")
    parser.add_argument("--port-storage", type=int, default=0, metavar="M",
                        help="storage host port (default: any free one)")
    parser.add_argument("--port-html", type=int, default=0, metavar="H",
                        help="port of the circle-artifacts stand-in serving HTML directly (default: any free one)")
    parser.add_argument("--token", default=DEMO_TOKEN, help=f"the valid API token (default: {DEMO_TOKEN})")
    args = parser.parse_args(argv)
    fake = FakeCI(tokens={args.token}, api_port=args.port_api, storage_port=args.port_storage,
                  html_port=args.port_html)
    demo_dataset(fake)
    try:
        fake.start()
    except OSError as e:
        parser.exit(1, f"cannot listen: {e.strerror or e}\n")
    print(f"fake CircleCI API: {fake.api_url}  (v1.1 at {fake.api_url}/api/v1.1, token: {args.token})\n"
          f"storage host:      {fake.storage_url}\n"
          f"HTML host:         {fake.html_url}  (public projects' HTML, served without a redirect)\n"
          f"GitHub Actions:    {fake.api_url}/repos/acme/api/actions/runs  (artifacts' blobs on {fake.blob_url})",
          flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
