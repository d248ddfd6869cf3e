"""What each SSRC a peer sends from costs a session's inbound SRTP (libsrtp through pylibsrtp, as aiortc 1.16 sets it
up: one policy for any inbound SSRC), with and without the gateway's bound (RELIABILITY.md, "A ninth pass").

    python -m loadtests.srtp_streams [--ssrcs 40000] [--step 10000]

libsrtp keeps a stream for every SSRC it authenticates and looks a packet's stream up in a list: the time to unprotect
one packet, and the memory held, grow with the SSRCs seen. Prints, after each `step` new SSRCs, the time to unprotect
a packet of a known SSRC and this process's resident memory, for the bare session and behind `KnownSsrcs`.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter

import psutil
import pylibsrtp
from aiortc.rtp import RtpPacket

from deploy.gateway.limits import GatewayLimits
from deploy.gateway.rtp_guard import KnownSsrcs

PROTECTED_PER_SESSION = 1000  # the sender's own libsrtp is made again this often, so its list stays short


def packet(ssrc: int, seq: int) -> bytes:
    return RtpPacket(payload_type=111, sequence_number=seq % 65536, timestamp=seq * 960, ssrc=ssrc,
                     payload=b"\xf8\xff\xfe").serialize()


def run(bounded: bool, ssrcs: int, step: int) -> None:
    key = os.urandom(30)
    policy = pylibsrtp.Policy(key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND)
    rx = pylibsrtp.Session(policy)
    if bounded:
        rx = KnownSsrcs(rx, GatewayLimits().rtp_ssrcs, Counter())
    rss0 = psutil.Process().memory_info().rss
    tx, seq = None, 0
    for n in range(ssrcs):
        if n % PROTECTED_PER_SESSION == 0:
            tx = pylibsrtp.Session(pylibsrtp.Policy(key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND))
        try:
            rx.unprotect(tx.protect(packet(n + 1, 0)))
        except pylibsrtp.Error:
            pass  # dropped by the bound
        if (n + 1) % step == 0:
            probe = pylibsrtp.Session(pylibsrtp.Policy(key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND))
            data = [probe.protect(packet(1, seq + i + 1)) for i in range(200)]  # SSRC 1: the first, known one
            seq += 200
            t = time.perf_counter()
            for d in data:
                rx.unprotect(d)
            us = (time.perf_counter() - t) / len(data) * 1e6
            mib = (psutil.Process().memory_info().rss - rss0) / 2**20
            print(f"{'KnownSsrcs' if bounded else 'bare libsrtp':>12} | {n + 1:>7} SSRCs sent | {us:8.1f} us a packet "
                  f"| +{mib:.0f} MiB", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ssrcs", type=int, default=40000)
    ap.add_argument("--step", type=int, default=10000)
    args = ap.parse_args(argv)
    for bounded in (False, True):
        run(bounded, args.ssrcs, args.step)
    return 0


if __name__ == "__main__":
    sys.exit(main())
