"""KV kept after requests finish, by blocks of tokens, shared by everything that starts with them.

As vLLM's hashed blocks: a prompt is cut into blocks of `block_tokens`, and
each block is known by its tokens and the block before it (a chain of
hashes), so a block means "these tokens, after exactly that prefix". Any
request whose prompt begins with cached blocks starts with their keys and
values copied into its KV row and prefills only the rest: the next turn of a
conversation, a regenerated or edited branch, two conversations that begin
with the same system prompt, the same document quoted into many prompts.

Bounded by bytes, least recently used first. A block is always used together
with the blocks before it, and a chain is touched from its end to its root, so
a root is never older than the blocks after it: eviction takes the ends of
chains first and never leaves a block unreachable while its prefix stays.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from inference.model.decoder import KVRow


@dataclass(eq=False)
class Block:
    key: int
    parent: int | None
    tokens: tuple[int, ...]
    data: torch.Tensor  # [layers, 2, kv_heads, block_tokens, head_dim]

    @property
    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size()


class PrefixCache:
    def __init__(self, block_tokens: int, capacity_bytes: int) -> None:
        if block_tokens < 1:
            raise ValueError(f"block_tokens={block_tokens}: expected at least 1")
        self.block_tokens = block_tokens
        self.capacity_bytes = capacity_bytes
        self.nbytes = 0
        self._blocks: OrderedDict[int, Block] = OrderedDict()  # least recently used first

    def __len__(self) -> int:
        return len(self._blocks)

    def match(self, tokens: Sequence[int], limit: int) -> list[Block]:
        """The cached blocks `tokens` begins with, covering at most `limit` tokens."""
        found: list[Block] = []
        parent: int | None = None
        size = self.block_tokens
        for start in range(0, limit - size + 1, size):
            chunk = tuple(tokens[start : start + size])
            block = self._blocks.get(hash((parent, chunk)))
            if block is None or block.parent != parent or block.tokens != chunk:
                break
            found.append(block)
            parent = block.key
        self._touch(found)
        return found

    def copy_into(self, blocks: Sequence[Block], row: KVRow) -> int:
        """Copy the blocks' keys and values to the start of `row`; how many positions they fill."""
        size = self.block_tokens
        for index, block in enumerate(blocks):
            row.data[:, :, :, index * size : (index + 1) * size].copy_(block.data)
        return len(blocks) * size

    def store(self, tokens: Sequence[int], row: KVRow, length: int) -> int:
        """Keep the whole blocks of `row`'s first `length` positions (holding `tokens`); how many were new."""
        size = self.block_tokens
        chain: list[Block] = []
        added = 0
        parent: int | None = None
        for start in range(0, length - size + 1, size):
            chunk = tuple(tokens[start : start + size])
            key = hash((parent, chunk))
            block = self._blocks.get(key)
            if block is not None and (block.parent != parent or block.tokens != chunk):
                break  # a hash collision: keep what is cached
            if block is None:
                data = row.data[:, :, :, start : start + size].clone()
                block = Block(key=key, parent=parent, tokens=chunk, data=data)
                if block.nbytes > self.capacity_bytes:
                    break
                self._blocks[key] = block
                self.nbytes += block.nbytes
                added += 1
            chain.append(block)
            parent = key
        self._touch(chain)
        while self.nbytes > self.capacity_bytes and self._blocks:
            _, evicted = self._blocks.popitem(last=False)
            self.nbytes -= evicted.nbytes
        return added

    def _touch(self, chain: list[Block]) -> None:
        for block in reversed(chain):
            if block.key in self._blocks:
                self._blocks.move_to_end(block.key)
