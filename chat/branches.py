"""A conversation's messages as a tree, in plain data: no queries here.

Each message points at the one it follows (`Message.parent`); regenerating a
reply or editing a question adds a sibling instead of replacing anything. A
branch is the path from a first message down to a leaf, and the conversation
remembers the leaf of the branch being viewed (`Conversation.current_leaf`).

A child is always stored after its parent, so along any branch ids grow: a
branch in id order is the conversation in the order it was said.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Tree:
    parents: dict[int, int | None]  # message id -> its parent's id

    @classmethod
    def of(cls, rows: Iterable[tuple[int, int | None]]) -> Tree:
        """From (id, parent_id) pairs."""
        return cls(dict(rows))

    def children(self) -> dict[int | None, list[int]]:
        """Each parent's children (None: the first messages), oldest first."""
        found: dict[int | None, list[int]] = {}
        for message_id in sorted(self.parents):
            found.setdefault(self.parents[message_id], []).append(message_id)
        return found

    def leaf(self, chosen: int | None) -> int | None:
        """The current branch's leaf: the chosen one if it is in the tree, else the newest message."""
        if chosen in self.parents:
            return chosen
        return max(self.parents, default=None)

    def path(self, leaf: int | None) -> list[int]:
        """The ids from the first message down to `leaf`, oldest first; [] for None."""
        path: list[int] = []
        while leaf is not None and leaf in self.parents and leaf not in path:
            path.append(leaf)
            leaf = self.parents[leaf]
        return path[::-1]

    def newest_leaf_under(self, message_id: int) -> int:
        """Where a branch switched to at `message_id` ends: down its newest replies."""
        children = self.children()
        while children.get(message_id):
            message_id = children[message_id][-1]
        return message_id

    def siblings(self, path: list[int]) -> dict[int, list[int]]:
        """For each message on `path`: its own and its alternatives' ids, oldest first."""
        children = self.children()
        return {message_id: children[self.parents[message_id]] for message_id in path}
