"""Drives the server with the official OpenAI Python SDK.

Environment: SECURECHAT_URL (https://localhost:PORT), SECURECHAT_CA (CA
bundle), SECURECHAT_KEY (a Developer API key), SECURECHAT_MODEL.
Exits non-zero with a message on the first failed expectation.
"""

import json
import os
import ssl
import urllib.parse
import urllib.request

import httpx
import openai

url = os.environ["SECURECHAT_URL"]
ca = os.environ["SECURECHAT_CA"]
key = os.environ["SECURECHAT_KEY"]
model = os.environ["SECURECHAT_MODEL"]


def client(credential: str) -> openai.OpenAI:
    return openai.OpenAI(
        api_key=credential,
        base_url=f"{url}/v1",
        http_client=httpx.Client(verify=ca),
        max_retries=0,
    )


def exercise(c: openai.OpenAI, label: str) -> None:
    models = [m.id for m in c.models.list()]
    assert models == [model], f"{label}: models {models}"
    reply = c.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hello from the sdk"}]
    )
    text = reply.choices[0].message.content
    assert text == "hello from the sdk", f"{label}: reply {text!r}"
    assert reply.usage.completion_tokens == 4, f"{label}: usage {reply.usage}"
    pieces = []
    stream = c.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "streamed card 4111 1111 1111 1111 ok"}],
        stream=True,
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
    streamed = "".join(pieces)
    assert streamed == "streamed card [FILTERED] ok", f"{label}: stream {streamed!r}"
    assert len(pieces) > 2, f"{label}: only {len(pieces)} chunks"


def token_for(api_key: str) -> str:
    body = urllib.parse.urlencode(
        {"grant_type": "client_credentials", "client_secret": api_key}
    ).encode()
    request = urllib.request.Request(f"{url}/oauth/token", data=body, method="POST")
    context = ssl.create_default_context(cafile=ca)
    with urllib.request.urlopen(request, context=context) as response:
        return json.load(response)["access_token"]


exercise(client(key), "api key")
exercise(client(token_for(key)), "jwt")
try:
    client("sk-sc-wrong-" + "A" * 43).models.list()
    raise AssertionError("a wrong key was accepted")
except openai.AuthenticationError as e:
    assert e.status_code == 401
print("ok")
