"""The simulator's vocabulary and its deterministic token function.

A token is one word followed by one space, so a text made of the first k tokens splits back
(``str.split``) into exactly k tokens; that is what lets a prefix continuation find its position.
The token at a position is a pure function of a 64-bit stream key and the position: a SplitMix64
finaliser over integers, cheap enough to call once per token for a thousand streams.
"""

from __future__ import annotations

import hashlib

_WORDS = (
    "the", "of", "and", "to", "in", "is", "it", "that", "for", "on", "with", "as", "was", "at",
    "by", "be", "this", "from", "or", "an", "are", "not", "have", "but", "had", "his", "they",
    "you", "were", "her", "she", "which", "their", "all", "one", "there", "been", "has", "will",
    "more", "would", "about", "if", "when", "what", "so", "can", "who", "no", "out", "up", "into",
    "them", "only", "some", "time", "could", "other", "than", "then", "its", "also", "two",
    "these", "may", "like", "first", "any", "my", "now", "such", "new", "just", "over", "most",
    "where", "after", "should", "way", "well", "being", "much", "many", "make", "through", "long",
    "back", "even", "before", "must", "years", "here", "year", "between", "both", "under", "never",
    "same", "while", "last", "might", "another", "great", "old", "those", "since", "without",
    "again", "right", "three", "against", "world", "down", "still", "country", "house", "end",
    "state", "course", "during", "small", "found", "part", "high", "every", "light", "water",
    "place", "line", "point", "city", "river", "stone", "cloud", "garden", "market", "signal",
    "harbor", "window", "bridge", "forest", "valley", "engine", "silver", "copper", "orange",
    "yellow", "purple", "simple", "quiet", "rapid", "steady", "gentle", "bright", "narrow",
    "broad", "ancient", "modern", "careful", "honest", "clever", "amber", "basalt", "cedar",
    "delta", "ember", "falcon", "glacier", "horizon", "island", "jasper", "kernel", "lantern",
    "meadow", "nectar", "orbit", "prairie", "quartz", "rocket", "summit", "thunder", "umbra",
    "vector", "willow", "zenith",
)

WORDS: tuple[str, ...] = tuple(dict.fromkeys(_WORDS))  # drop duplicates, keep order
TOKENS: tuple[str, ...] = tuple(w + " " for w in WORDS)

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def mix64(x: int) -> int:
    """SplitMix64 finaliser: a well-spread 64-bit hash of a 64-bit integer."""
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & _MASK
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB & _MASK
    return x ^ (x >> 31)


def stream_key(*parts: str) -> int:
    """A 64-bit key for a token stream, from text parts (model, prompt, seed)."""
    h = hashlib.blake2b(digest_size=8)
    for part in parts:
        data = part.encode("utf-8", "surrogatepass")
        # Length-prefix every part so ("ab", "c") and ("a", "bc") give different keys.
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return int.from_bytes(h.digest(), "little")


def token_at(key: int, position: int) -> str:
    """Text of the token at ``position`` of the stream ``key``."""
    return TOKENS[mix64((key + position * _GOLDEN) & _MASK) % len(TOKENS)]


def derive(key: int, salt: int) -> int:
    """A second, independent stream or value from the same key (reasoning stream, length)."""
    return mix64(key ^ mix64(salt))


def count_tokens(text: str) -> int:
    """How many simulator tokens a text holds: its whitespace-separated words."""
    return len(text.split())
