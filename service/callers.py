"""Who asks, inside a tenant: the caller a session is made for, and checked against.

A bearer token names a tenant.  One GPT Action key is shared by every ChatGPT user of
that action, so inside a tenant a session belongs to the caller it was made for: a
ChatGPT conversation (the ``openai-conversation-id`` header ChatGPT sends), or the
tenant itself when a request names none.  A per-user identity (a JWT's ``sub``) is a
third kind of owner, ``user:<sub>``, and takes precedence over the conversation.

The registry compares the whole caller on every lookup, so a session of another
caller answers exactly as an id that never existed.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.errors import InvalidRequest

CONVERSATION_HEADER = "openai-conversation-id"
MAX_CONVERSATION_CHARS = 256


@dataclass(frozen=True)
class Caller:
    tenant: str
    # None: the tenant itself, which sees only the sessions made without an owner.
    owner: str | None = None


def caller_for(tenant: str, conversation: str | None) -> Caller:
    """The caller a request with this ``openai-conversation-id`` value (or none) is."""
    if not conversation:
        return Caller(tenant)
    if len(conversation) > MAX_CONVERSATION_CHARS:
        raise InvalidRequest(
            f"header {CONVERSATION_HEADER}: longer than {MAX_CONVERSATION_CHARS} characters",
            f"Send a conversation id of at most {MAX_CONVERSATION_CHARS} characters.",
        )
    # Prefixed, so no conversation id can name another kind of owner.
    return Caller(tenant, f"conversation:{conversation}")
