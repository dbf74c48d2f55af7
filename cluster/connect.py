"""Which Ray a ladder job uses and how it reaches it: an address or the embedded local Ray, its errors in one line.

Without `--address` / RAY_ADDRESS a ladder starts its own local Ray, whatever else runs on the machine.
An address is either the cluster's (`host:6379`) or its dashboard's (`http://host:8265`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional


class ClusterError(ValueError):
    """The Ray cluster cannot be reached or refuses us (address, token); one line."""


@dataclass(frozen=True)
class Address:
    """Where the user's Ray is: None (embedded local), a cluster address, or a dashboard URL."""
    raw: Optional[str]

    @classmethod
    def resolve(cls, given: Optional[str]) -> "Address":
        return cls(given or os.environ.get("RAY_ADDRESS") or None)

    @property
    def local(self) -> bool:
        return self.raw is None

    @property
    def is_http(self) -> bool:
        return bool(self.raw) and self.raw.startswith(("http://", "https://"))

    def api_server(self) -> str:
        """The dashboard URL the Jobs and State APIs speak to."""
        if self.is_http:
            return self.raw.rstrip("/")
        from ray.dashboard.utils import get_address_for_submission_client

        try:
            return get_address_for_submission_client(self.raw)
        except Exception as exc:
            raise ClusterError(f"Ray at {self.raw}: cannot find its dashboard ({first_line(exc)})") from None

    def cluster(self) -> str:
        """The address `ray.init` connects a driver to (a dashboard URL is not one)."""
        if self.is_http:
            raise ClusterError(f"{self.raw} is the dashboard's address; this command needs the cluster's "
                               f"(host:6379), or run the ladder with `ladder submit`")
        return self.raw


def first_line(exc: BaseException, limit: Optional[int] = 300) -> str:
    """An exception's message in one line (at most `limit` characters), else its type's name (the Ray layer's own:
    `cluster` imports nothing of the ladder)."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:limit]


def explain(exc: BaseException, where: str) -> ClusterError:
    """Ray's connection and authentication errors as one line."""
    text = str(exc)
    if "authentication" in text.lower() or "401" in text or "Unauthorized" in text:
        hint = ("the cluster wants a token and none was given: set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to it"
                if token_source() is None else
                f"the cluster refused the token from {token_source()}: it must be the cluster's token")
        return ClusterError(f"Ray at {where}: {hint}")
    if "Connection refused" in text or "Cannot connect" in text or "Failed to connect" in text \
            or "timed out" in text.lower() or "unavailable" in text.lower():
        return ClusterError(f"Ray at {where}: unreachable (is the cluster up, and is this its address?)")
    return ClusterError(f"Ray at {where}: {first_line(exc)}")


def token_source() -> Optional[str]:
    """Where Ray takes the authentication token from, as Ray looks for it (None: no token at all)."""
    from pathlib import Path

    if os.environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path and Path(path).is_file():
        return "RAY_AUTH_TOKEN_PATH"
    return "~/.ray/auth_token" if (Path.home() / ".ray" / "auth_token").is_file() else None


def actors_needed(spec) -> int:
    judge_workers = 0 if spec.judge.initial.kind == "verifier" and spec.rungs == 1 else spec.judge_pool.workers
    return spec.rollout.workers + judge_workers + 2  # + trainer + controller


def start_ray(spec, verbose: bool = False, address: Optional[str] = None) -> None:
    """Connect to the given cluster (or RAY_ADDRESS), or start a fresh local Ray sized so every stage actor
    can be placed; then refuse, in one line, a spec the cluster has no node for."""
    import ray

    from cluster.placement import check_placement

    if not ray.is_initialized():
        target = Address.resolve(address)
        kwargs = dict(namespace="ladder", log_to_driver=verbose, configure_logging=verbose, logging_level="WARNING")
        if target.local:
            import logging

            # Ray announces its default token authentication with advice to opt out; we keep it on, quietly.
            logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
            cpus = max(os.cpu_count() or 1, actors_needed(spec))
            ray.init(address="local", num_cpus=cpus, include_dashboard=False, **kwargs)
        else:
            connect(target, **kwargs)
    check_placement(spec)


def connect(target: Address, **kwargs) -> None:
    """`ray.init` to a running cluster, with its errors (unreachable, token) as one line."""
    import ray

    kwargs.setdefault("namespace", "ladder")
    kwargs.setdefault("log_to_driver", False)
    kwargs.setdefault("logging_level", "WARNING")
    try:
        ray.init(address=target.cluster(), **kwargs)
    except ClusterError:
        raise
    except Exception as exc:
        raise explain(exc, target.raw) from None
