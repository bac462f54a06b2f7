// The privacy page of printernizer_stats.sdk.fastapi: this installation's own statistics, over the
// router's endpoints beside this page. Every text a person reads goes through _(): its translation comes
// with the page (#messages), made from the same gettext catalog as the page's markup.
"use strict";

(() => {
  const MESSAGES = JSON.parse(document.getElementById("messages").textContent);
  const LANG = document.documentElement.lang || "en";
  // The router's prefix: this page is <prefix>/page, whatever is in front (an ingress path, say).
  const BASE = window.location.pathname.replace(/\/page\/?$/, "");
  const QUERY = `?lang=${encodeURIComponent(LANG)}`;
  let schemaVersion = null;

  /** The translation of `msgid`, with {name} replaced by values[name]. */
  function _(msgid, values = {}) {
    let text = Object.prototype.hasOwnProperty.call(MESSAGES, msgid) && MESSAGES[msgid] ? MESSAGES[msgid] : msgid;
    for (const [name, value] of Object.entries(values)) text = text.split(`{${name}}`).join(String(value));
    return text;
  }

  const REASONS = {
    CONSENT_REASON_DEFAULT: _("Sharing is off until you switch it on."),
    CONSENT_REASON_DO_NOT_TRACK:
      _("DO_NOT_TRACK is set on this computer: nothing is recorded or sent, whatever is chosen here."),
    CONSENT_REASON_AGENT_SWITCH:
      _("The statistics agent is switched off by its own setting: nothing is recorded or sent."),
  };
  const STORAGE = {
    STORAGE_CONDITION_FULL: _("the disk is full: new events are not recorded until there is room"),
    STORAGE_CONDITION_FAILING: _("the agent cannot write to its database (see its log)"),
  };
  const OUTCOMES = {
    DELIVERY_OUTCOME_ACCEPTED: _("accepted"),
    DELIVERY_OUTCOME_RETRYING: _("will be retried"),
    DELIVERY_OUTCOME_DROPPED: _("refused by the server"),
  };
  const LABELS = {
    DEPLOYMENT_MODE_HOME_ASSISTANT_ADDON: _("Home Assistant add-on"),
    DEPLOYMENT_MODE_DOCKER: _("Docker"),
    DEPLOYMENT_MODE_RASPBERRY_PI: _("Raspberry Pi"),
    DEPLOYMENT_MODE_STANDALONE: _("Standalone"),
    PLATFORM_LINUX: _("Linux"),
    PLATFORM_WINDOWS: _("Windows"),
    PLATFORM_MACOS: _("macOS"),
    PLATFORM_FREEBSD: _("FreeBSD"),
    CPU_ARCHITECTURE_X86_64: _("x86-64"),
    CPU_ARCHITECTURE_ARM64: _("ARM64"),
    CPU_ARCHITECTURE_ARMV7: _("ARMv7"),
    RECEIPT_STATUS_ACCEPTED: _("accepted"),
    RECEIPT_STATUS_DUPLICATE: _("already received"),
  };
  // The consent levels, lowest first: each shares what the one before it does, and more.
  const LEVELS = {
    CONSENT_LEVEL_BASICS: _("Basics"),
    CONSENT_LEVEL_PRINTERS_AND_FEATURES: _("Printers and features"),
    CONSENT_LEVEL_USAGE: _("Usage"),
    CONSENT_LEVEL_ERRORS: _("Everything"),
  };
  const LEVEL_PREFIX = "CONSENT_LEVEL_";
  const regions = new Intl.DisplayNames([LANG], { type: "region" });

  function label(name) {
    if (!name || name.endsWith("_UNSPECIFIED")) return _("not known yet");
    if (name.startsWith("COUNTRY_")) {
      const code = name.slice(8);
      try { return regions.of(code) || code; } catch (_error) { return code; }
    }
    return LABELS[name] || (name.endsWith("_OTHER") ? _("other") : name);
  }

  /** A level's name in the router's API ("printers_and_features") from its enum name, and back. */
  function apiLevel(level) {
    return level.slice(LEVEL_PREFIX.length).toLowerCase();
  }

  function levelLabel(level) {
    return LEVELS[level] || LEVELS.CONSENT_LEVEL_ERRORS;
  }

  function levelRadios() {
    return Array.from(document.querySelectorAll("input[name=level]"));
  }

  function version(v) {
    if (!v || (!v.major && !v.minor && !v.patch)) return _("not known yet");
    return `${v.major || 0}.${v.minor || 0}.${v.patch || 0}`;
  }

  function weekLabel(week) {
    return week ? `${week.year}-W${String(week.week).padStart(2, "0")}` : "";
  }

  function number(value) {
    return Number(value || 0).toLocaleString(LANG);
  }

  function when(timestamp) {
    return timestamp ? new Date(timestamp).toLocaleString(LANG, { timeZoneName: "short" }) : _("never");
  }

  function element(tag, text) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }

  function setText(id, text) {
    document.getElementById(id).textContent = text;
  }

  function facts(id, rows) {
    const list = document.getElementById(id);
    list.replaceChildren();
    for (const [name, value] of rows) list.append(element("dt", name), element("dd", value));
  }

  function hex(base64) {
    if (!base64) return "";
    return Array.from(atob(base64), (c) => c.charCodeAt(0).toString(16).padStart(2, "0")).join("");
  }

  /** fetch() that never throws: {ok, status, body}. */
  async function call(path, options = {}) {
    let response;
    try {
      response = await fetch(`${BASE}${path}`, options);
    } catch (_error) {
      return { ok: false, status: 0, body: null };
    }
    let body = null;
    try { body = await response.json(); } catch (_error) { body = null; }
    return { ok: response.ok, status: response.status, body };
  }

  function failed(answer) {
    const error = document.getElementById("load-error");
    const detail = answer.body && (answer.body.detail || answer.body.message);
    error.textContent = answer.status === 0
      ? _("Printernizer cannot be reached.")
      : _("The statistics agent did not answer ({status}): {detail}", { status: answer.status, detail: detail || "" });
    error.hidden = false;
  }

  function showConsent(consent) {
    const sharing = consent.effective === "CONSENT_STATE_SHARING";
    const overridden = ["CONSENT_REASON_DO_NOT_TRACK", "CONSENT_REASON_AGENT_SWITCH"].includes(consent.reason);
    const toggle = document.getElementById("sharing");
    toggle.checked = sharing;
    toggle.disabled = overridden;
    // Nothing is checked unless sharing: no level is chosen for the user.
    const level = sharing ? consent.level || "CONSENT_LEVEL_ERRORS" : "";
    for (const radio of levelRadios()) {
      radio.checked = sharing && radio.value === apiLevel(level);
      radio.disabled = overridden;
    }
    setText("consent-state", sharing
      ? _("Sharing is on, at the level “{level}”: once a week, this installation sends the report shown below.",
        { level: levelLabel(level) })
      : _("Sharing is off: figures stay on this computer and nothing is sent."));
    setText("consent-reason", REASONS[consent.reason] || "");
    document.body.dataset.consent = sharing ? "sharing" : "local-only";
    document.body.dataset.level = sharing ? apiLevel(level) : "";
    document.getElementById("disclosure-details").open = !sharing;
  }

  function showDisclosure(disclosure) {
    schemaVersion = disclosure.schemaVersion;
    setText("disclosure-intro",
      _("This list is generated from the report's definition (version {version}), so it is exactly what a report can hold. Every value is a number, a yes/no or a choice from a fixed list. No field can hold text.",
        { version: disclosure.schemaVersion }));
    setText("disclosure-summary", _("All {count} fields and why each is collected", { count: disclosure.fields.length }));
    const body = document.getElementById("disclosure").tBodies[0];
    body.replaceChildren();
    for (const item of disclosure.fields) {
      const row = element("tr");
      const name = element("td");
      name.append(element("code", item.field));
      row.append(name, element("td", item.why), element("td", levelLabel(item.level)));
      body.append(row);
    }
    const never = document.getElementById("never-collected");
    never.replaceChildren(...disclosure.neverCollected.map((text) => element("li", text)));
  }

  function errorsOf(week) {
    return (week.errors || []).reduce((sum, e) => sum + Number(e.count || 0), 0);
  }

  function showDetails(details) {
    const { stats, status } = details;
    showConsent(stats.consent);
    const info = stats.installation || {};
    const outcome = OUTCOMES[status.lastOutcome] || _("nothing to send");
    facts("installation", [
      [_("App version"), version(info.appVersion)],
      [_("Python"), version(info.pythonVersion)],
      [_("Platform"), label(info.platform)],
      [_("CPU"), label(info.architecture)],
      [_("Runs as"), label(info.deploymentMode)],
      [_("Country (from the time zone)"), label(info.country)],
      [_("Recording since"), when(stats.firstSeen)],
      [_("Events stored"), number(status.storedEvents)],
      [_("Reports waiting to be sent"), number(status.queuedReports)],
      [_("Storage"), STORAGE[status.storage] || _("working")],
      [_("Last delivery"), status.lastAttempt ? `${when(status.lastAttempt)}: ${outcome}` : _("never")],
    ]);
    const week = stats.thisWeek || { usage: {}, errors: [] };
    const usage = week.usage || {};
    setText("this-week-title", week.week ? _("This week ({week})", { week: weekLabel(week.week) }) : _("This week"));
    facts("this-week", [
      [_("Print jobs started"), number(usage.jobsCreated)],
      [_("Completed"), number(usage.jobsCompleted)],
      [_("Failed"), number(usage.jobsFailed)],
      [_("Files downloaded"), number(usage.filesDownloaded)],
      [_("App starts"), number(usage.appStarts)],
      [_("Hours running"), number(usage.uptimeHours)],
      [_("Errors"), number(errorsOf(week))],
    ]);
    const weeks = stats.recentWeeks || [];
    const most = Math.max(1, ...weeks.map((w) => Number(w.usage.jobsCompleted || 0) + Number(w.usage.jobsFailed || 0)));
    const body = document.getElementById("activity").tBodies[0];
    body.replaceChildren();
    for (const w of weeks) {
      const row = element("tr");
      const done = Number(w.usage.jobsCompleted || 0);
      const failedJobs = Number(w.usage.jobsFailed || 0);
      const meter = element("meter");
      meter.max = most;
      meter.value = done + failedJobs;
      const bar = element("td");
      bar.append(meter);
      row.append(element("td", weekLabel(w.week)), element("td", number(done)), element("td", number(failedJobs)),
        element("td", number(errorsOf(w))), bar);
      body.append(row);
    }
  }

  function showPreview(preview) {
    // A report from before levels says none: it holds everything.
    const level = JSON.parse(preview.reportJson).consentLevel || "CONSENT_LEVEL_ERRORS";
    setText("preview-intro",
      _("The report for {week} at the level “{level}”, as it stands now. It is sent only while sharing is on, after the week has ended; these are the exact bytes and the same read as JSON.",
        { week: weekLabel(preview.week), level: levelLabel(level) }));
    setText("preview-json", preview.reportJson);
    setText("preview-bytes", preview.report);
  }

  function showLedger(ledger) {
    const body = document.getElementById("ledger").tBodies[0];
    body.replaceChildren();
    for (const sent of ledger.reports) {
      const row = element("tr");
      const receipt = element("td");
      receipt.append(element("code", hex(sent.receipt.receiptId)));
      row.append(element("td", weekLabel(sent.week)), element("td", when(sent.sentAt)),
        element("td", label(sent.receipt.status)), receipt);
      body.append(row);
    }
    document.getElementById("ledger-empty").hidden = ledger.reports.length > 0;
    document.getElementById("ledger").hidden = ledger.reports.length === 0;
    const deletions = document.getElementById("deletions");
    deletions.replaceChildren(...ledger.deletionReceipts.map((d) => element("li",
      _("{when}: the server deleted {count} report(s); receipt {receipt}",
        { when: when(d.deletedAt), count: number(d.reportsDeleted), receipt: hex(d.receiptId) }))));
    if (!ledger.deletionReceipts.length) deletions.append(element("li", _("None.")));
  }

  async function load() {
    const answers = await Promise.all(["/disclosure", "/details", "/preview", "/ledger"].map(
      (path) => call(`${path}${QUERY}`)));
    const bad = answers.find((a) => !a.ok);
    if (bad) return failed(bad);
    document.getElementById("load-error").hidden = true;
    const [disclosure, details, preview, ledger] = answers.map((a) => a.body);
    showDisclosure(disclosure);
    showDetails(details);
    showPreview(preview);
    showLedger(ledger);
    document.body.dataset.loaded = "true";
  }

  async function change(path, method, body, message) {
    const options = { method };
    if (body !== null) {
      options.headers = { "content-type": "application/json" };
      options.body = JSON.stringify(body);
    }
    const answer = await call(`${path}${QUERY}`, options);
    if (!answer.ok || (answer.body && answer.body.success === false)) {
      setText("consent-message", (answer.body && answer.body.message) || "");
      failed(answer);
      await load();
      return null;
    }
    setText("consent-message", message);
    await load();
    return answer.body;
  }

  /** Choosing a level shares at that level: from off, or instead of the level shared so far. */
  async function chooseLevel(event) {
    const radio = event.target;
    const label = levelLabel(LEVEL_PREFIX + radio.value.toUpperCase());
    const message = document.body.dataset.consent === "sharing"
      ? _("Sharing is now at the level “{level}”.", { level: label })
      : _("Thank you: sharing is on, at the level “{level}”.", { level: label });
    await change("/opt-in", "POST", { schema_version: schemaVersion, level: radio.value }, message);
  }

  async function toggleSharing(event) {
    const toggle = event.target;
    if (toggle.checked) {
      // Without a level chosen, everything is shared (as before there were levels); the page then shows it.
      await change("/opt-in", "POST", { schema_version: schemaVersion }, _("Thank you: sharing is on."));
      return;
    }
    toggle.checked = true; // until confirmed
    if (await confirmWith("confirm-opt-out")) {
      await change("/opt-out", "POST", null, _("Sharing is off. The server has been asked to delete what was sent."));
    }
  }

  function confirmWith(dialogId) {
    const dialog = document.getElementById(dialogId);
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "confirm"), { once: true });
      dialog.showModal();
    });
  }

  async function deleteEverything() {
    if (!(await confirmWith("confirm-delete"))) return;
    const deleted = await change("", "DELETE", null, "");
    if (deleted) {
      setText("data-message", _("Deleted {count} event(s) from this computer.", { count: number(deleted.deleted_events) }));
    }
  }

  // A deferred script: the document is parsed by now.
  document.getElementById("sharing").addEventListener("change", toggleSharing);
  for (const radio of levelRadios()) radio.addEventListener("change", chooseLevel);
  document.getElementById("delete").addEventListener("click", deleteEverything);
  load();
})();
