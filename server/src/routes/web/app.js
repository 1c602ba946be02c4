// securechat web chat. The page holds no credential: signing in opens a
// server-side session (HttpOnly cookie the page cannot read), and every API
// call carries the session's CSRF token in X-CSRF-Token. Text from the
// model or the server is only ever inserted as textContent (never HTML).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { session: null, history: [] };

function show(section) {
  for (const id of ["login", "chat", "admin"]) $(id).hidden = id !== section;
  $("account").hidden = section === "login";
}

// A readable sentence for an API error answer (OpenAI error shape).
async function describe(response) {
  const body = await response.json().catch(() => ({}));
  const message = (body.error && body.error.message) || response.statusText;
  const retry = response.headers.get("retry-after");
  switch (response.status) {
    case 401:
      return "Not signed in or the credentials were refused: " + message;
    case 403:
      return "Not allowed: " + message;
    case 429:
      return "Too many requests: " + message + (retry ? ` (retry in ${retry}s)` : "");
    case 503:
      return "The model is busy or unavailable: " + message + (retry ? ` (retry in ${retry}s)` : "");
    default:
      return `Error ${response.status}: ${message}`;
  }
}

// fetch with the session's CSRF token; a 401 means the session is gone.
async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (state.session) headers["X-CSRF-Token"] = state.session.csrfToken;
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401 && state.session) {
    state.session = null;
    showLogin("Your session has expired or was signed out. Please sign in again.");
    throw new Error("signed out");
  }
  return response;
}

function updateQuota(response) {
  const limit = response.headers.get("ratelimit-limit");
  const remaining = response.headers.get("ratelimit-remaining");
  const reset = response.headers.get("ratelimit-reset");
  if (limit !== null && remaining !== null) {
    $("quota").textContent =
      `${remaining} of ${limit} requests left this minute` + (reset ? ` (resets in ${reset}s)` : "");
  } else if (response.ok) {
    // A tier without a request cap (Admin by default) gets no RateLimit
    // headers; say so rather than leave a stale figure.
    $("quota").textContent = "no request limit";
  }
}

async function showLogin(notice) {
  state.session = null;
  state.history = [];
  $("log").replaceChildren();
  $("login-notice").textContent = notice || "";
  show("login");
  const response = await fetch("/web/options").catch(() => null);
  const list = $("sso");
  list.replaceChildren();
  if (response && response.ok) {
    const options = await response.json();
    for (const provider of options.sso) {
      const link = document.createElement("a");
      link.href = provider.start;
      link.textContent = "Sign in with SSO: " + provider.name;
      link.className = "sso-login";
      list.appendChild(link);
    }
  }
}

function showChat(session) {
  state.session = session;
  $("who").textContent = session.name;
  $("role").textContent = session.role;
  $("show-admin").hidden = !session.isAdmin;
  const limits = session.limits;
  // The config holds an f32: 0.7 arrives as 0.699999988…
  const temperature = String(Math.round(limits.defaultTemperature * 100) / 100);
  $("temperature").value = temperature;
  $("temperature-value").textContent = temperature;
  $("temperature").max = String(limits.maxTemperature);
  const cap = limits.maxTokens;
  $("max-tokens").max = cap ? String(cap) : "";
  $("max-tokens").value = String(cap ? Math.min(cap, limits.defaultMaxTokens) : limits.defaultMaxTokens);
  $("max-tokens-cap").textContent = cap ? `(your role allows up to ${cap})` : "";
  show("chat");
}

async function loadSession() {
  const response = await fetch("/web/session");
  if (response.ok) showChat(await response.json());
  else showLogin();
}

$("key-login").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("login-error").textContent = "";
  const apiKey = $("api-key").value.trim();
  $("api-key").value = "";
  const response = await fetch("/web/login", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ apiKey }),
  });
  if (!response.ok) {
    $("login-error").textContent = await describe(response);
    return;
  }
  showChat(await response.json());
});

$("logout").addEventListener("click", async () => {
  await api("/web/logout", { method: "POST" }).catch(() => null);
  showLogin("You have signed out.");
});

