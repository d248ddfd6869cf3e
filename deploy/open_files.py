"""A public endpoint's open-file limit: every client connection holds a descriptor.

Docker Engine 29 with containerd 2.1.5 starts a container's process with a soft limit of 1024 descriptors, the hard
limit high (moby/moby#51485; Kubernetes on containerd 2.1.5 the same). With 1024, one client holding 1100 idle
connections locked every other client out of the front door and the gateway (`accept` failing with EMFILE) for as
long as it held them (RELIABILITY.md, "A seventh pass"). The front door and the gateway raise their soft limit to the
hard one at start; what one address may hold at once is the load balancer's or the firewall's to cap (Compose and
Kubernetes: deploy/README.md).
"""
from __future__ import annotations

import logging
import resource

ENOUGH = 65536  # more connections than one address can open to one port (its ephemeral ports)
CEILING = 1 << 20  # used when the hard limit is unlimited


def raise_open_file_limit(log: logging.Logger) -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; warn when that stays under ENOUGH. The limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = CEILING if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        log.info("open files: soft limit raised from %d to %d", soft, target)
        soft = target
    if soft != resource.RLIM_INFINITY and soft < ENOUGH:
        log.warning("open files: the limit is %d (hard); one client holding that many connections locks every other "
                    "client out: raise it (Compose `ulimits: nofile`, systemd LimitNOFILE) to %d or more", soft,
                    ENOUGH)
    return soft
