"""Placeholder until this reader lands (issue 13): the format is recognised, not yet read."""

from __future__ import annotations

from ..errors import InputError
from .base import Reader


class FlaxReader(Reader):
    def __init__(self, path, fileset=None) -> None:
        super().__init__(path, fileset)
        raise InputError(path, "is a Flax msgpack file : reading it is not supported yet")

    def metas(self):  # pragma: no cover
        return {}

    def read(self, name):  # pragma: no cover
        raise NotImplementedError
