// Drives the run viewer in headless Chromium against a live converge server, for
// crates/converge-server/tests/browser.rs (which starts the server and submits the run).
//
// Environment: BASE_URL (the server), APPROVER_TOKEN (an approver of the run's tenant who did
// not submit it), VIEWER_TOKEN (a viewer of the same tenant), SUBMITTER_TOKEN (the submitter), RUN_ID (a run of
// examples/release-approval.yaml awaiting approval), OTHER_RUN_ID (a stopped run whose
// objective is "Greet the world"), PAYOUTS_RUN_ID (a run of examples/weekly-payouts.yaml
// awaiting approval), CHURN_RUN_ID (a converged run of examples/churn-explainer.yaml whose model
// was SERVED_MODEL, not the llama3.2 it asked for), CHROMIUM (the browser executable),
// ARTIFACTS (a directory for screenshots).
//
// First, as the viewer, checks that the pending approval is shown without Approve and Reject
// buttons (the viewer's role cannot decide). Then signs in as the approver, filters and
// searches the runs list, opens the run, checks its timeline, facts, the details beside a
// fact with its provenance graph, and the pending approval, approves it, sees the card give
// way to the decision, and follows the live event stream (no reload) until the run converges
// with the release approved by alice and drawn in the release's provenance graph; reads the
// model exchange a hypothesis of the churn run cites; last, the page at a phone's width. Exits non-zero with a message on the first failed
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
const submitterToken = env("SUBMITTER_TOKEN");
const runId = env("RUN_ID");
const otherRunId = env("OTHER_RUN_ID");
const payoutsRunId = env("PAYOUTS_RUN_ID");
const churnRunId = env("CHURN_RUN_ID");
const retriedRunId = env("RETRIED_RUN_ID");
const servedModel = env("SERVED_MODEL");
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
  await byTestId("verify", viewerPage).waitFor();
  if (await byTestId("cancel-run", viewerPage).count()) throw new Error("a viewer is offered Cancel");
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

/** The ids of the runs the list shows, in order. */
async function listedRuns() {
  return page.evaluate(() =>
    [...document.querySelectorAll('[data-testid="run-row"]')].map((row) => row.dataset.runId),
  );
}

/** Waits until the list shows exactly `ids` (in any order). */
async function untilListed(what, ids) {
  await until(
    what,
    (wanted) => {
      const shown = [...document.querySelectorAll('[data-testid="run-row"]')].map((row) => row.dataset.runId);
      return shown.length === wanted.length && wanted.every((id) => shown.includes(id));
    },
    ids,
  );
}

