"""The wire protocol's version: the N of the proto package ``deepscope.vN`` (not a package version).

Clients send it in the ``x-deepscope-protocol`` metadata key; servers refuse another one with
FAILED_PRECONDITION (reason ``PROTOCOL_VERSION_MISMATCH``), except in ``GetServerInfo``.
"""

PROTOCOL_KEY = "x-deepscope-protocol"
PROTOCOL_VERSION = 1
