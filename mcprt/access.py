"""Per-document roles under `--auth jwt`: owner, editor, viewer, held as members (`user:<id>`,
`group:<name>` from the token's groups claim, `*` for everyone); a user's own entry wins over its groups'
(the highest of them), which win over `*`. `--auth open` keeps everyone an editor of everything.

A document with no members at all (one from before roles, or made by an operator) is open to every
verified user as an editor until someone gives it members. Changes reach live sockets at once: through
`on_change` listeners (the socket side sends `permissions`, or closes with 4013 when reading is gone).
"""

from __future__ import annotations

import re
from typing import Callable, Protocol

from .protocol import AppError, ErrorCode
from .storage.base import Readable, Store, member_removed, member_set, owner_claimed

ROLES = ("viewer", "editor", "owner")
RANK = {role: rank for rank, role in enumerate(ROLES)}
EVERYONE = "*"
_MEMBER = re.compile(r"^(\*|(user|group):[^\x00-\x1f\x7f]{1,128})$")


def user_member(user_id: str) -> str:
    return f"user:{user_id}"


class Principal(Protocol):
    """Who asks: a session, or the Author of a request."""
    user_id: str
    groups: tuple[str, ...]
    grants: tuple[tuple[str, str], ...] | None


def role_of(members: dict[str, str], user_id: str, groups: tuple[str, ...] = (), open_when_unset: bool = True) -> str | None:
    """The role `members` give a user: their own entry, else the highest of their groups', else
    everyone's, else none. A document with no members gives everyone editor, unless `open_when_unset`
    is False (roles come from tokens, and a document nobody named is closed)."""
    if not members:
        return "editor" if open_when_unset else None
    own = members.get(user_member(user_id))
    if own is not None:
        return own
    grouped = [members[f"group:{g}"] for g in groups if f"group:{g}" in members]
    if grouped:
        return max(grouped, key=RANK.__getitem__)
    return members.get(EVERYONE)


def granted(grants: tuple[tuple[str, str], ...], document_id: str) -> str | None:
    """The role a token's grants give a document: its exact id, else the longest matching `prefix*`
    (`*` alone is the empty prefix), else none."""
    best, best_length = None, -1
    for pattern, role in grants:
        if pattern == document_id:
            return role
        if pattern.endswith("*") and document_id.startswith(pattern[:-1]) and len(pattern) > best_length:
            best, best_length = role, len(pattern)
    return best


def highest(*roles: str | None) -> str | None:
    present = [r for r in roles if r is not None]
    return max(present, key=RANK.__getitem__) if present else None


def at_least(role: str | None, needed: str) -> bool:
    return role is not None and RANK[role] >= RANK[needed]


class Access:
    """Members per document, cached (the store holds them), and the checks every entry point makes.

    With `token_roles` (--jwt-roles-claim) a session's grants add to what members give, never take
    away, and a document without members gives nothing by default."""

    def __init__(self, store: Store, enforced: bool, token_roles: bool = False):
        self.store, self.enforced, self.token_roles = store, enforced, token_roles
        self._members: dict[str, dict[str, str]] = {}
        self.on_change: list[Callable[[str], None]] = []  # document id: its live sockets look again

    async def members(self, document_id: str) -> dict[str, str]:
        found = self._members.get(document_id)
        if found is None:
            found = self._members[document_id] = await self.store.members(document_id)
        return found

    def forget(self, document_id: str) -> None:
        """Drop the cached members (another node changed them)."""
        self._members.pop(document_id, None)

    async def role(self, document_id: str, who: Principal, operator: bool = False) -> str | None:
        if not self.enforced:
            return "editor"
        if operator:
            return "owner"
        members = role_of(await self.members(document_id), who.user_id, who.groups, not self.token_roles)
        return highest(members, granted(who.grants, document_id) if who.grants else None)

    async def require(self, document_id: str, who: Principal, needed: str, operator: bool = False) -> str:
        """The caller's role, or UNAUTHORIZED (403) naming the role needed. Without read access the
        document is NOT_FOUND: its existence is not told to someone who may not read it."""
        role = await self.role(document_id, who, operator)
        if role is None:
            raise AppError(ErrorCode.NOT_FOUND, f"no document {document_id!r}", {"document_id": document_id})
        if not at_least(role, needed):
            raise AppError(ErrorCode.UNAUTHORIZED, f"this needs the {needed} role on {document_id!r}; you are "
                           f"a {role}", {"document_id": document_id, "role": role, "needed": needed}, status=403)
        return role

    def readable(self, who: Principal, operator: bool = False) -> Readable | None:
        """What a listing keeps for `who` (None: everything): the same rule as `role`, as a filter."""
        if not self.enforced or operator:
            return None
        grants = who.grants or ()
        if any(pattern == "*" for pattern, _ in grants):
            return None
        return Readable(members=(user_member(who.user_id), *(f"group:{g}" for g in who.groups), EVERYONE),
                        ids=tuple(p for p, _ in grants if not p.endswith("*")),
                        prefixes=tuple(p[:-1] for p, _ in grants if p.endswith("*")),
                        unset=not self.token_roles)

    def owner_write(self, document_id: str, user_id: str):
        """The write that makes a document's creator its owner, committed with the document (a creator
        that lost a race for the id owns nothing), or None."""
        if not self.enforced:
            return None
        self._members.pop(document_id, None)  # read again once it committed
        return owner_claimed(document_id, user_member(user_id))

    async def set(self, document_id: str, member: str, role: str | None) -> dict[str, str]:
        """Give `member` a role (None: remove it); the members after. The last owner stays."""
        if not _MEMBER.match(member):
            raise AppError(ErrorCode.INVALID_MESSAGE, "a member is user:<id>, group:<name> or *", {"pointer": "/member"})
        if role is not None and role not in RANK:
            raise AppError(ErrorCode.INVALID_MESSAGE, f"role must be one of {', '.join(ROLES)}", {"pointer": "/role"})
        members = dict(await self.members(document_id))
        if members.get(member) == "owner" and role != "owner" and list(members.values()).count("owner") == 1:
            raise AppError(ErrorCode.CONFLICT, "a document keeps at least one owner; add another first",
                           {"member": member})
        if role is None:
            await self.store.submit(member_removed(document_id, member))
            members.pop(member, None)
        else:
            await self.store.submit(member_set(document_id, member, role))
            members[member] = role
        self._members[document_id] = members
        for listener in list(self.on_change):
            listener(document_id)
        return members
