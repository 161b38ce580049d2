// Drives the run viewer in headless Chromium against a live converge server, for
// crates/converge-server/tests/browser.rs (which starts the server and submits the run).
//
// Environment: BASE_URL (the server), APPROVER_TOKEN (an approver of the run's tenant who did
// not submit it), VIEWER_TOKEN (a viewer of the same tenant), RUN_ID (a run of
// examples/release-approval.yaml awaiting approval), CHROMIUM (the browser executable),
// ARTIFACTS (a directory for screenshots).
//
// First, as the viewer, checks that the pending approval is shown without Approve and Reject
// buttons (the viewer's role cannot decide). Then signs in as the approver, opens the run, checks its timeline, facts, provenance and pending approval,
// approves it, and follows the live event stream (no reload) until the run converges with
// the release approved by alice. Exits non-zero with a message on the first failed
// expectation, leaving a screenshot of the page as it was.

import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";

const TIMEOUT_MS = 20_000;

function env(name) {
  const value = process.env[name];
  if (!value) fail(`environment variable ${name} is not set`);
  return value;
}

function fail(message) {
  console.error(`viewer test failed: ${message}`);
  process.exit(1);
}

const baseUrl = env("BASE_URL");
const token = env("APPROVER_TOKEN");
const viewerToken = env("VIEWER_TOKEN");
const runId = env("RUN_ID");
const executablePath = env("CHROMIUM");
const artifacts = env("ARTIFACTS");
mkdirSync(artifacts, { recursive: true });

const browser = await chromium
  .launch({ executablePath, headless: true, args: ["--no-sandbox"] })
  .catch((error) => fail(`cannot launch Chromium at ${executablePath}: ${error.message.split("\n")[0]}`));
const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
page.setDefaultTimeout(TIMEOUT_MS);

const pageErrors = [];
const tokenInUrls = [];
page.on("pageerror", (error) => pageErrors.push(error.message));
page.on("console", (message) => console.log(`[browser ${message.type()}] ${message.text()}`));
page.on("request", (request) => {
  if (request.url().includes(token)) tokenInUrls.push(request.url());
});

/** Runs one stage; on failure saves `failure.png` and exits with what was expected. */
async function stage(name, body) {
  console.log(`- ${name}`);
  try {
    await body();
  } catch (error) {
    await page.screenshot({ path: join(artifacts, "failure.png"), fullPage: true }).catch(() => {});
    const text = await page
      .locator("body")
      .innerText()
      .catch(() => "(page text unavailable)");
    await browser.close();
    fail(`${name}: ${error.message.split("\n")[0]}\n--- page text ---\n${text}`);
  }
  if (pageErrors.length) fail(`${name}: uncaught error in the page: ${pageErrors.join("; ")}`);
  if (tokenInUrls.length || page.url().includes(token)) fail(`${name}: the token appeared in a URL`);
}

async function screenshot(name) {
  await page.screenshot({ path: join(artifacts, name), fullPage: true });
}

/** Waits until `predicate(arg)`, evaluated in the page, is true; `what` names it on timeout. */
async function until(what, predicate, arg) {
  try {
    await page.waitForFunction(predicate, arg, { timeout: TIMEOUT_MS });
  } catch {
    throw new Error(`timed out waiting for ${what}`);
  }
}

function byTestId(id, scope = page) {
  return scope.locator(`[data-testid="${id}"]`);
}

function fact(key, id) {
  return page.locator(`[data-testid="fact"][data-key="${key}"][data-id="${id}"]`);
}

const runRow = page.locator(`[data-testid="run-row"][data-run-id="${runId}"]`);
const approval = byTestId("approval").first();

await stage("a viewer sees the pending approval without buttons to decide it", async () => {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const viewerPage = await context.newPage();
  viewerPage.setDefaultTimeout(TIMEOUT_MS);
  await viewerPage.goto(baseUrl);
  await byTestId("token-input", viewerPage).fill(viewerToken);
  await byTestId("sign-in", viewerPage).click();
  await viewerPage.locator(`[data-testid="run-row"][data-run-id="${runId}"]`).click();
  const card = byTestId("approval", viewerPage).first();
  await card.waitFor();
  await byTestId("decide-not-allowed", card).waitFor();
  const buttons = await card.locator('[data-testid="approve"], [data-testid="reject"]').count();
  if (buttons) throw new Error(`a viewer is offered ${buttons} decision buttons`);
  await viewerPage.screenshot({ path: join(artifacts, "00-viewer-cannot-decide.png"), fullPage: true });
  await context.close();
});

await stage("sign in with the approver's token", async () => {
  await page.goto(baseUrl);
  await byTestId("token-input").fill(token);
  await byTestId("sign-in").click();
  await until("the signed-in user in the header", () =>
    document.querySelector('[data-testid="whoami"]')?.textContent.includes("alice"),
  );
});

await stage("the run is listed, awaiting approval", async () => {
  await runRow.waitFor();
  await until(
    "the run's row to say awaiting_approval",
    (id) =>
      document.querySelector(`[data-run-id="${id}"] [data-testid="run-row-status"]`)?.dataset.status ===
      "awaiting_approval",
    runId,
  );
  await screenshot("01-signed-in.png");
});

