"""The paged KV cache: a fixed number of blocks, each holding ``block_size`` tokens' keys/values.

Like vLLM's block manager, a sequence holds ``ceil(tokens / block_size)`` blocks for the tokens
computed so far and grows a block at a time; blocks return to the pool when the sequence
finishes, is aborted or is preempted. (Prefix caching is not modelled: load tests use unique
prompts, as they must on a real vLLM too.)
"""

from __future__ import annotations


class KVCacheFull(Exception):
    """Raised when an allocation is attempted without checking :meth:`BlockPool.can_grow`."""


class BlockPool:
    """Free-block accounting per sequence id."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._held: dict[str, int] = {}
        self._used = 0

    def blocks_for(self, tokens: int) -> int:
        """Blocks needed to hold ``tokens`` tokens."""
        return -(-tokens // self.block_size)

    def held(self, seq_id: str) -> int:
        return self._held.get(seq_id, 0)

    def extra_blocks(self, seq_id: str, tokens: int) -> int:
        """Blocks ``seq_id`` must add to hold ``tokens`` tokens in total."""
        return max(0, self.blocks_for(tokens) - self.held(seq_id))

    def can_grow(self, seq_id: str, tokens: int) -> bool:
        return self.extra_blocks(seq_id, tokens) <= self.free_blocks

    def grow(self, seq_id: str, tokens: int) -> None:
        """Hold enough blocks for ``tokens`` tokens in total."""
        extra = self.extra_blocks(seq_id, tokens)
        if extra > self.free_blocks:
            raise KVCacheFull(f"{seq_id} needs {extra} blocks, {self.free_blocks} free")
        if extra:
            self._held[seq_id] = self.held(seq_id) + extra
            self._used += extra

    def free(self, seq_id: str) -> None:
        """Return every block of ``seq_id`` (a no-op if it holds none)."""
        self._used -= self._held.pop(seq_id, 0)

    @property
    def free_blocks(self) -> int:
        return self.num_blocks - self._used

    @property
    def used_blocks(self) -> int:
        return self._used

    @property
    def usage(self) -> float:
        """Fraction of blocks in use, as vLLM's ``kv_cache_usage_perc`` reports it (0..1)."""
        return self._used / self.num_blocks