$("show-chat").addEventListener("click", () => show("chat"));
$("show-admin").addEventListener("click", () => {
  show("admin");
  loadAdmin();
});
$("admin-refresh").addEventListener("click", loadAdmin);
$("temperature").addEventListener("input", () => {
  $("temperature-value").textContent = $("temperature").value;
});
$("clear").addEventListener("click", () => {
  state.history = [];
  $("log").replaceChildren();
  $("notice").textContent = "";
});

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text == null ? "" : String(text);
  row.appendChild(td);
}

async function loadAdmin() {
  $("admin-error").textContent = "";
  try {
    const keys = await api("/admin/keys");
    if (!keys.ok) {
      $("admin-error").textContent = await describe(keys);
      return;
    }
    const body = $("admin-keys").querySelector("tbody");
    body.replaceChildren();
    for (const key of (await keys.json()).keys) {
      const row = document.createElement("tr");
      for (const value of [key.id, key.name, key.tier, key.status, key.expiresAt, key.lastUsedAt, key.usage.requests]) {
        cell(row, value);
      }
      body.appendChild(row);
    }
    const config = await api("/admin/config");
    if (!config.ok) {
      $("admin-error").textContent = await describe(config);
      return;
    }
    $("admin-config").textContent = JSON.stringify(await config.json(), null, 2);
  } catch (error) {
    if (error.message !== "signed out") $("admin-error").textContent = String(error.message || error);
  }
}

function append(role, text) {
  const item = document.createElement("li");
  item.className = role;
  item.textContent = text;
  $("log").appendChild(item);
  item.scrollIntoView({ block: "end" });
  return item;
}

$("message").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    $("ask").requestSubmit();
  }
});

$("ask").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("error").textContent = "";
  $("notice").textContent = "";
  const text = $("message").value.trim();
  if (!text) return;
  $("message").value = "";
  $("send").disabled = true;
  const asked = append("user", text);
  const messages = [];
  const system = $("system-prompt").value.trim();
  if (system) messages.push({ role: "system", content: system });
  messages.push(...state.history, { role: "user", content: text });
  const answer = append("assistant", "");
  answer.setAttribute("aria-busy", "true");
  const notices = [];
  try {
    const response = await api("/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({
        messages,
        stream: true,
        temperature: Number($("temperature").value),
        max_tokens: Number($("max-tokens").value),
      }),
    });
    updateQuota(response);
    if (!response.ok) throw new Error(await describe(response));
    const redactedIn = Number(response.headers.get("x-securechat-input-redactions") || "0");
    if (redactedIn > 0) {
      notices.push(
        `Sensitive data in your message (${redactedIn} item${redactedIn > 1 ? "s" : ""}) ` +
          "was replaced by [FILTERED] before it reached the model.",
      );
      $("notice").textContent = notices.join(" ");
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
          const choice = chunk.choices && chunk.choices[0];
          if (choice && choice.delta && choice.delta.content) answer.textContent += choice.delta.content;
          const redactedOut = chunk.securechat && chunk.securechat.output_redactions;
          if (redactedOut) {
            notices.push(`Sensitive data in the answer (${redactedOut} item${redactedOut > 1 ? "s" : ""}) was filtered.`);
            $("notice").textContent = notices.join(" ");
          }
          if (choice && choice.finish_reason === "content_filter") {
            notices.push("The rest of the answer was withheld by the sensitive-data filter.");
            $("notice").textContent = notices.join(" ");
          }
        }
      }
    }
    state.history.push({ role: "user", content: text }, { role: "assistant", content: answer.textContent });
    answer.setAttribute("aria-busy", "false");
    answer.classList.add("done");
  } catch (error) {
    answer.remove();
    if (error.message !== "signed out") {
      $("error").textContent = String(error.message || error);
      // Unanswered: the question goes back into the box to send again
      // (after a 429 or 503), rather than being lost.
      asked.remove();
      if (!$("message").value) $("message").value = text;
    }
  } finally {
    $("send").disabled = false;
  }
});

loadSession();
