"""A serializer written the way the ``channels_valkey`` 0.x documentation shows, shared by the
tests that check such code still works."""

from __future__ import annotations

import json
from typing import Any

from channels_valkey.serializers import BaseMessageSerializer


class OwnCryptoJSON(BaseMessageSerializer):
    """Written as the 0.x documentation says: ``serialize``/``deserialize`` overridden, and
    encryption done with ``self.crypter`` when keys are given."""

    def as_bytes(self, message: dict[str, Any]) -> bytes:
        return json.dumps(message).encode("utf-8")

    def from_bytes(self, data: bytes) -> dict[str, Any]:
        return json.loads(data)  # type: ignore[no-any-return]

    def serialize(self, message: dict[str, Any]) -> bytes:
        data = self.as_bytes(message)
        if self.crypter:
            data = self.crypter.encrypt(data)
        return data

    def deserialize(self, data: bytes) -> dict[str, Any]:
        if self.crypter:
            data = self.crypter.decrypt(data)
        return self.from_bytes(data)
