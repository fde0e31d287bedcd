"""Is the Hugging Face hub worth asking? Offline, the hub clients retry for up to a minute before
failing; one short probe lets model and data loading fail at once with advice instead."""

import os
import socket
import urllib.request
from urllib.parse import urlparse

import huggingface_hub


def hub_unavailable() -> str | None:
    """Why a hub download cannot work now, or None when it might (online, or offline mode with a
    local cache the library will look in)."""
    if huggingface_hub.is_offline_mode():
        return None
    # huggingface_hub reads HF_HUB_OFFLINE once, at import: look again for a later setting.
    if os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}:
        return "HF_HUB_OFFLINE is set"
    if not _reachable(huggingface_hub.constants.ENDPOINT):
        return f"{huggingface_hub.constants.ENDPOINT} is unreachable"
    return None


def _reachable(endpoint: str, timeout: float = 3.0) -> bool:
    if urllib.request.getproxies():  # a direct probe says nothing about a proxied route
        return True
    url = urlparse(endpoint)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False
