"""Avatars: stored once on disk, held with their encoded reference features per replica.

An avatar is :class:`dinet_platform.runtime.avatar.Avatar` (a face video prepared for a
model's mouth size: crop track, five references, masked sources, paste-back), stored under
the avatar directory as ``<id>/`` with :meth:`Avatar.save`. Ids are minted here (32 hex
characters) and every lookup checks that form and that the resolved path stays inside the
storage directory: an id from a request can never name another file.

:class:`AvatarCache` holds, per (model, avatar), the loaded avatar and its encoded reference
features, least recently used evicted first beyond ``max_bytes``. A miss (a new replica, a
swapped model, an evicted avatar) rebuilds both from the stored avatar, so a restart loses
nothing.
"""

from __future__ import annotations

import json
import re
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from dinet_platform.runtime.avatar import META_FILE, Avatar, remove_avatar
from dinet_platform.runtime.engine import AvatarFeatures

AVATAR_ID = re.compile(r"^[0-9a-f]{32}$")


class AvatarNotFound(KeyError):
    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "avatar not found"


class AvatarStore:
    """Avatars on disk under ``root`` (shared storage when replicas run on several nodes)."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()

    def path(self, avatar_id: str) -> Path:
        """The avatar's directory; :class:`AvatarNotFound` for anything that is not an id this
        store minted (so no request can point outside ``root``)."""
        if not isinstance(avatar_id, str) or not AVATAR_ID.match(avatar_id):
            raise AvatarNotFound(f"unknown avatar id {avatar_id!r:.80}")
        path = (self.root / avatar_id).resolve()
        if path.parent != self.root:
            raise AvatarNotFound(f"unknown avatar id {avatar_id!r}")
        return path

    def exists(self, avatar_id: str) -> bool:
        try:
            return (self.path(avatar_id) / META_FILE).is_file()
        except AvatarNotFound:
            return False

    def _stored(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return [p for p in self.root.iterdir()
                if AVATAR_ID.match(p.name) and (p / META_FILE).is_file()]

    def ids(self) -> list[str]:
        """Ids of the avatars stored, oldest first."""
        return [p.name for p in sorted(self._stored(),
                                       key=lambda p: (p / META_FILE).stat().st_mtime)]

    def count(self) -> int:
        """Avatars stored."""
        return len(self._stored())

    def save(self, avatar: Avatar) -> str:
        avatar_id = uuid.uuid4().hex
        avatar.save(self.path(avatar_id))
        return avatar_id

    def load(self, avatar_id: str) -> Avatar:
        if not self.exists(avatar_id):
            raise AvatarNotFound(f"unknown avatar id {avatar_id!r:.80}")
        return Avatar.load(self.path(avatar_id))

    def meta(self, avatar_id: str) -> dict:
        if not self.exists(avatar_id):
            raise AvatarNotFound(f"unknown avatar id {avatar_id!r:.80}")
        return json.loads((self.path(avatar_id) / META_FILE).read_text())

    def delete(self, avatar_id: str) -> bool:
        if not self.exists(avatar_id):
            return False
        remove_avatar(self.path(avatar_id))
        return True


@dataclass
class CachedAvatar:
    avatar: Avatar
    features: AvatarFeatures

    @property
    def nbytes(self) -> int:
        frames = sum(frame.nbytes for frame in self.avatar.frames)
        return self.features.nbytes + self.avatar.crops.nbytes + frames


class AvatarCache:
    """Loaded avatars with their features per key, LRU-evicted beyond ``max_bytes`` (the entry
    just added always stays, even if it alone is larger)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, CachedAvatar] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> CachedAvatar | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return entry

    def put(self, key: str, entry: CachedAvatar) -> None:
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > 1 and self.nbytes > self.max_bytes:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def __contains__(self, key: str) -> bool:  # not a use: counts no hit or miss
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return sum(entry.nbytes for entry in self._entries.values())
