// Shared by the browser scenarios: launch the Debian Chromium headless,
// trusting exactly the test server's certificate, and small helpers.
import { createHash, X509Certificate } from "node:crypto";
import { readFileSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";

export function env(name) {
  const value = process.env[name];
  if (!value) throw new Error(`environment variable ${name} is not set`);
  return value;
}

// The base64 SHA-256 of the certificate's SubjectPublicKeyInfo: Chromium
// then accepts that one key (the dev certificate of the test server and
// the test's identity provider) without trusting anything else.
export function spkiHash(certPath) {
  const cert = new X509Certificate(readFileSync(certPath));
  const spki = cert.publicKey.export({ type: "spki", format: "der" });
  return createHash("sha256").update(spki).digest("base64");
}

export async function launch() {
  return chromium.launch({
    executablePath: "/usr/bin/chromium",
    headless: true,
    args: [
      `--ignore-certificate-errors-spki-list=${spkiHash(env("WEB_TLS_CERT"))}`,
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
    ],
  });
}

const shots = env("WEB_SCREENSHOTS");
mkdirSync(shots, { recursive: true });

export async function screenshot(page, name) {
  await page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });
}

export function check(condition, message) {
  if (!condition) throw new Error(message);
}

// Runs the scenarios in order, naming the failing one; a failure also
// leaves a screenshot of that moment.
export async function run(scenarios) {
  const browser = await launch();
  let current = "";
  try {
    for (const [name, scenario] of scenarios) {
      current = name;
      const context = await browser.newContext();
      const page = await context.newPage();
      page.setDefaultTimeout(Number(process.env.WEB_STEP_TIMEOUT_MS || 60000));
      try {
        await scenario(page, context, browser);
      } catch (error) {
        await screenshot(page, `FAILED-${name}`).catch(() => {});
        throw error;
      } finally {
        await context.close();
      }
      console.log(`scenario ok: ${name}`);
    }
  } catch (error) {
    console.error(`scenario FAILED: ${current}: ${error.stack || error}`);
    process.exitCode = 1;
  } finally {
    await browser.close();
  }
}
