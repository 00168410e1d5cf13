"""The error every invalid setting raises: it names its field, and the CLI exits 2 with it on stderr before any
actor starts."""
from __future__ import annotations


class ConfigError(ValueError):
    def __init__(self, field_name: str, msg: str):
        super().__init__(f"{field_name}: {msg}")
        self.field = field_name
