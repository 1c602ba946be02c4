// Browser scenarios with API-key logins (run by server/tests/web_ui.rs).
import { check, env, run, screenshot } from "./lib.mjs";

const base = env("WEB_URL");
const keys = {
  admin: env("KEY_ADMIN"),
  readonly: env("KEY_READONLY"),
};

async function signIn(page, key) {
  await page.goto(base + "/");
  await page.locator("#login").waitFor({ state: "visible" });
  await page.fill("#api-key", key);
  await page.click("#key-submit");
}

await run([
  [
    "a wrong key shows the error",
    async (page) => {
      await signIn(page, "sk-sc-nosuchkey-" + "A".repeat(43));
      const error = page.locator("#login-error");
      await error.filter({ hasText: "refused" }).waitFor();
      check((await page.locator("#chat").isHidden()), "the chat must stay hidden");
      check((await page.inputValue("#api-key")) === "", "the key field is cleared");
      await screenshot(page, "wrong-key");
    },
  ],
  [
    "an API-key session chats with streaming, redaction notice and admin view",
    async (page, context) => {
      await signIn(page, keys.admin);
      await page.locator("#chat").waitFor({ state: "visible" });
      check((await page.textContent("#role")) === "Admin", "role shown");
      // The key is not kept anywhere script can read (localStorage holds
      // only the conversation list, written after an answer).
      const stored = await page.evaluate(() => [localStorage.length, sessionStorage.length, document.cookie]);
      check(stored[0] === 0 && stored[1] === 0 && stored[2] === "", `page storage: ${JSON.stringify(stored)}`);
      const cookies = await context.cookies();
      const session = cookies.find((c) => c.name === "__Host-securechat-session");
      check(session && session.httpOnly && session.secure && session.sameSite === "Lax", JSON.stringify(cookies));

      check(!(await page.$eval("#settings", (d) => d.open)), "Settings starts folded");
      await page.click("#settings summary");
      await page.fill("#max-tokens", "24");
      await page.fill("#system-prompt", "You are a helpful assistant.");
      // Record every distinct text the answer shows while it streams.
      await page.evaluate(() => {
        window.answerStates = [];
        new MutationObserver(() => {
          const last = document.querySelector("#log li.assistant:last-child");
          if (last && last.textContent) window.answerStates.push(last.textContent);
        }).observe(document.getElementById("log"), { subtree: true, childList: true, characterData: true });
      });
      await page.fill("#message", "My card number is 4111 1111 1111 1111. Please say hello.");
      await page.press("#message", "Enter");
      await page.locator("#log li.assistant.done").waitFor();
      const answer = await page.textContent("#log li.assistant.done");
      check(answer.trim().length > 0, "the answer is not empty");
      const states = await page.evaluate(() => new Set(window.answerStates).size);
      check(states >= 2, `the answer arrived in ${states} step(s); expected a stream`);
      const notice = await page.textContent("#notice");
      check(notice.includes("[FILTERED]"), `redaction notice: ${notice}`);
      // What the filter caught is not kept in the browser's conversation.
      const kept = await page.evaluate(() => JSON.stringify(localStorage));
      check(!kept.includes("4111") && kept.includes("[withheld"), `kept conversation: ${kept}`);
      const quota = await page.textContent("#quota");
      // The key is an Admin key: no request cap by default (seed 001).
      check(quota === "no request limit", `quota: ${quota}`);
      await screenshot(page, "chat-redacted");

      await page.click("#show-admin");
      await page.locator("#admin-keys tbody tr").first().waitFor();
      await page.locator("#admin-config").filter({ hasText: "rateLimit" }).waitFor();
      const adminText = await page.textContent("#admin");
      check(!adminText.includes("sha256:") && !adminText.includes("sk-sc-"), "no secrets or hashes in the admin view");
      await screenshot(page, "admin");

      // A session that is gone (cookie lost, expired) sends the page back
      // to the login form on the next call.
      await page.click("#show-chat");
      await context.clearCookies();
      await page.fill("#message", "hello again");
      await page.press("#message", "Enter");
      await page.locator("#login-notice").filter({ hasText: "expired" }).waitFor();
      check(await page.locator("#chat").isHidden(), "chat hidden after expiry");
      await screenshot(page, "session-expired");
    },
  ],
  [
    "sign out ends the session on the server",
    async (page) => {
      await signIn(page, keys.admin);
      await page.locator("#chat").waitFor({ state: "visible" });
      const token = await page.evaluate(async () => (await (await fetch("/web/session")).json()).csrfToken);
      await page.click("#logout");
      await page.locator("#login-notice").filter({ hasText: "signed out" }).waitFor();
      const status = await page.evaluate(
        async (t) => (await fetch("/v1/models", { headers: { "X-CSRF-Token": t } })).status,
        token,
      );
      check(status === 401, `after sign-out the API answered ${status}`);
    },
  ],
  [
    "a ReadOnly user has no admin view and gets 403 from the admin endpoint",
    async (page) => {
      await signIn(page, keys.readonly);
      await page.locator("#chat").waitFor({ state: "visible" });
      check((await page.textContent("#role")) === "ReadOnly", "role shown");
      check(await page.locator("#show-admin").isHidden(), "no admin button for ReadOnly");
      const result = await page.evaluate(async () => {
        const session = await (await fetch("/web/session")).json();
        const admin = await fetch("/admin/keys", { headers: { "X-CSRF-Token": session.csrfToken } });
        const noCsrf = await fetch("/admin/keys");
        return { admin: admin.status, code: (await admin.json()).error.code, noCsrf: noCsrf.status };
      });
      check(result.admin === 403 && result.code === "permission_denied", JSON.stringify(result));
      check(result.noCsrf === 403, `without the CSRF token: ${JSON.stringify(result)}`);
      // The role's limits: max tokens capped, one request a minute (the
      // test server's config), so the second message gets a clear 429.
      const cap = await page.textContent("#max-tokens-cap");
      check(cap.includes("up to 16"), `max tokens cap shown: ${cap}`);
      await page.fill("#message", "Hello");
      await page.press("#message", "Enter");
      await page.locator("#log li.assistant.done").waitFor();
      const quota = await page.textContent("#quota");
      check(quota.startsWith("0 of 1 requests left") && !quota.includes("in 0s"), `quota: ${quota}`);
      await page.fill("#message", "Hello again");
      await page.press("#message", "Enter");
      await page.locator("#error").filter({ hasText: "Too many requests" }).waitFor();
      const error = await page.textContent("#error");
      check(/retry in \d+s/.test(error), `429 message: ${error}`);
      await screenshot(page, "readonly-429");
    },
  ],
]);
