"""ConfigError lives here, below every settings module, so that both socialr1.config and the
dataclasses it imports (socialr1.rewards.config) can raise it."""


class ConfigError(Exception):
    """Settings that cannot work; the message names the flags. Not a ValueError on purpose: tyro
    turns those raised in `__post_init__` into a multi-line box, train.py prints this one line."""