await stage("open the run", async () => {
  await runRow.click();
  await until(
    "the run's address in the hash",
    (id) => location.hash === `#/runs/${encodeURIComponent(id)}`,
    runId,
  );
  await until(
    "the run's status",
    () => document.querySelector('[data-testid="run-status"]')?.dataset.status === "awaiting_approval",
  );
  await page.evaluate(() => {
    window.notReloaded = true;
  });
});

await stage("the timeline shows the cycles and the stop", async () => {
  await until("three cycles", () => document.querySelectorAll('[data-testid="cycle"]').length === 3);
  await until("the stop awaiting approval", () =>
    [...document.querySelectorAll('[data-testid="run-stopped"]')].some(
      (stop) => stop.dataset.reason === "awaiting_approval",
    ),
  );
  const firstCycle = await byTestId("cycle").first().innerText();
  if (!firstCycle.includes("seeds")) throw new Error(`cycle 1 does not name the seeds agent: ${firstCycle}`);
});

await stage("facts are listed by key", async () => {
  for (const key of ["changes", "ci", "evaluations", "constraints"]) {
    await page.locator(`[data-testid="fact-key"][data-key="${key}"]`).waitFor();
  }
  await fact("changes", "pr-1412").waitFor();
  if (await fact("releases", "release-2-4-0").count())
    throw new Error("the release is a fact before anyone approved it");
});

await stage("the pending approval is shown with its content", async () => {
  await approval.waitFor();
  const content = await byTestId("approval-content", approval).innerText();
  if (!content.includes('"2.4.0"') || !content.includes('"ship": true'))
    throw new Error(`unexpected content: ${content}`);
  await screenshot("02-awaiting-approval.png");
});

await stage("a fact's provenance", async () => {
  await fact("evaluations", "assessment-pr-1412").click();
  const detail = page.locator(
    '[data-testid="fact-detail"][data-key="evaluations"][data-id="assessment-pr-1412"]',
  );
  await detail.waitFor();
  const agent = await byTestId("provenance-agent", detail).first().innerText();
  if (agent !== "assess-high-risk") throw new Error(`agent is ${agent}, not assess-high-risk`);
  const source = byTestId("derived-from", detail).filter({ hasText: "changes/pr-1412" });
  await source.waitFor();
  await screenshot("03-provenance.png");
  await source.click();
  await page.locator('[data-testid="fact-detail"][data-key="changes"][data-id="pr-1412"]').waitFor();
});

await stage("approve the release", async () => {
  await byTestId("approve", approval).click();
  await byTestId("decision", approval).waitFor();
});

await stage("the live stream follows the run to convergence", async () => {
  await until(
    "the status to become stopped",
    () => document.querySelector('[data-testid="run-status"]')?.dataset.status === "stopped",
  );
  await until(
    "the stop reason converged",
    () => document.querySelector('[data-testid="stop-reason"]')?.dataset.reason === "converged",
  );
  await until(
    "the timeline to show the resume and the converged stop",
    () =>
      document.querySelector('[data-testid="resumed"]') &&
      [...document.querySelectorAll('[data-testid="run-stopped"]')].some(
        (stop) => stop.dataset.reason === "converged",
      ),
  );
  await byTestId("fact-approver", fact("releases", "release-2-4-0")).filter({ hasText: "alice" }).waitFor();
  await until(
    "the run's row in the list to say stopped",
    (id) =>
      document.querySelector(`[data-run-id="${id}"] [data-testid="run-row-status"]`)?.dataset.status ===
      "stopped",
    runId,
  );
  if (!(await page.evaluate(() => window.notReloaded))) throw new Error("the page was reloaded");
});

await stage("the approved release's provenance names alice", async () => {
  await fact("releases", "release-2-4-0").click();
  const detail = page.locator('[data-testid="fact-detail"][data-key="releases"][data-id="release-2-4-0"]');
  const approver = await byTestId("provenance-approver", detail).first().innerText();
  if (!approver.startsWith("alice")) throw new Error(`approver is ${approver}`);
  await screenshot("04-approved.png");
});

await stage("verify and replay from the page, answered in sentences with the hashes", async () => {
  // The predicates run in the page, so each finds the result itself.
  await byTestId("verify").click();
  await until("verify's sentence", () => {
    const out = document.querySelector('[data-testid="audit-result"]');
    const text = out?.textContent ?? "";
    return out?.dataset.kind === "verify" && text.startsWith("Intact:") && /record hash [0-9a-f]{64}/.test(text);
  });
  await byTestId("replay").click();
  await until("replay's sentence", () => {
    const out = document.querySelector('[data-testid="audit-result"]');
    const text = out?.textContent ?? "";
    return out?.dataset.kind === "replay" && text.startsWith("Identical:") && /root hash [0-9a-f]{64}/.test(text);
  });
  const text = await byTestId("audit-result").innerText();
  if (text.includes("{")) throw new Error(`the result shows raw JSON: ${text}`);
  await screenshot("05-replayed.png");
});

await browser.close();
console.log(`viewer test passed; screenshots in ${artifacts}`);
