// Browser scenarios of "Sign in with WeChat Work" (run by
// server/tests/web_ui.rs), against the stand-in corp of
// test-support/src/oauth2_provider.rs, which follows WeChat Work's
// documented shapes (developer.work.weixin.qq.com: gettoken,
// auth/getuserinfo, user/get, tag/get, and the web login page
// login.work.weixin.qq.com/wwlogin/sso/login). Its "QR code" is a list
// of members to click. One group per run, chosen by SCENARIO.
import { check, env, run, screenshot } from "./lib.mjs";

const base = env("WEB_URL");

// From the chat's sign-in page to the stand-in's login page.
async function toProvider(page) {
  await page.goto(base + "/");
  await page.locator("#login").waitFor({ state: "visible" });
  check(await page.locator("#account").isHidden(), "signed out, the account line is hidden");
  const button = page.locator("a.sso-login", { hasText: "Sign in with WeChat Work" });
  await Promise.all([page.waitForURL(/\/wwlogin\/sso\/login\?/), button.click()]);
  const url = new URL(page.url());
  check(url.searchParams.get("login_type") === "CorpApp", `login_type: ${url}`);
  check(url.searchParams.get("redirect_uri") === `${base}/web/oauth2/callback`, `redirect_uri: ${url}`);
  check((url.searchParams.get("state") || "").length >= 40, `a random state: ${url}`);
}

// Resolves "ok" in the chat, or the error page's title and detail.
async function outcome(page) {
  await page.locator("#chat:visible, #error-title").first().waitFor();
  if (await page.locator("#chat:visible").count()) return "ok";
  return `${await page.textContent("#error-title")}: ${await page.textContent("#error-detail")}`;
}

async function scanAs(page, userid) {
  await toProvider(page);
  await page.click(`#scan-${userid}`);
  return outcome(page);
}

const scenarios = {
  members: [
    [
      "a member of a mapped department signs in and chats",
      async (page) => {
        const result = await scanAs(page, "zhangsan");
        check(result === "ok", `login: ${result}`);
        check((await page.textContent("#who")) === "张三", `name from user/get: ${await page.textContent("#who")}`);
        check((await page.textContent("#role")) === "Developer", "department 2 maps to Developer");
        await page.fill("#message", "Hello from WeChat Work");
        await page.press("#message", "Enter");
        await page.locator("#log li.assistant.done").waitFor();
        await screenshot(page, "wecom-chat");
      },
    ],
    [
      "a member with a mapped tag gets the tag's tier",
      async (page) => {
        const result = await scanAs(page, "lisi");
        check(result === "ok", `login: ${result}`);
        check((await page.textContent("#role")) === "Admin", "tag 7 maps to Admin (department 3 only to ReadOnly)");
        check(await page.locator("#show-admin").isVisible(), "an admin sees the admin view");
      },
    ],
    [
      "a member with no mapped department or tag is refused with a clear page",
      async (page) => {
        const result = await scanAs(page, "wangwu");
        check(result.startsWith("No role is mapped to your account"), `page: ${result}`);
        check(result.includes("王五") && result.includes("department 99"), `names the user and what they hold: ${result}`);
        const session = await page.evaluate(async () => (await fetch("/web/session")).status);
        check(session === 401, `no session was opened: ${session}`);
        await screenshot(page, "wecom-no-role");
      },
    ],
    [
      "someone who is not a member of the corp is refused",
      async (page) => {
        const result = await scanAs(page, "outsider");
        check(result.startsWith("Sign-in refused") && result.includes("not a member"), `page: ${result}`);
      },
    ],
    [
      "a callback with a state this browser did not start is refused",
      async (page) => {
        await toProvider(page);
        const href = await page.getAttribute("#scan-zhangsan", "href");
        const tampered = new URL(href, page.url());
        tampered.searchParams.set("state", "forged-" + tampered.searchParams.get("state"));
        await page.goto(tampered.toString());
        const result = await outcome(page);
        check(result.includes("state mismatch"), `page: ${result}`);
        const session = await page.evaluate(async () => (await fetch("/web/session")).status);
        check(session === 401, `no session was opened: ${session}`);
        await screenshot(page, "wecom-wrong-state");
      },
    ],
  ],
  expired: [
    [
      "an expired code (errcode 40029) gets a page that says so",
      async (page) => {
        const result = await scanAs(page, "zhangsan");
        check(result.startsWith("Sign-in failed"), `page: ${result}`);
        check(result.includes("expired") && result.includes("40029"), `page: ${result}`);
        await screenshot(page, "wecom-expired-code");
      },
    ],
  ],
};

const chosen = scenarios[env("SCENARIO")];
if (!chosen) throw new Error(`unknown SCENARIO; one of ${Object.keys(scenarios).join(", ")}`);
await run(chosen);
