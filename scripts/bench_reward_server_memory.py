"""Peak memory of a reward server for 1 vs N concurrent requests of large images (docs/benchmarks.md).

    python -m blip3o_rl.scripts.bench_reward_server_memory [--images 8] [--side 4096] [--concurrent 4]

Each scenario starts its own ``blip3o-rl serve-reward --reward tiny_layout`` on 127.0.0.1 (peak RSS,
``VmHWM``, only grows), warms it up with one small request, then sends the requests at once: each has
``--images`` flat RGBA PNGs of ``--side``² pixels (small on the wire, ``4 * side²`` bytes each decoded).
It prints the server's resident memory before, its peak, and the rise for 1 and for N requests, and
their ratio (< 2 when decoding happens inside the admission control). A third scenario sends one
request whose last image cannot be decoded (refused, 422) and reads the resident memory right after:
a refused request's buffers are released at once. Bounded: 120 s per server start, an hour per request.
"""

from __future__ import annotations

if not __package__:  # run as a file (python scripts/NAME.py): run it as the module it is
    from blip3o_rl.scripts import run_as_module

    run_as_module(__file__)

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from PIL import Image

from ..rewards.remote import encode_image

MIB = 2**20


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def _pngs(n: int, side: int) -> list[bytes]:
    return [encode_image(Image.new("RGBA", (side, side), (200, 30 + i, 30, 255)))[0] for i in range(n)]


def _post(url: str, pngs: list[bytes], timeout: float = 3600.0) -> int:
    import requests

    files: list[tuple[str, Any]] = [("request", (None, json.dumps({
        "prompts": ["p"] * len(pngs), "metadata": [{"regions": {"all": "red"}}] * len(pngs)}), "application/json"))]
    files += [("images", (f"{i}.png", png, "image/png")) for i, png in enumerate(pngs)]
    return requests.post(f"{url}/score", files=files, headers={"X-Request-ID": uuid.uuid4().hex},
                         timeout=timeout).status_code


class _Server:
    """``blip3o-rl serve-reward`` in a subprocess on 127.0.0.1, waited for (bounded) and stopped on exit."""

    def __init__(self, *args: str):
        self.dir = Path(tempfile.mkdtemp(prefix="bench-reward-memory-"))
        port_file = self.dir / "port"
        self.log = (self.dir / "server.log").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "blip3o_rl.scripts.cli", "serve-reward", "--reward", "tiny_layout", "--host",
             "127.0.0.1", "--port", "0", "--port-file", str(port_file), *args],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited: {(self.dir / 'server.log').read_text()[-2000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the server did not start in 120 s")
            if port_file.is_file():
                self.url = f"http://127.0.0.1:{int(port_file.read_text())}"
                try:
                    with urllib.request.urlopen(f"{self.url}/health", timeout=5):
                        break
                except OSError:
                    pass
            time.sleep(0.1)

    def rss_mib(self) -> float:
        return _status_kib(self.proc.pid, "VmRSS") / 1024

    def peak_mib(self) -> float:
        return _status_kib(self.proc.pid, "VmHWM") / 1024

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.log.close()

    def __enter__(self) -> _Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def measure(concurrent: int, pngs: list[bytes], *server_args: str) -> dict[str, float]:
    """One fresh server: resident memory before, peak and rise while ``concurrent`` requests are answered."""
    with _Server(*server_args) as server:
        assert _post(server.url, _pngs(1, 8)) == 200  # warm: the reward and the routes have run once
        base = server.rss_mib()
        codes: list[int] = []
        threads = [threading.Thread(target=lambda: codes.append(_post(server.url, pngs)), daemon=True)
                   for _ in range(concurrent)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=3600)
        if sorted(codes) != [200] * concurrent:
            raise RuntimeError(f"answers {codes}, expected {concurrent} x 200")
        peak = server.peak_mib()
    return {"concurrent": concurrent, "base_mib": base, "peak_mib": peak, "rise_mib": peak - base}


def measure_refusal(pngs: list[bytes], *server_args: str) -> dict[str, float]:
    """One request whose last image is truncated (422): resident memory before and right after the answer."""
    with _Server(*server_args) as server:
        assert _post(server.url, _pngs(1, 8)) == 200
        base = server.rss_mib()
        broken = [*pngs[:-1], pngs[-1][: len(pngs[-1]) // 2]]
        code = _post(server.url, broken)
        if code != 422:
            raise RuntimeError(f"the truncated image got {code}, expected 422")
        after, peak = server.rss_mib(), server.peak_mib()
    return {"base_mib": base, "peak_mib": peak, "after_mib": after, "kept_mib": after - base}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=8, help="images per request")
    parser.add_argument("--side", type=int, default=4096, help="each image is side x side RGBA")
    parser.add_argument("--concurrent", type=int, default=4, help="requests sent at once in the second scenario")
    args = parser.parse_args(argv)
    pngs = _pngs(args.images, args.side)
    decoded = args.images * 4 * args.side**2 / MIB
    print(f"{args.images} RGBA PNGs of {args.side}x{args.side} per request: {sum(map(len, pngs)) / MIB:.1f} MiB "
          f"uploaded, {decoded:.0f} MiB decoded", flush=True)
    wait = ("--queue-timeout-s", "3600")  # the queued requests wait their turn (the default answers 503 after 60 s)
    one = measure(1, pngs, *wait)
    many = measure(args.concurrent, pngs, *wait)
    for row in (one, many):
        print(f"{row['concurrent']:.0f} request(s) at once: server RSS {row['base_mib']:.0f} MiB before, peak "
              f"{row['peak_mib']:.0f} MiB, rise {row['rise_mib']:.0f} MiB", flush=True)
    print(f"rise ratio {args.concurrent} vs 1: {many['rise_mib'] / one['rise_mib']:.2f}")
    refused = measure_refusal(pngs, *wait)
    print(f"refused request (last image truncated, 422): RSS {refused['base_mib']:.0f} MiB before, peak "
          f"{refused['peak_mib']:.0f} MiB, {refused['after_mib']:.0f} MiB right after "
          f"({refused['kept_mib']:+.0f} MiB kept)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
