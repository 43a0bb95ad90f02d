"""A chat conversation in; the retrieval and routing query, the kept history and the prompt's turns out.

A conversation is the question (its last user message), the earlier user and assistant turns, and the client's
instructions (its `system` and `developer` messages). Three rules, all without a model call:

- **The budget** (`fit`): the question, the instructions and the kept turns together hold at most `budget`
  characters (the server passes `server.max_input_chars`, 8000 by default, about 2,000 tokens of English).
  The question and the instructions must fit whole (InputTooLong otherwise); then earlier exchanges (a user
  turn with the assistant's reply) are kept newest first until the next one would not fit, and it and every
  older one are dropped. Sources are bounded apart (`answer.k` passages of at most `answer.passage_chars`),
  so the whole prompt stays bounded whatever the client sends.
- **The search query** (`search_query`): retrieval and routing see the question alone unless it is a
  follow-up: it refers back (a word such as "it", "that", "they", "there", or it opens with "and", "what
  about", "how about", "also") or has fewer than three key terms. A follow-up's query is the question
  followed by up to `MAX_TERMS` key terms of the earlier user turns, newest turn first, that the question
  lacks. Key terms are words that are not stop words (`loradex.cite.STOP` and a few chat words); numbers
  count. Assistant turns never feed the query: they are model text, not what the user asked.
- **The prompt** (`into_messages`): the serving system message stays first and unchanged (adapters are
  trained under it), the kept turns follow as user and assistant messages, and the last user message holds
  the client's instructions (under "Instructions:"), then the sources and the question. Citation marks are
  removed from earlier assistant turns: their numbers pointed at the sources of an earlier prompt.

Deliberately not here: the prompt's wording (`loradex.prompt`) and the roles a client may send (the server
refuses tool and function messages before a Conversation is built).
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from .cite import CITATION, STOP
from .errors import InputTooLong, QueryError

__all__ = ["MAX_TERMS", "Conversation", "check_size", "fit", "into_messages", "key_terms", "search_query",
           "split_messages"]

MAX_TERMS = 8  # key terms of earlier turns added to a follow-up's query: enough context, never the main topic
INSTRUCTION_ROLES = frozenset({"system", "developer"})
_CHAT_STOP = frozenset("""about tell me please know need want get got ok okay thanks thank hi hello my mine us
much many more else one ones same again just still now then yes no sure""".split())
_REFERS_BACK = frozenset("""it its itself that this those these they them their theirs there he she him his her
one ones same such former latter above else""".split())
_OPENERS = ("and ", "also ", "what about ", "how about ", "what if ", "but ", "or ")
_WORD = re.compile(r"[^\W_]+(?:['\u2019-][^\W_]+)*")


@dataclass(frozen=True)
class Conversation:
    """One conversation: `question` (the last user message), `history` (earlier turns as `{"role": "user" |
    "assistant", "content": str}`, oldest first, roles alternating), `instructions` (the client's system and
    developer messages joined by blank lines, "" when none) and `dropped` (earlier turns `fit` left out)."""

    question: str
    history: tuple[dict, ...] = ()
    instructions: str = ""
    dropped: int = 0

    @classmethod
    def of(cls, question: str, history: Iterable[dict] = (), instructions: str = "") -> Conversation:
        """A Conversation from raw turns: empty turns skipped, consecutive turns of one role joined by a blank
        line (chat templates that insist on alternating roles accept the result), citation marks removed
        from assistant turns. Raises QueryError for a role other than user or assistant."""
        turns: list[dict] = []
        for t in history:
            role, text = t.get("role"), str(t.get("content") or "").strip()
            if role not in ("user", "assistant"):
                raise QueryError(f"a history turn has role {role!r}; earlier turns are 'user' or 'assistant'")
            if role == "assistant":
                text = CITATION.sub("", text).strip()
            if not text:
                continue
            if turns and turns[-1]["role"] == role:
                turns[-1] = {"role": role, "content": f"{turns[-1]['content']}\n\n{text}"}
            else:
                turns.append({"role": role, "content": text})
        return cls(question.strip(), tuple(turns), instructions.strip())


def split_messages(messages: Sequence[dict]) -> Conversation:
    """A Conversation from OpenAI-style chat messages (`role`, text `content`): system and developer messages,
    wherever they are, are the instructions; the last message must be a user message with text (QueryError
    otherwise, naming what came last); the user and assistant messages before it are the history."""
    instructions = [str(m.get("content") or "").strip() for m in messages if m.get("role") in INSTRUCTION_ROLES]
    turns = [m for m in messages if m.get("role") not in INSTRUCTION_ROLES]
    last = turns[-1] if turns else None
    if last is None or last.get("role") != "user" or not str(last.get("content") or "").strip():
        what = ("no user message" if last is None else "a user message without text" if last.get("role") == "user"
                else f"an {last.get('role')} message" if str(last.get("role"))[:1] in "aeiou"
                else f"a {last.get('role')} message")
        raise QueryError(f"the conversation must end with a user message that has text; it ends with {what}")
    return Conversation.of(str(last["content"]), turns[:-1], "\n\n".join(i for i in instructions if i))


def _exchanges(history: Sequence[dict]) -> list[list[dict]]:
    """The turns grouped as exchanges, each opening with a user turn (a leading assistant turn stands alone)."""
    out: list[list[dict]] = []
    for t in history:
        if t["role"] == "user" or not out:
            out.append([t])
        else:
            out[-1].append(t)
    return out


def check_size(conversation: Conversation, budget: int) -> int:
    """The characters the question and the instructions take (earlier turns can be dropped to fit; these two
    cannot be). Raises InputTooLong when they exceed `budget`."""
    used = len(conversation.question) + len(conversation.instructions)
    if used > budget:
        raise InputTooLong(f"the question and the system message are {used} characters; the limit is {budget} "
                           "(server.max_input_chars): shorten them")
    return used


def fit(conversation: Conversation, budget: int) -> Conversation:
    """`conversation` with the earlier exchanges that fit in `budget` characters (see the module doc): the newest
    kept, every exchange older than the first that does not fit dropped. Raises InputTooLong when the question
    and the instructions alone exceed `budget`."""
    used = check_size(conversation, budget)
    kept: list[list[dict]] = []
    for exchange in reversed(_exchanges(conversation.history)):
        size = sum(len(t["content"]) for t in exchange)
        if used + size > budget:
            break
        kept.insert(0, exchange)
        used += size
    history = tuple(t for exchange in kept for t in exchange)
    return replace(conversation, history=history,
                   dropped=conversation.dropped + len(conversation.history) - len(history))


def key_terms(text: str) -> list[str]:
    """The words of `text` that carry its topic, lower-cased, in order, each once: not stop words, numbers kept."""
    words = (w.lower() for w in _WORD.findall(text))
    return list(dict.fromkeys(w for w in words if w not in STOP and w not in _CHAT_STOP and (len(w) > 1
                                                                                            or w.isdigit())))


def _is_follow_up(question: str, terms: Sequence[str]) -> bool:
    lowered = question.lower().lstrip()
    words = {w.lower() for w in _WORD.findall(question)}
    return bool(words & _REFERS_BACK) or lowered.startswith(_OPENERS) or len(terms) < 3


def search_query(conversation: Conversation) -> str:
    """What retrieval and routing search for: the question, plus, for a follow-up, up to `MAX_TERMS` key terms
    of earlier user turns (newest first) that the question lacks (see the module doc)."""
    question = conversation.question
    earlier = [t["content"] for t in reversed(conversation.history) if t["role"] == "user"]
    terms = key_terms(question)
    if not earlier or not _is_follow_up(question, terms):
        return question
    have = set(terms)
    extra = [w for text in earlier for w in key_terms(text) if w not in have]
    added = list(dict.fromkeys(extra))[:MAX_TERMS]
    return f"{question} {' '.join(added)}" if added else question


def into_messages(base: Sequence[dict], conversation: Conversation) -> tuple[dict, ...]:
    """The prompt's messages: `base` is `[system, user]` as `loradex.prompt` builds them for the question
    alone; the kept history goes between them and the instructions open the last user message."""
    system, user = base[0], base[-1]
    content = user["content"]
    if conversation.instructions:
        content = f"Instructions:\n{conversation.instructions}\n\n{content}"
    return (system, *conversation.history, {**user, "content": content})
