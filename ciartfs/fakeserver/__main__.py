"""python -m ciartfs.fakeserver: run the fake CircleCI with the demo data until Ctrl-C."""

import signal
import threading

from ciartfs.fakeserver import FakeCI, demo_dataset


def main() -> None:
    fake = FakeCI(tokens={"demo-token"})
    demo_dataset(fake)
    fake.start()
    print(f"fake CircleCI API: {fake.api_url}  (token: demo-token)\nstorage host:      {fake.storage_url}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    fake.stop()


main()
