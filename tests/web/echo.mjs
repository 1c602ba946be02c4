// Browser scenarios against the echo test engine (run by
// server/tests/web_ui.rs), one per run, chosen by SCENARIO: the signed-out
// page, a Markdown answer and the conversation list, what the page says
// when the answer itself carries sensitive data, and when the model is
// busy (503 with Retry-After). Each leaves a screenshot of its state under
// WEB_SCREENSHOTS, after checking the state's key elements.
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

// Phone width (an iPhone 12-15's CSS pixels): nothing may be wider than
// the screen, so nothing needs sideways scrolling.
const PHONE = { width: 390, height: 844 };

async function fitsThePhone(page) {
  const overflow = await page.evaluate(() => {
    const width = document.documentElement.clientWidth;
    const wide = [...document.querySelectorAll("body *")]
      .filter((e) => e.getClientRects().length && e.getBoundingClientRect().right > width + 1)
      .map((e) => e.id || e.className || e.tagName);
    return { scroll: document.documentElement.scrollWidth, width, wide };
  });
  check(overflow.scroll <= overflow.width && overflow.wide.length === 0, `wider than the phone: ${JSON.stringify(overflow)}`);
}

const scenarios = {
  "signed-out": [
    "signed out, the page offers only the sign-in, also at phone width",
    async (page) => {
      await page.setViewportSize(PHONE);
      await page.goto(base + "/");
      await page.locator("#login").waitFor({ state: "visible" });
      for (const id of ["#account", "#who", "#show-chat", "#logout", "#chat"]) {
        check(await page.locator(id).isHidden(), `${id} is shown while signed out`);
      }
      const header = await page.textContent("header");
      check(!(await page.locator("header").innerText()).includes("Signed in as"), `header: ${header}`);
      check(await page.locator("#key-submit").isVisible(), "the sign-in button is shown");
      await fitsThePhone(page);
      await screenshot(page, "signed-out-phone");
    },
  ],
  chatting: [
    "an answer renders as Markdown without HTML, with copy, kept as a conversation, at phone width",
    async (page, context) => {
      await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: base });
      await page.setViewportSize(PHONE);
      // Any script the page runs would come from a Markdown answer here.
      const dialogs = [];
      page.on("dialog", (d) => {
        dialogs.push(d.message());
        d.dismiss();
      });
      await signIn(page);
      check(!(await page.$eval("#settings", (d) => d.open)), "Settings starts folded");
      check(!(await page.$eval("#conversations", (d) => d.open)), "the conversation list is folded on a phone");
      const quota = await page.textContent("#quota");
      check(!quota.includes("in 0s"), `quota: ${quota}`);
      // The echo engine repeats the message: it comes back as the answer.
      const markdown = [
        "Here is **bold** and `inline <code>`:",
        "",
        "```js",
        'console.log("<b>not bold</b>");',
        "```",
        "",
        "- first item",
        "- second item",
        "",
        '<img src=x onerror="alert(1)"><script>alert(2)</script>',
      ].join("\n");
      await page.fill("#message", markdown);
      await page.click("#send");
      const answer = page.locator("#log li.assistant.done");
      await answer.waitFor();
      check((await answer.locator("strong").textContent()) === "bold", "bold rendered");
      check((await answer.locator("p code").textContent()) === "inline <code>", "inline code rendered as text");
      check((await answer.locator(".code-block code").textContent()) === 'console.log("<b>not bold</b>");', "code block kept verbatim");
      check((await answer.locator("ul > li").count()) === 2, "a list of two items");
      check((await answer.locator("img, script, b").count()) === 0, "no element from the model's HTML");
      check((await answer.textContent()).includes('<img src=x onerror="alert(1)">'), "the HTML shows as text");
      await answer.locator("button.copy").click();
      await answer.locator("button.copy", { hasText: "Copied" }).waitFor();
      const copied = await page.evaluate(() => navigator.clipboard.readText());
      check(copied === 'console.log("<b>not bold</b>");', `clipboard: ${copied}`);
      check(dialogs.length === 0, `the page ran the model's script: ${dialogs}`);
      await fitsThePhone(page);
      await screenshot(page, "chatting-phone");

      // The conversation is kept in this browser: a new chat, then back.
      await page.click("#conversations summary");
      await page.locator("#conversation-list li").first().waitFor();
      check((await page.locator("#conversation-list li").count()) === 1, "one conversation kept");
      await page.click("#new-chat");
      check((await page.locator("#log > li").count()) === 0, "a new chat starts empty");
      await page.fill("#message", "second conversation");
      await page.click("#send");
      await page.locator("#log li.assistant.done").waitFor();
      check((await page.locator("#conversation-list li").count()) === 2, "two conversations kept");
      check(
        (await page.locator("#conversation-list li").first().textContent()).includes("second conversation"),
        "the newest is first",
      );
      await page.locator("#conversation-list li", { hasText: "Here is" }).locator("button.open").click();
      await page.locator("#log li.assistant .code-block").waitFor();
      check((await page.locator("#log > li").count()) === 2, "the first conversation is back");
      await fitsThePhone(page);
      // Kept across a reload (same session), and nothing else is stored.
      await page.reload();
      await page.locator("#chat").waitFor({ state: "visible" });
      const stored = await page.evaluate(() => Object.keys(localStorage));
      check(stored.length === 1 && stored[0].startsWith("securechat.conversations:key:"), `storage: ${stored}`);
      check(!(await page.evaluate(() => JSON.stringify(localStorage))).includes("sk-sc-"), "no key in storage");
      await page.click("#conversations summary");
      await page.locator("#conversation-list li", { hasText: "second" }).locator("button.delete").click();
      check((await page.locator("#conversation-list li").count()) === 1, "deleted");
      await page.setViewportSize({ width: 1280, height: 900 });
      await screenshot(page, "chatting-desktop");
    },
  ],
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
      await page.setViewportSize(PHONE);
      await fitsThePhone(page);
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
      await page.setViewportSize(PHONE);
      await fitsThePhone(page);
      await screenshot(page, "busy-503");
    },
  ],
};

const chosen = scenarios[env("SCENARIO")];
if (!chosen) throw new Error(`unknown SCENARIO; one of ${Object.keys(scenarios).join(", ")}`);
await run([chosen]);
