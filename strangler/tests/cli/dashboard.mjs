// The operator dashboard in headless Chromium, driven by Playwright (playwright-core): run by
// the `the_dashboard_works_in_a_real_browser` test, which serves the proxy and checks the audit
// log afterwards. Environment: ADMIN, PROXY, TOKEN, PRODUCT, SCREENSHOT, CHROMIUM, and
// PLAYWRIGHT_MODULES (the node_modules that holds playwright-core).
import { createRequire } from "node:module";

const { chromium } = createRequire(`${process.env.PLAYWRIGHT_MODULES}/`)("playwright-core");

const { ADMIN, PROXY, TOKEN, PRODUCT, SCREENSHOT, CHROMIUM } = process.env;
const REASON = "flip from the dashboard";

function check(condition, what) {
  if (!condition) throw new Error(`failed: ${what}`);
}

// Without a token, the data is refused and the page asks for one.
const refused = await fetch(`${ADMIN}/dashboard/data`);
check(refused.status === 401, `GET /dashboard/data without a token: ${refused.status}`);
check(
  (refused.headers.get("content-type") || "").startsWith("application/problem+json"),
  "the refusal is problem+json",
);

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (err) => errors.push(err.message));
  let navigations = 0;
  page.on("framenavigated", (frame) => {
    if (frame === page.mainFrame()) navigations += 1;
  });
  await page.goto(`${ADMIN}/dashboard`);
  await page.locator("#signin").waitFor({ state: "visible" });
  check(await page.locator("#board").isHidden(), "no data before signing in");

  // A wrong token is refused, the right one signs in.
  await page.fill("#token", "not-the-token");
  await page.click("#signin button[type=submit]");
  await page.waitForFunction(() => document.querySelector("#message").textContent.includes("not a valid"));
  await page.fill("#token", TOKEN);
  await page.click("#signin button[type=submit]");
  const panel = page.locator('section[data-carveout="catalog"]');
  await panel.waitFor({ state: "visible" });
  check((await panel.locator('[data-field="phase"]').textContent()) === "monolith", "phase monolith");

  // Live figures: traffic sent now shows up without a reload.
  const requests = panel.locator('[data-field="monolith-requests"]');
  const before = Number(await requests.textContent());
  for (let i = 0; i < 5; i += 1) {
    const answer = await fetch(`${PROXY}/catalog/products/${PRODUCT}`);
    check(answer.status === 200, `GET through the proxy: ${answer.status}`);
  }
  await page.waitForFunction(
    (want) => Number(document.querySelector('section[data-carveout="catalog"] [data-field="monolith-requests"]').textContent) >= want,
    before + 5,
    { timeout: 20000 },
  );
  check(navigations === 1, `the page was not reloaded (${navigations} navigations)`);

  // A change without a reason is not sent; declining the confirmation sends nothing either.
  await panel.locator("select[name=phase]").selectOption("shadow");
  page.once("dialog", (dialog) => dialog.dismiss());
  await panel.locator("input[name=reason]").fill(REASON);
  await panel.locator("button[name=change]").click();
  // Wait for the next refresh, which would show a change had one been sent.
  const shown = await page.locator("#updated").textContent();
  await page.waitForFunction((was) => document.querySelector("#updated").textContent !== was, shown);
  check((await panel.locator('[data-field="phase"]').textContent()) === "monolith", "declined: no change");

  // The flip, confirmed.
  let asked = "";
  page.once("dialog", (dialog) => {
    asked = dialog.message();
    dialog.accept();
  });
  await panel.locator("button[name=change]").click();
  await page.waitForFunction(
    () => document.querySelector('section[data-carveout="catalog"] [data-field="phase"]').textContent === "shadow",
    null,
    { timeout: 20000 },
  );
  check(asked.includes("Move catalog to shadow") && asked.includes(REASON), `the confirmation: ${asked}`);
  await page.waitForFunction(
    (reason) => document.querySelector("#audit tbody tr td:last-child")?.textContent === reason,
    REASON,
    { timeout: 20000 },
  );

  // The cookie alone does not change anything: a change needs the dashboard's CSRF header.
  const cookies = await context.cookies(ADMIN);
  const session = cookies.find((c) => c.name === "strangler_admin");
  check(session && session.httpOnly && session.sameSite === "Strict", "an HttpOnly, SameSite=Strict cookie");
  const forged = await fetch(`${ADMIN}/carveouts/catalog/phase`, {
    method: "POST",
    headers: { cookie: `${session.name}=${session.value}`, "content-type": "application/json" },
    body: JSON.stringify({ phase: "monolith", reason: "forged" }),
  });
  check(forged.status === 403, `a change by cookie without the CSRF header: ${forged.status}`);

  await page.screenshot({ path: SCREENSHOT, fullPage: true });
  check(errors.length === 0, `no script errors: ${errors.join("; ")}`);
  console.log("dashboard: ok");
} finally {
  await browser.close();
}
