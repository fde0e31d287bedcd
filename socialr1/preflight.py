"""Checks of a run's inputs that cost nothing, made before any data or model is loaded, so that a
bad path fails in a second with one line naming the flag, not after minutes of loading."""

import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

from socialr1.config import ConfigError, TrainConfig

LOCAL_PREFIXES = ("/", ".", "~")  # a name starting so is a path, never a hub name


def check_inputs(cfg: TrainConfig) -> None:
    if not cfg.model.tiny:
        check_model_dir(cfg.model.name_or_path, "--model.name-or-path")
    if cfg.reward.content_scorer == "model":
        check_model_dir(cfg.reward.rm.path, "--reward.rm.path")
    if cfg.reward.structure_scorer == "judge":
        _check_reachable(cfg.reward.judge.base_url, "--reward.judge.base-url")
    if cfg.reward.content_scorer == "endpoint":
        _check_reachable(cfg.reward.rm.url, "--reward.rm.url")
    check_writable(Path(cfg.output_dir))


def check_model_dir(name: str, flag: str) -> None:
    path = Path(name).expanduser()
    if not path.exists():
        if name.startswith(LOCAL_PREFIXES):
            raise ConfigError(f"{flag} {name}: no such directory")
        return  # a hub name: the loader asks the hub, or explains how to do without it
    if not (path / "config.json").is_file():
        raise ConfigError(f"{flag} {name}: no config.json in it; expected a Hugging Face model directory")


def _check_reachable(url: str, flag: str, timeout: float = 5.0) -> None:
    """A service that no connection reaches fails now, in one line, rather than as every completion's
    scoring failure once the models are loaded."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{flag} {url}: not an http(s) URL")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError as e:
        raise ConfigError(f"{flag} {url}: cannot be reached ({e.strerror or e})") from None


def check_writable(out: Path) -> None:
    """The output dir, or its nearest existing parent, must be a directory we may write into."""
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--output-dir {out}: cannot write there ({existing} is not a writable directory)")
