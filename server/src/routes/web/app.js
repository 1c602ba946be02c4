// securechat web chat. The page holds no credential: signing in opens a
// server-side session (HttpOnly cookie the page cannot read), and every API
// call carries the session's CSRF token in X-CSRF-Token. Text from the
// model or the server is only ever inserted as textContent (never HTML);
// answers are Markdown, rendered by markdown.js into DOM nodes.
import { parse, render } from "/ui/markdown.js";

const $ = (id) => document.getElementById(id);
const state = { session: null, history: [], conversation: null };

// Conversations are kept in this browser (localStorage), per signed-in
// subject, so two people sharing a browser profile see their own. A user
// message in which the server filtered sensitive data is stored as a
// placeholder: the page never persists what the filter caught.
const WITHHELD = "[withheld: this message contained sensitive data]";
const MAX_CONVERSATIONS = 50;

function storageKey() {
  return "securechat.conversations:" + state.session.subject;
}

function loadConversations() {
  try {
    const list = JSON.parse(localStorage.getItem(storageKey()) || "[]");
    return Array.isArray(list) ? list : [];
  } catch {
    return [];
  }
}

function saveConversations(list) {
  try {
    localStorage.setItem(storageKey(), JSON.stringify(list.slice(0, MAX_CONVERSATIONS)));
  } catch (error) {
    $("notice").textContent = "This conversation could not be kept in the browser: " + error.message;
  }
}

function newId() {
  const bytes = new Uint8Array(9);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// Stores the current conversation (most recent first).
function keepConversation(stored) {
  const list = loadConversations().filter((c) => c.id !== state.conversation);
  const title = (stored.find((m) => m.role === "user") || { content: "New chat" }).content.slice(0, 60);
  list.unshift({ id: state.conversation, title, updated: new Date().toISOString(), messages: stored });
  saveConversations(list);
  showConversations();
}

function showConversations() {
  const list = loadConversations();
  $("conversation-count").textContent = list.length ? `(${list.length})` : "";
  const ul = $("conversation-list");
  ul.replaceChildren();
  for (const conversation of list) {
    const li = document.createElement("li");
    if (conversation.id === state.conversation) li.className = "current";
    const open = document.createElement("button");
    open.type = "button";
    open.className = "open";
    open.textContent = conversation.title;
    open.title = new Date(conversation.updated).toLocaleString();
    open.addEventListener("click", () => openConversation(conversation.id));
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "delete";
    remove.textContent = "Delete";
    remove.setAttribute("aria-label", "Delete conversation: " + conversation.title);
    remove.addEventListener("click", () => deleteConversation(conversation.id));
    li.append(open, remove);
    ul.appendChild(li);
  }
}

function startConversation() {
  state.conversation = newId();
  state.history = [];
  state.stored = [];
  $("log").replaceChildren();
  $("notice").textContent = "";
  $("error").textContent = "";
  showConversations();
}

function openConversation(id) {
  const conversation = loadConversations().find((c) => c.id === id);
  if (!conversation) return;
  state.conversation = id;
  state.stored = conversation.messages.slice();
  state.history = conversation.messages.map((m) => ({ role: m.role, content: m.content }));
  $("log").replaceChildren();
  $("notice").textContent = "";
  $("error").textContent = "";
  for (const message of conversation.messages) {
    const item = append(message.role, message.role === "user" ? message.content : "");
    if (message.role === "assistant") {
      showMarkdown(item, message.content);
      item.classList.add("done");
    }
  }
  showConversations();
}

function deleteConversation(id) {
  saveConversations(loadConversations().filter((c) => c.id !== id));
  if (id === state.conversation) startConversation();
  else showConversations();
}

async function copyCode(text, button) {
  try {
    await navigator.clipboard.writeText(text);
    button.textContent = "Copied";
  } catch {
    button.textContent = "Copy failed";
  }
  setTimeout(() => (button.textContent = "Copy"), 2000);
}

function showMarkdown(item, text) {
  item.replaceChildren(render(document, parse(text), copyCode));
}

function show(section) {
  for (const id of ["login", "chat", "admin"]) $(id).hidden = id !== section;
  // Signed out, the header has no account line or buttons at all.
  $("account").hidden = section === "login" || !state.session;
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
    // RateLimit-Reset counts whole seconds until the quota is full again:
    // 0 means it already is (or will be within the second), not worth a
    // "resets in 0s".
    const seconds = Number(reset);
    $("quota").textContent =
      `${remaining} of ${limit} requests left this minute` + (seconds > 0 ? ` (full again in ${seconds}s)` : "");
  } else if (response.ok) {
    // A tier without a request cap (Admin by default) gets no RateLimit
    // headers; say so rather than leave a stale figure.
    $("quota").textContent = "no request limit";
  }
}

async function showLogin(notice) {
  state.session = null;
  state.history = [];
  state.conversation = null;
  $("log").replaceChildren();
  $("conversation-list").replaceChildren();
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
      link.textContent = provider.label || "Sign in with SSO: " + provider.name;
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
  // The list is open beside the chat on a wide screen, folded on a phone.
  $("conversations").open = window.matchMedia("(min-width: 48rem)").matches;
  startConversation();
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
$("new-chat").addEventListener("click", startConversation);

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
  let answerText = "";
  let redactedIn = 0;
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
    redactedIn = Number(response.headers.get("x-securechat-input-redactions") || "0");
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
          if (choice && choice.delta && choice.delta.content) {
            answerText += choice.delta.content;
            showMarkdown(answer, answerText);
          }
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
    state.history.push({ role: "user", content: text }, { role: "assistant", content: answerText });
    state.stored.push(
      { role: "user", content: redactedIn > 0 ? WITHHELD : text },
      { role: "assistant", content: answerText },
    );
    keepConversation(state.stored);
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
