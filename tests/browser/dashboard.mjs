// Drives Debian's headless Chromium (/usr/bin/chromium) against a running status page, the way a user
// would: waits for the completed count, finds the failed job's error among the failures, opens the
// job's detail and waits for its log tail, and saves screenshots. Run by tests/StatusTests.cs:
//
//   node dashboard.mjs URL OUT_DIR COMPLETED FAILED_JOB_ID ERROR_TEXT LOG_TEXT
//
// Exits 0 when everything was seen, 1 with the reason (and a screenshot of the moment) otherwise.
import { chromium } from "playwright-core";
import { join } from "node:path";

const [url, outDir, completed, failedJob, errorText, logText] = process.argv.slice(2);
if (!logText) {
  console.error("usage: node dashboard.mjs URL OUT_DIR COMPLETED FAILED_JOB_ID ERROR_TEXT LOG_TEXT");
  process.exit(2);
}
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const timeout = Number(process.env.DASHBOARD_TIMEOUT_MS || 180000);

const browser = await chromium.launch({ executablePath, headless: true, args: ["--no-sandbox", "--disable-dev-shm-usage"] });
const page = await browser.newPage({ viewport: { width: 1440, height: 900 } });
const problems = [];
page.on("pageerror", e => problems.push("page error: " + e.message));
page.on("console", m => { if (m.type() === "error") problems.push("console error: " + m.text()); });
try {
  await page.goto(url, { waitUntil: "load" });

  // The completed count reaches the expected number while the run goes on (the page refreshes itself).
  // Locators, not waitForFunction: the page's Content-Security-Policy forbids eval, which that needs.
  const exactly = text => new RegExp("^" + text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&") + "$");
  await page.locator("#count-completed").filter({ hasText: exactly(Number(completed).toLocaleString("en-US")) }).waitFor({ timeout });

  // The failed job is listed with its error's first line.
  const row = page.locator(`#failures tr[data-job="${failedJob}"]`);
  await row.waitFor({ timeout });
  const shown = await row.locator("td.err").textContent();
  if (!shown.includes(errorText)) throw new Error(`failure row of job ${failedJob} shows '${shown}', expected it to contain '${errorText}'`);
  await page.locator("#count-failed").filter({ hasText: /^[1-9]/ }).waitFor({ timeout });
  await page.screenshot({ path: join(outDir, "dashboard.png") });
  await page.screenshot({ path: join(outDir, "dashboard-full.png"), fullPage: true });

  // Its detail view, with the log tail.
  await row.click();
  await page.locator("#detail.open").waitFor({ timeout });
  await page.locator("#log-tail").filter({ hasText: logText }).waitFor({ timeout });
  const title = await page.locator("#detail-title").textContent();
  if (!title.includes(`Job ${failedJob}`)) throw new Error(`detail title is '${title}'`);
  const error = await page.locator("#detail-error").textContent();
  if (!error.includes(errorText)) throw new Error(`detail error is '${error}'`);
  await page.screenshot({ path: join(outDir, "job-detail.png") });

  if (problems.length) throw new Error(problems.join("; "));
  console.log(JSON.stringify({ ok: true, completed, failedJob, title }));
} catch (e) {
  await page.screenshot({ path: join(outDir, "failure.png"), fullPage: true }).catch(() => {});
  console.error(String(e && e.stack || e));
  if (problems.length) console.error(problems.join("\n"));
  process.exitCode = 1;
} finally {
  await browser.close();
}
