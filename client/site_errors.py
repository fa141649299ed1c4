"""What an agent's failure says once it leaves the site.

Sites join because their data never leaves them, and an error message is data too: a
corrupt image at `7/patient-4711-jane-doe-positive.png` once reached the conductor's log
and the SuperLink's database with its path, which names the class folder (its label)
and the file. So an error leaving the site is a `SiteError`: what kind of failure it
was, in words that hold nothing of the site, and the first 12 hex digits of the SHA-256
of the whole error; the whole error goes to this agent's own log under that hash, where
the site's operator finds it.
"""

from __future__ import annotations

import hashlib
import logging

from dkt.proto.relay_client import RelayError

log = logging.getLogger("dkt.agent")


class SiteError(RuntimeError):
    """An agent's failure as the conductor sees it: a kind and a hash, nothing of the site."""

    def __init__(self, kind: str, digest: str) -> None:
        super().__init__(f"{kind} (error {digest}; the detail is in this agent's log)")
        self.kind = kind
        self.digest = digest


def site_error(err: BaseException) -> SiteError:
    """`err` as it may leave the site; logs the whole of it here, with its hash."""
    detail = f"{type(err).__name__}: {err}"
    digest = hashlib.sha256(detail.encode()).hexdigest()[:12]
    log.error("agent step failed (error %s): %s", digest, detail, exc_info=err)
    return SiteError(_kind(err), digest)


def _kind(err: BaseException) -> str:
    """What kind of failure `err` is, in words that name nothing of the site."""
    if isinstance(err, RelayError):
        return f"a relay call failed ({err.code.name})"
    if isinstance(err, FileNotFoundError):
        return "a file or folder this agent needs is missing"
    if isinstance(err, OSError):
        return "a file of this site could not be read"
    if isinstance(err, MemoryError):
        return "this agent ran out of memory"
    if isinstance(err, ValueError):
        return "this site's data or the run's configuration was refused"
    return f"the agent's step failed ({type(err).__name__})"
