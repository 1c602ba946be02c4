// securechat web chat: streams /v1/chat/completions with the caller's own
// key or token. Text is only ever inserted as textContent (never HTML).
"use strict";

const history = [];
const $ = (id) => document.getElementById(id);

function credential() {
  return sessionStorage.getItem("securechat-credential") || "";
}

function append(role, text) {
  const item = document.createElement("li");
  item.className = role;
  item.textContent = text;
  $("log").appendChild(item);
  item.scrollIntoView({ block: "end" });
  return item;
}

function showError(text) {
  $("error").textContent = text;
}

$("credentials").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem("securechat-credential", $("key").value.trim());
  $("key").value = "";
  $("who").textContent = credential() ? "credential set for this tab" : "";
});

$("message").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    $("ask").requestSubmit();
  }
});

$("ask").addEventListener("submit", async (event) => {
  event.preventDefault();
  showError("");
  const text = $("message").value.trim();
  if (!text) return;
  if (!credential()) {
    showError("Enter an API key or access token first.");
    return;
  }
  $("message").value = "";
  $("send").disabled = true;
  append("user", text);
  history.push({ role: "user", content: text });
  const answer = append("assistant", "");
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: "Bearer " + credential() },
      body: JSON.stringify({ messages: history, stream: true }),
    });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw new Error((body.error && body.error.message) || response.statusText);
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const eventText = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        for (const line of eventText.split("\n")) {
          if (!line.startsWith("data: ")) continue;
          const data = line.slice(6);
          if (data === "[DONE]") continue;
          const chunk = JSON.parse(data);
          if (chunk.error) throw new Error(chunk.error.message);
          const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
          if (delta && delta.content) answer.textContent += delta.content;
        }
      }
    }
    history.push({ role: "assistant", content: answer.textContent });
  } catch (error) {
    answer.remove();
    history.pop();
    showError(String(error.message || error));
  } finally {
    $("send").disabled = false;
  }
});
