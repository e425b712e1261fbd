"""Joining a Ray cluster (``--address HOST:PORT``), or starting a local Ray, for sweeps and for runs
on several Ray workers.

A cluster started with a plain ``ray start --head`` of Ray 2.60 turns token authentication on when
a token exists (``~/.ray/auth_token``, which any earlier local ``ray.init()`` writes). Ray's own CLI
then reads that token; a client must do the same or be refused ("Authentication token is missing
or incorrect"). ``join`` does what Ray's CLI does: with ``RAY_AUTH_MODE`` unset and a token
available (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``), it enables token
mode, so the token is sent. An address with nothing listening is refused in seconds, naming it.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from precondlab.errors import UserInputError


class ClusterError(UserInputError):
    """A Ray cluster that cannot be joined; the message names the address and what to do."""


def _token_available() -> bool:
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    return Path(path).is_file() if path else (Path.home() / ".ray" / "auth_token").is_file()


def use_token_like_ray_cli() -> None:
    """Token mode when RAY_AUTH_MODE is unset and a token exists: Ray's own rule for ``ray start``
    (its function, which also refreshes Ray's cached config; the same rule by hand otherwise)."""
    if os.environ.get("RAY_AUTH_MODE") is not None or not _token_available():
        return
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # another Ray version: set the mode; Ray reads it when it initialises
        os.environ["RAY_AUTH_MODE"] = "token"
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def check_listening(address: str, timeout: float = 5.0) -> None:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"--address {address!r}: write HOST:PORT, e.g. 10.0.0.5:6379 (what `ray start --head` prints)")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise ClusterError(f"no Ray cluster at {address}: {exc.strerror or exc} (start one with `ray start --head "
                           f"--port {port}`, or check the address)") from None


def join(address: str | None, num_cpus: int | None = None) -> bool:
    """``ray.init`` for ``address`` (a local Ray with ``num_cpus`` when None); True if this call
    started Ray (the caller then shuts it down)."""
    import logging

    import ray
    if ray.is_initialized():
        return False
    logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)   # its notes, not ours
    if address:
        check_listening(address)
        use_token_like_ray_cli()
        try:
            ray.init(address=address, log_to_driver=False, logging_level="WARNING")
        except Exception as exc:  # noqa: BLE001 - ConnectionError, AuthenticationError, version mismatch
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            hint = (" (the cluster wants a token: set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH, as for `ray status`)"
                    if "uthentication" in first else "")
            raise ClusterError(f"cannot join the Ray cluster at {address}: {first}{hint}") from None
        return True
    # "local": always a fresh instance; with no address Ray would join whatever cluster
    # /tmp/ray/ray_current_cluster or $RAY_ADDRESS names, even a stale or foreign one.
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
             logging_level="WARNING")
    return True


__all__ = ["ClusterError", "check_listening", "join", "use_token_like_ray_cli"]
