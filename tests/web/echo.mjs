// Browser scenarios against the echo test engine (run by
// server/tests/web_ui.rs), one per run, chosen by SCENARIO: what the page
// says when the answer itself carries sensitive data, and when the model is
// busy (503 with Retry-After).
import { check, env, run, screenshot } from "./lib.mjs";

const base = env("WEB_URL");
const key = env("KEY_DEVELOPER");

async function signIn(page) {
  await page.goto(base + "/");
  await page.locator("#login").waitFor({ state: "visible" });
  await page.fill("#api-key", key);
  await page.click("#key-submit");
  await page.locator("#chat").waitFor({ state: "visible" });
}

const scenarios = {
  "output-redaction": [
    "a card number in the answer is filtered and the page says so",
    async (page) => {
      await signIn(page);
      // Input filtering is off on this server and the engine echoes the
      // message, so the card reaches the answer and the output filter.
      await page.fill("#message", "Repeat: my card is 4111 1111 1111 1111 thanks");
      await page.press("#message", "Enter");
      await page.locator("#log li.assistant.done").waitFor();
      const answer = await page.textContent("#log li.assistant.done");
      check(!/4111|1111 1111/.test(answer), `the answer shows the card: ${answer}`);
      check(answer.includes("[FILTERED]"), `the answer marks the redaction: ${answer}`);
      const notice = await page.textContent("#notice");
      check(notice.includes("Sensitive data in the answer (1 item) was filtered."), `notice: ${notice}`);
      check(!notice.includes("your message"), `no input redaction was reported: ${notice}`);
      await screenshot(page, "output-redacted");
    },
  ],
  busy: [
    "a busy model shows a 503 message with the retry time and keeps the question",
    async (page) => {
      await signIn(page);
      await page.fill("#message", "Hello while you are busy");
      await page.press("#message", "Enter");
      await page.locator("#error").filter({ hasText: "busy or unavailable" }).waitFor();
      const error = await page.textContent("#error");
      check(/retry in 2s/.test(error), `503 message: ${error}`);
      check((await page.locator("#log li.assistant").count()) === 0, "no empty answer is left behind");
      check((await page.locator("#log li.user").count()) === 0, "the unanswered question left the log");
      const kept = await page.inputValue("#message");
      check(kept === "Hello while you are busy", `the question is back in the box: ${kept}`);
      check(!(await page.locator("#send").isDisabled()), "send is enabled again");
      await screenshot(page, "busy-503");
    },
  ],
};

const chosen = scenarios[env("SCENARIO")];
if (!chosen) throw new Error(`unknown SCENARIO; one of ${Object.keys(scenarios).join(", ")}`);
await run([chosen]);
