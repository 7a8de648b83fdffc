"""Errors raised by the byte parsers.

Tree::

    ParseError
     ├── MalformedPacket   the bytes break the protocol: count the packet and skip it
     └── Truncated         the message continues past the bytes we have: wait for more
                           (TCP stream start, QUIC CRYPTO frames); on a datagram it is malformed
"""

from __future__ import annotations


class ParseError(ValueError):
    """Base class of the parsers' errors; the message is a short reason, never packet bytes."""


class MalformedPacket(ParseError):
    """The bytes do not follow the protocol they claim to carry."""


class Truncated(ParseError):
    """The message is longer than the bytes available so far."""