await stage("the runs list shows job names, objectives and ages, filtered by status and searched", async () => {
  await untilListed("all five runs", [runId, otherRunId, payoutsRunId, churnRunId, retriedRunId]);
  const objective = await byTestId("run-row-objective", runRow).innerText();
  if (!objective.includes("payments-service 2.4.0"))
    throw new Error(`the run's row shows the objective ${JSON.stringify(objective)}`);
  const job = await byTestId("run-row-job", runRow).innerText();
  if (job !== "release-approval.yaml") throw new Error(`the run's row shows the job ${JSON.stringify(job)}`);
  const age = await runRow.locator("time").innerText();
  if (!/just now|min ago/.test(age)) throw new Error(`the run's age reads ${JSON.stringify(age)}`);

  await byTestId("runs-status").selectOption("stopped");
  await untilListed("only the stopped runs", [otherRunId, churnRunId, retriedRunId]);
  await byTestId("runs-status").selectOption("awaiting_approval");
  await untilListed("only the runs awaiting approval", [runId, payoutsRunId]);
  await screenshot("01a-runs-filtered.png");
  await byTestId("runs-status").selectOption("");

  await byTestId("runs-search").fill("greet THE");
  await untilListed("only the run whose objective matches", [otherRunId]);
  const counted = await byTestId("runs-count").innerText();
  if (counted !== "1 of 5 runs") throw new Error(`the count reads ${JSON.stringify(counted)}`);
  await byTestId("runs-search").fill(runId);
  await untilListed("only the run whose id matches", [runId]);
  await byTestId("runs-search").fill("weekly-payouts");
  await untilListed("only the run whose job matches", [payoutsRunId]);
  await byTestId("runs-search").fill("no such run anywhere");
  await byTestId("runs-none").waitFor();
  if ((await listedRuns()).length) throw new Error("a run is listed for a search nothing matches");
  await screenshot("01b-runs-searched.png");
  await byTestId("runs-search").fill("");
  await untilListed("all five runs again", [runId, otherRunId, payoutsRunId, churnRunId, retriedRunId]);
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
  if (await byTestId("cancel-run").count()) throw new Error("an approver is offered Cancel");
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

/** Fails unless the fact's details are in the fact's own list item, right under it. */
async function detailBesideFact(key, id) {
  const placement = await page.evaluate(
    ([key, id]) => {
      const button = document.querySelector(`[data-testid="fact"][data-key="${key}"][data-id="${id}"]`);
      const detail = document.querySelector(`[data-testid="fact-detail"][data-key="${key}"][data-id="${id}"]`);
      if (!button || !detail) return "missing";
      if (button.closest("li") !== detail.closest("li")) return "not in the fact's list item";
      const gap = detail.getBoundingClientRect().top - button.getBoundingClientRect().bottom;
      return gap >= 0 && gap <= 24 ? "beside" : `${Math.round(gap)} px below the fact`;
    },
    [key, id],
  );
  if (placement !== "beside") throw new Error(`the details of ${key}/${id} are ${placement}`);
}

/** The provenance graph's nodes: `{node, key, id, name, depth}` each. */
async function graphNodes(detail) {
  return detail.locator('[data-testid="provenance-graph"] [data-testid="graph-node"]').evaluateAll((nodes) =>
    nodes.map((node) => ({ ...node.dataset, depth: Number(node.dataset.depth) })),
  );
}

function hasNode(nodes, wanted) {
  return nodes.some((node) => Object.entries(wanted).every(([name, value]) => node[name] === value));
}

/** A fact as the API answers it, read with the approver's token (in a header). */
async function factFromApi(key, id) {
  const response = await fetch(`${baseUrl}/v1/runs/${runId}/facts/${key}/${id}`, {
    headers: { Authorization: `Bearer ${token}` },
  });
  if (!response.ok) throw new Error(`GET fact ${key}/${id}: ${response.status}`);
  return response.json();
}

await stage("a fact's details beside it, with its provenance drawn", async () => {
  await fact("evaluations", "assessment-pr-1412").click();
  const detail = page.locator(
    '[data-testid="fact-detail"][data-key="evaluations"][data-id="assessment-pr-1412"]',
  );
  await detail.waitFor();
  await detailBesideFact("evaluations", "assessment-pr-1412");
  const expanded = await fact("evaluations", "assessment-pr-1412").getAttribute("aria-expanded");
  if (expanded !== "true") throw new Error(`the fact's button says aria-expanded=${expanded}`);
  const nodes = await graphNodes(detail);
  const expected = [
    { node: "fact", key: "evaluations", id: "assessment-pr-1412", depth: 0 },
    { node: "fact", key: "changes", id: "pr-1412", depth: 1 },
    { node: "agent", name: "assess-high-risk", depth: 1 },
  ];
  for (const wanted of expected) {
    if (!hasNode(nodes, wanted))
      throw new Error(`no graph node ${JSON.stringify(wanted)} among ${JSON.stringify(nodes)}`);
  }
  if (nodes.some((node) => node.node === "approver"))
    throw new Error(`an approver is drawn for a fact nobody approved: ${JSON.stringify(nodes)}`);
  const edges = await detail.locator('[data-testid="provenance-graph"] [data-edge]').count();
  if (edges < nodes.length - 1) throw new Error(`${nodes.length} nodes but only ${edges} edges`);
  const agent = await byTestId("provenance-agent", detail).first().innerText();
  if (agent !== "assess-high-risk") throw new Error(`agent is ${agent}, not assess-high-risk`);
  const source = byTestId("derived-from", detail).filter({ hasText: "changes/pr-1412" });
  await source.waitFor();
  await screenshot("03-provenance.png");
  await source.click();
  await page.locator('[data-testid="fact-detail"][data-key="changes"][data-id="pr-1412"]').waitFor();
  await detailBesideFact("changes", "pr-1412");
});

await stage("approve the release", async () => {
  const proposal = await approval.getAttribute("data-proposal");
  await byTestId("approve", approval).click();
  const decided = page.locator(`[data-testid="decision-card"][data-proposal="${proposal}"]`);
  await decided.waitFor();
  const text = await byTestId("decision", decided).innerText();
  if (!text.startsWith("Approved by alice")) throw new Error(`the decision reads ${JSON.stringify(text)}`);
  if (await byTestId("approve").count()) throw new Error("an Approve button stays after the decision");
  await until(
    "the decision card to say the release was promoted",
    (id) =>
      document.querySelector(`[data-testid="decision-card"][data-proposal="${id}"]`)?.dataset.outcome ===
      "promoted",
    proposal,
  );
  const outcome = await byTestId("decision-outcome", decided).innerText();
  if (!outcome.startsWith("Promoted")) throw new Error(`the outcome reads ${JSON.stringify(outcome)}`);
  if (await byTestId("approval").count()) throw new Error("the pending card stays beside the decision");
  await screenshot("03a-decided.png");
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
  await detailBesideFact("releases", "release-2-4-0");
  const nodes = await graphNodes(detail);
  const release = await factFromApi("releases", "release-2-4-0");
  const expected = [
    { node: "fact", key: "releases", id: "release-2-4-0", depth: 0 },
    { node: "approver", name: "alice", depth: 1 },
    { node: "agent", name: "propose-release", depth: 1 },
    ...release.derived_from.map(({ key, id }) => ({ node: "fact", key, id, depth: 1 })),
  ];
  if (!release.derived_from.length) throw new Error("the API says the release is derived from nothing");
  for (const wanted of expected) {
    if (!hasNode(nodes, wanted))
      throw new Error(`no graph node ${JSON.stringify(wanted)} among ${JSON.stringify(nodes)}`);
  }
  await detail.locator('[data-edge="approved"]').waitFor();
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

await stage("a rejected payout's card gives way to the refusal and its reason", async () => {
  await page.locator(`[data-testid="run-row"][data-run-id="${payoutsRunId}"]`).click();
  await until("four pending payouts", () => document.querySelectorAll('[data-testid="approval"]').length === 4);
  const card = byTestId("approval").first();
  const proposal = await card.getAttribute("data-proposal");
  await byTestId("reject", card).click();
  await byTestId("reject-reason", card).fill("supplier bank details changed this week");
  await byTestId("reject-confirm", card).click();
  const decided = page.locator(`[data-testid="decision-card"][data-proposal="${proposal}"]`);
  await until(
    "the refusal on the rejected payout's card",
    (id) => {
      const found = document.querySelector(`[data-testid="decision-card"][data-proposal="${id}"]`);
      return found?.dataset.verdict === "reject" && found.dataset.outcome === "refused";
    },
    proposal,
  );
  const text = await byTestId("decision", decided).innerText();
  if (!text.startsWith("Rejected by alice") || !text.includes("supplier bank details changed this week"))
    throw new Error(`the decision reads ${JSON.stringify(text)}`);
  const pending = await byTestId("approval").count();
  if (pending !== 3) throw new Error(`${pending} payouts are pending after one of four was rejected`);
  await screenshot("05a-rejected.png");
});

await stage("a submitter cancels a parked run from the page", async () => {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const submitterPage = await context.newPage();
  submitterPage.setDefaultTimeout(TIMEOUT_MS);
  await submitterPage.goto(`${baseUrl}/#/runs/${payoutsRunId}`);
  await byTestId("token-input", submitterPage).fill(submitterToken);
  await byTestId("sign-in", submitterPage).click();
  await byTestId("cancel-run", submitterPage).click();
  await byTestId("cancel-reason", submitterPage).fill("the invoices go in next week's batch");
  await byTestId("cancel-confirm", submitterPage).click();
  try {
    await submitterPage.waitForFunction(
      () =>
        document.querySelector('[data-testid="run-status"]')?.dataset.status === "stopped" &&
        document.querySelector('[data-testid="stop-reason"]')?.textContent.includes("next week's batch"),
    );
  } catch {
    throw new Error("the cancelled run does not say it stopped with the reason given");
  }
  if (await byTestId("cancel-run", submitterPage).isVisible()) throw new Error("Cancel stays on a stopped run");
  await submitterPage.screenshot({ path: join(artifacts, "05b-cancelled.png"), fullPage: true });
  await context.close();
});

await stage("a hypothesis from the model shows the exchange it cites, as text", async () => {
  await page.locator(`[data-testid="run-row"][data-run-id="${churnRunId}"]`).click();
  await fact("hypotheses", "competitor-pull").click();
  const detail = page.locator(
    '[data-testid="fact-detail"][data-key="hypotheses"][data-id="competitor-pull"]',
  );
  await detail.waitFor();
  await detailBesideFact("hypotheses", "competitor-pull");
  const exchange = byTestId("exchange", detail).first();
  await exchange.waitFor();
  const cited = await byTestId("provenance", detail).locator("dd").allInnerTexts();
  const observation = await exchange.getAttribute("data-observation");
  if (!cited.some((text) => text.includes(observation)))
    throw new Error(`the exchange ${observation} is not among the evidence ${JSON.stringify(cited)}`);
  // Folded texts are read too: textContent includes a closed <details>' contents.
  const expect = async (testid, check, what) => {
    const text = await byTestId(testid, exchange).textContent();
    if (!check(text)) throw new Error(`${testid} reads ${JSON.stringify(text)}, expected ${what}`);
  };
  await expect("exchange-provider", (t) => t.startsWith("ollama") && t.includes("127.0.0.1"), "ollama at the scripted server");
  await expect("exchange-model", (t) => t === "llama3.2", "the model the spec asked for");
  await expect("exchange-served", (t) => t === servedModel, `the model that answered, ${servedModel}`);
  await expect("exchange-tokens", (t) => t === "412 in, 96 out", "412 in, 96 out");
  await expect("exchange-latency", (t) => /^\d+ ms$/.test(t), "a latency in ms");
  await expect("exchange-system", (t) => t.includes("You are a careful retention analyst."), "the spec's system prompt");
  await expect(
    "exchange-prompt",
    (t) => t.includes("- competitor-launch: A competitor opened two stores in the north region in June"),
    "the rendered user prompt",
  );
  // The answer is indented JSON, and its markup is text: no element was made from it.
  await expect(
    "exchange-answer",
    (t) => t.includes('"claim": "<b>The competitor\'s new stores</b> draw customers away"'),
    "the model's answer, indented, with its markup as text",
  );
  if (await exchange.locator("b").count()) throw new Error("the answer's markup became an element");
  if (await exchange.locator(".exchange-error").count()) throw new Error("an error is shown for an exchange that worked");
  const answer = byTestId("exchange-answer", exchange);
  if (!(await answer.evaluate((node) => node.open))) throw new Error("the answer starts folded");
  const overflow = await answer.locator("pre").evaluate((node) => getComputedStyle(node).overflowY);
  if (overflow !== "auto") throw new Error(`a long answer does not scroll in its box (overflow-y ${overflow})`);
  await exchange.scrollIntoViewIfNeeded();
  await screenshot("07-model-exchange.png");
});

await stage("a retry shows between the stop it ended and the cycle it ran", async () => {
  await page.locator(`[data-testid="run-row"][data-run-id="${retriedRunId}"]`).click();
  await until("the retried run's status", () =>
    document.querySelector('[data-testid="run-status"]')?.dataset.status === "stopped",
  );
  await byTestId("retried").waitFor();
  const retry = await byTestId("retried").innerText();
  for (const words of ["alice", "score", "again after cycle", "the feed is ready"]) {
    if (!retry.includes(words)) throw new Error(`the retry reads ${JSON.stringify(retry)}, without ${words}`);
  }
  // In order: the first stop, the retry, the cycle it ran, the last stop.
  const order = await page.evaluate(() =>
    [...document.querySelectorAll('[data-testid="run-stopped"], [data-testid="retried"], [data-testid="cycle"]')].map(
      (node) => node.dataset.testid,
    ),
  );
  const at = order.indexOf("retried");
  if (order[at - 1] !== "run-stopped" || order[at + 1] !== "cycle" || order.at(-1) !== "run-stopped")
    throw new Error(`the timeline reads ${JSON.stringify(order)}`);
  await screenshot("08-retried.png");
});

await stage("the page at a phone's width", async () => {
  await page.setViewportSize({ width: 390, height: 844 });
  await until("the layout to fit the width", () => document.documentElement.scrollWidth <= window.innerWidth);
  const stacked = await page.evaluate(() => {
    const runs = document.querySelector(".runs-pane").getBoundingClientRect();
    const run = document.querySelector("#run-pane").getBoundingClientRect();
    return run.top >= runs.bottom - 1;
  });
  if (!stacked) throw new Error("the runs list and the run are not stacked at a narrow width");
  await screenshot("06-narrow.png");
});

await browser.close();
console.log(`viewer test passed; screenshots in ${artifacts}`);
