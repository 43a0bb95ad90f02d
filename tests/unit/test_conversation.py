"""Conversations: the history budget, the follow-up search query, and what reaches the prompt (no server)."""
import pytest

from loradex.conversation import Conversation, fit, into_messages, key_terms, search_query, split_messages
from loradex.engine.echo import EchoEngine
from loradex.errors import InputTooLong, QueryError
from loradex.ingest.ingest import ingest
from loradex.pipeline import answer, prepare
from loradex.project import open_project

from .test_ingest import DOCS
from .test_pipeline import ROUTED

BIKE = [{"role": "system", "content": "Answer in one sentence."},
        {"role": "user", "content": "My bike was stolen. How do I report the theft?"},
        {"role": "assistant", "content": "Call the police within 24 hours [1]."},
        {"role": "user", "content": "And how long do I have?"}]


def test_split_messages_takes_instructions_history_and_question():
    c = split_messages(BIKE)
    assert c.question == "And how long do I have?" and c.instructions == "Answer in one sentence."
    assert c.history == ({"role": "user", "content": "My bike was stolen. How do I report the theft?"},
                         {"role": "assistant", "content": "Call the police within 24 hours."})  # old [1] removed


@pytest.mark.parametrize("messages,what", [
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}], "an assistant message"),
    ([{"role": "system", "content": "be brief"}], "no user message"),
    ([{"role": "user", "content": "  "}], "a user message without text")])
def test_a_conversation_must_end_with_a_user_message(messages, what):
    with pytest.raises(QueryError, match=what):
        split_messages(messages)


def test_turns_of_one_role_are_joined_and_developer_messages_are_instructions():
    c = split_messages([{"role": "developer", "content": "Be formal."}, {"role": "user", "content": "one"},
                        {"role": "user", "content": "two"}, {"role": "system", "content": "Cite."},
                        {"role": "user", "content": "three"}])
    assert c.instructions == "Be formal.\n\nCite."
    assert c.history == ({"role": "user", "content": "one\n\ntwo"},)


def test_fit_drops_the_oldest_exchanges_first_and_counts_them():
    turns = []
    for i in range(5):  # five exchanges of 10 + 10 characters
        turns += [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}.."}]
    c = Conversation.of("final?", turns, "be kind")  # 6 + 7 characters
    kept = fit(c, 13 + 2 * 20)  # room for exactly the two newest exchanges
    assert [t["content"] for t in kept.history] == ["question 3", "answer 3..", "question 4", "answer 4.."]
    assert kept.dropped == 6 and kept.question == "final?" and kept.instructions == "be kind"
    assert fit(c, 13 + 2 * 20 - 1).dropped == 8  # one character less: the older of the two goes too
    assert fit(c, 10_000).history == c.history
    with pytest.raises(InputTooLong, match="limit is 12"):  # a QueryError; the server answers 413
        fit(c, 12)


def test_follow_up_is_searched_with_the_earlier_user_turns_key_terms():
    c = split_messages(BIKE)
    assert search_query(c) == "And how long do I have? bike stolen report theft"
    standalone = Conversation.of("How are monthly premiums collected by direct debit?", c.history)
    assert search_query(standalone) == standalone.question  # a complete new question is searched alone
    pronoun = Conversation.of("Is there an excess on it?", ({"role": "user", "content": "comprehensive motor cover"},))
    assert search_query(pronoun) == "Is there an excess on it? comprehensive motor cover"
    assert search_query(Conversation.of("What about fire?")) == "What about fire?"  # nothing earlier to add


def test_key_terms_keep_numbers_and_drop_stop_words():
    assert key_terms("What is the excess on my 2024 policy, please?") == ["excess", "2024", "policy"]


def test_instructions_open_the_last_user_message_and_history_sits_between():
    c = split_messages(BIKE)
    msgs = into_messages([{"role": "system", "content": "SYS"}, {"role": "user", "content": "Sources: ..."}], c)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert msgs[0]["content"] == "SYS"
    assert msgs[-1]["content"] == "Instructions:\nAnswer in one sentence.\n\nSources: ..."


@pytest.fixture
def recorded(project_dir):
    class Recorder(EchoEngine):
        def __init__(self):
            super().__init__()
            self.requests = []

        def generate(self, requests, cancel=()):
            self.requests.extend(requests)
            return super().generate(requests, cancel)

    engine = Recorder()
    proj = open_project(project_dir(DOCS, ROUTED + "server: {max_input_chars: 200}\n"), engine=engine)
    ingest(proj)
    return proj, engine


def test_answer_routes_the_follow_up_with_its_conversation_and_prompts_the_history(recorded):
    proj, engine = recorded
    c = split_messages(BIKE)
    a = answer(proj, c.question, history=c.history, instructions=c.instructions)
    assert a.route.domain == "claims" and a.sources[0].file == "docs/claims/theft.txt"
    msgs = engine.requests[-1].messages
    assert msgs[1] == {"role": "user", "content": "My bike was stolen. How do I report the theft?"}
    assert msgs[2] == {"role": "assistant", "content": "Call the police within 24 hours."}
    assert msgs[3]["content"].startswith("Instructions:\nAnswer in one sentence.\n\nSources:")
    assert msgs[3]["content"].endswith("Question: And how long do I have?")


def test_prepare_keeps_the_prompt_within_the_budget(recorded):
    proj, _ = recorded
    long_turns = [{"role": "user", "content": "x" * 90}, {"role": "assistant", "content": "y" * 90},
                  {"role": "user", "content": "police theft"}, {"role": "assistant", "content": "24 hours"}]
    p = prepare(proj, "and then?", history=long_turns, instructions="be brief", route=False)
    assert p.conversation.dropped == 2 and len(p.conversation.history) == 2  # 9 + 8 + 20 fit in 200, +180 do not
    assert [m["content"] for m in p.request.messages[1:3]] == ["police theft", "24 hours"]
    assert p.query == "and then? police theft"
    with pytest.raises(QueryError, match="server.max_input_chars"):
        prepare(proj, "q" * 201)
