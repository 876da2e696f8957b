"""Judges of error-bounded caching (llmcache.proxy.semantic.judge): the answer judge and the LLM judge."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from llmcache.proxy.semantic import judge as judges

J = judges.AnswerJudge()


@pytest.mark.parametrize("fresh, cached", [
    ("Canberra is the capital of Australia.", "canberra is the capital of australia"),
    ("The capital of Australia is Canberra, not Sydney.", "Australia's capital is Canberra, not Sydney."),
    ("Use `git stash` to shelve your changes, then `git stash pop` to bring them back.",
     "Run `git stash` to shelve the changes and `git stash pop` to bring them back later."),
])
def test_equivalent_answers_are_right(fresh: str, cached: str) -> None:
    assert J.same(fresh, cached) is True


@pytest.mark.parametrize("fresh, cached, why", [
    ("Water boils at 212°F at sea level.", "Water freezes at 32°F at sea level.", "numbers"),
    ("Pride and Prejudice was written by Jane Austen.", "Jane Eyre was written by Charlotte Brontë.", "names"),
    ("Yes, you can freeze cooked rice.", "No, you can freeze cooked rice.", "yes/no"),
    ("You should restart the router first.", "You should not restart the router first.", "negation"),
    ("Open Settings, then switch dark mode on.", "Open Settings, then switch dark mode off.", "opposites"),
    ("Paris.", "Paris is the capital and largest city of France, on the Seine, home to about two million "
               "people, with the Louvre and the Eiffel Tower among its most visited sights and a metro "
               "network that reaches nearly every district of the city and its inner suburbs.", "length class"),
    ("Soak the beans overnight and simmer them for an hour.",
     "Preheat the oven and bake the bread until golden brown.", "content"),
])
def test_answers_that_differ_in_substance_are_wrong(fresh: str, cached: str, why: str) -> None:
    assert J.same(fresh, cached) is False, why


def test_empty_answers_are_no_judgement() -> None:
    assert J.same("", "Something.") is None and J.same("Something.", "  ") is None


def test_answer_text_reads_what_a_client_reads() -> None:
    chat = {"choices": [{"message": {"role": "assistant", "content": "Hello."}}]}
    tools = {"choices": [{"message": {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}}]}
    assert judges.answer_text("/v1/chat/completions", chat) == "Hello."
    assert '"name": "f"' in (judges.answer_text("/v1/chat/completions", tools) or "")
    assert judges.answer_text("/v1/completions", {"choices": [{"text": "Hi"}]}) == "Hi"
    assert judges.answer_text("/v1/chat/completions", {"choices": []}) is None


# --------------------------------------------------------------------------- the LLM judge over HTTP


class ScriptedJudgeServer:
    """An OpenAI-compatible endpoint answering the next scripted word (or status) and keeping what it was asked."""

    def __init__(self) -> None:
        self.script: list[str | int] = []
        self.bodies: list[dict[str, Any]] = []
        self.auth: list[str | None] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.json())
        self.auth.append(request.headers.get("Authorization"))
        step = self.script.pop(0)
        if isinstance(step, int):
            return web.json_response({"error": {"message": "down"}}, status=step)
        return web.json_response({"choices": [{"index": 0, "message": {"role": "assistant", "content": step}}]})


@pytest.fixture
async def judge_server() -> AsyncIterator[tuple[ScriptedJudgeServer, str]]:
    scripted = ScriptedJudgeServer()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", scripted.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield scripted, str(server.make_url("/v1"))
    await server.close()


async def test_llm_judge_asks_yes_no_with_two_tokens(judge_server: tuple[ScriptedJudgeServer, str]) -> None:
    scripted, url = judge_server
    judge = judges.LLMJudge(url=url, model="tiny-judge", api_key="sk-judge")
    try:
        scripted.script = ["Yes."]
        assert await judge.judge(request="Who wrote Emma?", fresh="Jane Austen.", cached="Jane Austen wrote it.")
        body = scripted.bodies[0]
        assert body["max_tokens"] == 2 and body["temperature"] == 0 and body["model"] == "tiny-judge"
        prompt = body["messages"][-1]["content"]
        assert "Who wrote Emma?" in prompt and prompt.index("Reference answer") < prompt.index("Cached answer")
        assert scripted.auth == ["Bearer sk-judge"] and judge.num_calls == 1
    finally:
        await judge.close()


async def test_llm_judge_checks_a_no_with_the_answers_swapped(judge_server: tuple[ScriptedJudgeServer, str]) -> None:
    scripted, url = judge_server
    judge = judges.LLMJudge(url=url, model="m", votes=3)
    try:
        scripted.script = ["no", "no"]
        assert await judge.judge(request="q", fresh="a", cached="b") is False
        second = scripted.bodies[1]["messages"][-1]["content"]
        assert second.index("Cached answer") < second.index("Reference answer")
        scripted.script = ["no", "yes", "yes"]  # a slip outvoted
        assert await judge.judge(request="q", fresh="a", cached="b") is True
        scripted.script = ["no", "yes", "no"]
        assert await judge.judge(request="q", fresh="a", cached="b") is False
        assert judge.num_calls == 8
        scripted.script = ["maybe"]
        assert await judge.judge(request="q", fresh="a", cached="b") is None
    finally:
        await judge.close()


async def test_llm_judge_errors_raise_for_the_caller_to_fail_open(
        judge_server: tuple[ScriptedJudgeServer, str]) -> None:
    scripted, url = judge_server
    judge = judges.LLMJudge(url=url, model="m", votes=1)
    try:
        scripted.script = [500]
        with pytest.raises(judges.JudgeUnavailable, match="HTTP 500"):
            await judge.judge(request="q", fresh="a", cached="b")
    finally:
        await judge.close()
