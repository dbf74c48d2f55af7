"""Network addresses a process group is formed at: this node's address and a TCP port free on it."""
from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port free on this node now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def node_ip() -> str:
    """This node's address as Ray knows it (others reach this process there)."""
    import ray

    return ray.util.get_node_ip_address()
