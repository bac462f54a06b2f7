// One installation's privacy page: /api/v1/usage-stats/* (its own agent, on this machine).
"use strict";

(() => {
  const BASE = "/api/v1/usage-stats";
  const { element, enumLabel, plot, setText, versionLabel, weekLabel } = Pages;
  const POST = { method: "POST", headers: { "Content-Type": "application/json" }, body: "{}" };
  let schemaVersion = null;

  const REASONS = {
    CONSENT_REASON_DEFAULT: "Sharing is off until you switch it on.",
    CONSENT_REASON_USER_CHOICE: "",
    CONSENT_REASON_DO_NOT_TRACK:
      "DO_NOT_TRACK is set on this computer: nothing is recorded or sent, whatever is chosen here.",
    CONSENT_REASON_AGENT_SWITCH:
      "The statistics agent is switched off by its own setting: nothing is recorded or sent.",
  };
  const STORAGE = {
    STORAGE_CONDITION_FULL: "the disk is full: new events are not recorded until there is room",
    STORAGE_CONDITION_FAILING: "the agent cannot write to its database (see its log)",
  };
  const OUTCOMES = {
    DELIVERY_OUTCOME_ACCEPTED: "accepted",
    DELIVERY_OUTCOME_RETRYING: "will be retried",
    DELIVERY_OUTCOME_DROPPED: "refused by the server",
  };

  function failed(answer) {
    const error = document.getElementById("load-error");
    error.textContent = `The statistics agent did not answer: ${Pages.errorText(answer)}.`;
    error.hidden = false;
  }

  function facts(id, rows) {
    const list = document.getElementById(id);
    list.replaceChildren();
    for (const [name, value] of rows) list.append(element("dt", name), element("dd", value));
  }

  function when(timestamp) {
    return timestamp ? new Date(timestamp).toLocaleString("en-GB", { timeZoneName: "short" }) : "never";
  }

  function receiptId(base64) {
    if (!base64) return "";
    return Array.from(atob(base64), (c) => c.charCodeAt(0).toString(16).padStart(2, "0")).join("");
  }

  function showConsent(consent) {
    const sharing = consent.effective === "CONSENT_STATE_SHARING";
    const overridden = ["CONSENT_REASON_DO_NOT_TRACK", "CONSENT_REASON_AGENT_SWITCH"].includes(consent.reason);
    const toggle = document.getElementById("sharing");
    toggle.checked = sharing;
    toggle.disabled = overridden;
    setText("consent-state", sharing
      ? "Sharing is on: once a week, this installation sends the report shown below."
      : "Sharing is off: figures stay on this computer and nothing is sent.");
    setText("consent-reason", REASONS[consent.reason] || "");
    document.body.dataset.consent = sharing ? "sharing" : "local-only";
    document.getElementById("disclosure-details").open = !sharing;
  }

  function showDisclosure(disclosure) {
    schemaVersion = disclosure.schemaVersion;
    setText("disclosure-intro",
      `This list is generated from the report's definition (version ${disclosure.schemaVersion}), so it is ` +
      "exactly what a report can hold. Every value is a number, a yes/no or a choice from a fixed list." +
      (disclosure.freeTextFields.length ? "" : " No field can hold text."));
    setText("disclosure-summary", `All ${disclosure.fields.length} fields and why each is collected`);
    const body = document.querySelector("#disclosure tbody");
    body.replaceChildren();
    for (const item of disclosure.fields) {
      const row = element("tr");
      const name = element("td");
      name.append(element("code", item.field));
      row.append(name, element("td", item.why));
      body.append(row);
    }
    const never = document.getElementById("never-collected");
    never.replaceChildren(...disclosure.neverCollected.map((text) => element("li", text)));
  }

  function showLocal(local) {
    const { stats, status } = local;
    showConsent(stats.consent);
    const info = stats.installation || {};
    facts("installation", [
      ["App version", versionLabel(info.appVersion)],
      ["Python", versionLabel(info.pythonVersion)],
      ["Platform", enumLabel(info.platform, "PLATFORM_")],
      ["CPU", enumLabel(info.architecture, "CPU_ARCHITECTURE_")],
      ["Runs as", enumLabel(info.deploymentMode, "DEPLOYMENT_MODE_")],
      ["Country (from the time zone)", enumLabel(info.country, "COUNTRY_")],
      ["Recording since", when(stats.firstSeen)],
      ["Events stored", Number(status.storedEvents).toLocaleString("en")],
      ["Reports waiting to be sent", String(status.queuedReports)],
      ["Storage", STORAGE[status.storage] || "working"],
      ["Last delivery", status.lastAttempt
        ? `${when(status.lastAttempt)}: ${OUTCOMES[status.lastOutcome] || "nothing to send"}` +
          (status.lastFailureCode ? ` (${status.lastFailureCode})` : "")
        : "never"],
    ]);
    const week = stats.thisWeek || { usage: {}, errors: [] };
    const usage = week.usage || {};
    setText("this-week-title", week.week ? `This week (${weekLabel(week.week)})` : "This week");
    facts("this-week", [
      ["Print jobs started", String(usage.jobsCreated || 0)],
      ["Completed", String(usage.jobsCompleted || 0)],
      ["Failed", String(usage.jobsFailed || 0)],
      ["App starts", String(usage.appStarts || 0)],
      ["Hours running", String(usage.uptimeHours || 0)],
      ["Errors", String((week.errors || []).reduce((sum, e) => sum + e.count, 0))],
    ]);
    const weeks = stats.recentWeeks || [];
    const x = weeks.map((w) => weekLabel(w.week));
    const quiet = weeks.every((w) => !w.usage.jobsCreated && !w.usage.jobsFailed && !(w.errors || []).length);
    return plot("chart-activity", quiet ? [] : [
      { type: "bar", name: "jobs completed", x, y: weeks.map((w) => w.usage.jobsCompleted || 0), marker: { color: "#1d7a46" } },
      { type: "bar", name: "jobs failed", x, y: weeks.map((w) => w.usage.jobsFailed || 0), marker: { color: "#b42318" } },
      { type: "scatter", mode: "lines+markers", name: "errors", x,
        y: weeks.map((w) => (w.errors || []).reduce((sum, e) => sum + e.count, 0)), marker: { color: "#b26a00" } },
    ], { barmode: "stack", yaxis: { title: { text: "per week" }, rangemode: "tozero" } });
  }

  function showPreview(preview) {
    setText("preview-intro",
      `The report for ${weekLabel(preview.week)}, as it stands now. It is sent only while sharing is on, ` +
      "after the week has ended; these are the exact bytes and the same read as JSON.");
    setText("preview-json", preview.reportJson);
    setText("preview-bytes", preview.report);
  }

  function showLedger(ledger) {
    const body = document.querySelector("#ledger tbody");
    body.replaceChildren();
    for (const sent of ledger.reports) {
      const row = element("tr");
      const receipt = element("td");
      receipt.append(element("code", receiptId(sent.receipt.receiptId)));
      row.append(element("td", weekLabel(sent.week)), element("td", when(sent.sentAt)),
        element("td", enumLabel(sent.receipt.status, "RECEIPT_STATUS_")), receipt);
      body.append(row);
    }
    document.getElementById("ledger-empty").hidden = ledger.reports.length > 0;
    document.getElementById("ledger").hidden = ledger.reports.length === 0;
    const deletions = document.getElementById("deletions");
    deletions.replaceChildren(...ledger.deletionReceipts.map((d) => element("li",
      `${when(d.deletedAt)}: the server deleted ${d.reportsDeleted} report(s); receipt ${receiptId(d.receiptId)}`)));
    if (!ledger.deletionReceipts.length) deletions.append(element("li", "None."));
  }

  async function load() {
    const answers = await Promise.all(["disclosure", "local?weeks=12", "preview", "ledger"].map(
      (path) => Pages.fetchJson(`${BASE}/${path}`)));
    const bad = answers.find((a) => !a.ok);
    if (bad) return failed(bad);
    document.getElementById("load-error").hidden = true;
    const [disclosure, local, preview, ledger] = answers.map((a) => a.body);
    showDisclosure(disclosure);
    await showLocal(local);
    showPreview(preview);
    showLedger(ledger);
    document.body.dataset.loaded = "true";
  }

  async function change(path, body, message) {
    const answer = await Pages.fetchJson(`${BASE}/${path}`, { ...POST, body: JSON.stringify(body) });
    if (!answer.ok) {
      failed(answer);
      return null;
    }
    setText("consent-message", message);
    await load();
    return answer.body;
  }

  async function toggleSharing(event) {
    const toggle = event.target;
    if (toggle.checked) {
      await change("opt-in", { schema_version: schemaVersion }, "Thank you: sharing is on.");
      return;
    }
    toggle.checked = true; // until confirmed
    if (await Pages.confirmWith("confirm-opt-out")) {
      await change("opt-out", {}, "Sharing is off. The server has been asked to delete what was sent.");
    }
  }

  async function deleteEverything() {
    if (!(await Pages.confirmWith("confirm-delete"))) return;
    const deleted = await change("delete-all", {}, "");
    if (deleted) {
      setText("data-message",
        `Deleted ${deleted.eventsDeleted || 0} event(s) and ${deleted.reportsDeleted || 0} report(s) from this computer.`);
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    document.getElementById("sharing").addEventListener("change", toggleSharing);
    document.getElementById("delete").addEventListener("click", deleteEverything);
    load();
  });
})();
