"""The OpenAI, vLLM and SGLang endpoints answer with the real servers' shapes and codes."""

from __future__ import annotations

import aiohttp
import pytest
from sim_http_helpers import post_json

CHAT = [{"role": "system", "content": "You are brief."}, {"role": "user", "content": "Say hello."}]


async def test_completion_has_vllm_shape(sim_server_factory, http: aiohttp.ClientSession) -> None:
    server = await sim_server_factory()
    status, body = await post_json(http, server.url + "/v1/completions", {"prompt": "Once upon a time",
                                                                         "max_tokens": 7})
    assert status == 200
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert body["model"] == server.config.model_name
    choice = body["choices"][0]
    assert choice["finish_reason"] == "length" and isinstance(choice["text"], str) and choice["text"]
    assert body["usage"]["completion_tokens"] == 7 and body["usage"]["prompt_tokens"] == 5
    assert body["usage"]["total_tokens"] == 12


async def test_chat_completion_has_vllm_shape(sim_server_factory, http: aiohttp.ClientSession) -> None:
    server = await sim_server_factory(default_max_tokens=9)
    status, body = await post_json(http, server.url + "/v1/chat/completions", {"messages": CHAT})
    assert status == 200
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    message = body["choices"][0]["message"]
    assert message["role"] == "assistant" and message["content"]
    assert body["choices"][0]["finish_reason"] == "stop"  # no max_tokens: the model "stopped"
    assert body["usage"]["completion_tokens"] == 9


async def test_models_health_and_sglang_info(sim_server_factory, http: aiohttp.ClientSession) -> None:
    server = await sim_server_factory(model="org/base", served_model_name=("base", "alias"),
                                      lora_modules=(), max_model_len=4096)
    async with http.get(server.url + "/health") as response:
        assert response.status == 200 and await response.read() == b""
    async with http.get(server.url + "/v1/models") as response:
        models = await response.json()
    assert [m["id"] for m in models["data"]] == ["base", "alias"]
    assert models["data"][0]["root"] == "org/base" and models["data"][0]["max_model_len"] == 4096
    for path in ("/model_info", "/get_model_info"):
        async with http.get(server.url + path) as response:
            assert (await response.json())["model_path"] == "org/base"
    async with http.get(server.url + "/server_info") as response:
        info = await response.json()
    assert info["model_path"] == "org/base" and info["port"] == server.port and info["page_size"] == 16


async def test_tokenize_and_render_agree_with_what_the_engine_counts(sim_server_factory,
                                                                     http: aiohttp.ClientSession) -> None:
    server = await sim_server_factory()
    url = server.url
    _, tokenized = await post_json(http, url + "/tokenize", {"prompt": "Hello there, world"})
    assert set(tokenized) == {"count", "max_model_len", "tokens", "token_strs"}
    assert tokenized["count"] == len(tokenized["tokens"]) and tokenized["token_strs"] is None
    _, completion = await post_json(http, url + "/v1/completions", {"prompt": "Hello there, world",
                                                                  "max_tokens": 1})
    assert completion["usage"]["prompt_tokens"] == tokenized["count"]

    status, rendered = await post_json(http, url + "/v1/completions/render", {"prompt": "Hello there, world"})
    assert status == 200 and isinstance(rendered, list) and rendered[0]["token_ids"] == tokenized["tokens"]
    status, chat = await post_json(http, url + "/v1/chat/completions/render", {"messages": CHAT})
    assert status == 200 and chat["request_id"].startswith("chatcmpl-")
    _, chat_tokens = await post_json(http, url + "/tokenize", {"messages": CHAT})
    assert chat["token_ids"] == chat_tokens["tokens"]
    assert chat["sampling_params"]["max_tokens"] == server.config.default_max_tokens
    _, answer = await post_json(http, url + "/v1/chat/completions", {"messages": CHAT, "max_tokens": 1})
    assert answer["usage"]["prompt_tokens"] == len(chat["token_ids"])


@pytest.mark.parametrize(
    ("path", "body", "status", "err_type"),
    [
        ("/v1/completions", b"{oops", 400, "BadRequestError"),
        ("/v1/completions", b'{"max_tokens": 3}', 400, "BadRequestError"),
        ("/v1/chat/completions", b'{"messages": "hi"}', 400, "BadRequestError"),
        ("/v1/completions", b'{"prompt": "' + b"word " * 300 + b'"}', 400, "BadRequestError"),
        ("/v1/completions", b'{"prompt": "x", "model": "gpt-9"}', 404, "NotFoundError"),
        ("/v1/chat/completions/render", b'{"model": "gpt-9", "messages": []}', 404, "NotFoundError"),
    ],
    ids=["bad json", "missing prompt", "messages of wrong type", "prompt longer than max-model-len",
         "unknown model", "render for an unknown model"],
)
async def test_bad_input_gets_vllm_codes(sim_server_factory, http: aiohttp.ClientSession, path: str,
                                         body: bytes, status: int, err_type: str) -> None:
    server = await sim_server_factory(max_model_len=256)
    async with http.post(server.url + path, data=body,
                         headers={"Content-Type": "application/json"}) as response:
        assert response.status == status
        error = (await response.json())["error"]
    assert error["type"] == err_type and error["code"] == status and error["message"]


async def test_unknown_routes_get_fastapi_404(sim_server_factory, http: aiohttp.ClientSession) -> None:
    server = await sim_server_factory()
    async with http.get(server.url + "/v2/nothing") as response:
        assert response.status == 404 and await response.json() == {"detail": "Not Found"}


async def test_same_seed_and_prompt_give_the_same_answer_everywhere(sim_server_factory,
                                                                    http: aiohttp.ClientSession) -> None:
    a = await sim_server_factory(seed=1)
    b = await sim_server_factory(seed=1)
    other = await sim_server_factory(seed=2)
    body = {"prompt": "Tell me a story", "max_tokens": 20}

    async def text(server) -> str:
        return (await post_json(http, server.url + "/v1/completions", body))[1]["choices"][0]["text"]

    first = await text(a)
    assert first == await text(a) == await text(b)
    assert first != await text(other)
    seeded = {**body, "seed": 42}
    answers = {(await post_json(http, s.url + "/v1/completions", seeded))[1]["choices"][0]["text"]
               for s in (a, other)}
    assert len(answers) == 1  # a request seed wins over the server seed
