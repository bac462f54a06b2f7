// The admin statistics dashboard: /api/v1/stats/* with the admin token.
"use strict";

(() => {
  const TOKEN_KEY = "printernizer-stats-admin-token";
  const SEVERITY = { SEVERITY_CRITICAL: "critical", SEVERITY_WARNING: "warning", SEVERITY_INFO: "info" };
  const { element, enumLabel, percent, plot, setText, weekLabel } = Pages;

  const token = () => sessionStorage.getItem(TOKEN_KEY);
  const weeks = () => document.getElementById("weeks").value;

  function api(path) {
    return Pages.fetchJson(path, { headers: { Authorization: `Bearer ${token()}` } });
  }

  function showSignIn(message) {
    document.getElementById("dashboard").hidden = true;
    document.getElementById("sign-in").hidden = false;
    const error = document.getElementById("sign-in-error");
    error.textContent = message || "";
    error.hidden = !message;
    document.getElementById("token").focus();
  }

  function labelOf(entry) {
    if (entry.other) return "Other";
    return entry.values.map((v) => v.label).join(" · ");
  }

  function number(value) {
    return Number(value || 0).toLocaleString("en");
  }

  function kpis(active) {
    setText("kpi-total", number(active.totalKnown));
    setText("kpi-active-week", number(active.activeLastWeek));
    setText("kpi-active-4", number(active.activeLast4Weeks));
    const growth = active.weekOverWeekGrowth || 0;
    const kpi = document.getElementById("kpi-growth");
    kpi.textContent = `${growth >= 0 ? "+" : "−"}${Math.abs(growth * 100).toFixed(1)} %`;
    kpi.classList.toggle("up", growth > 0);
    kpi.classList.toggle("down", growth < 0);
    setText("as-of", active.week ? `complete weeks up to ${weekLabel(active.week)}` : "");
  }

  function anomalies(list) {
    const target = document.getElementById("anomaly-list");
    target.replaceChildren();
    if (!list.length) {
      target.append(element("li", "Nothing unusual in this window."));
      return;
    }
    for (const anomaly of list) {
      const item = element("li");
      item.dataset.kind = anomaly.kind;
      const severity = SEVERITY[anomaly.severity] || "info";
      item.append(element("span", severity, `severity ${severity}`));
      item.append(element("span", weekLabel(anomaly.week), "week"));
      const scope = (anomaly.scope || []).map((v) => v.label).join(", ");
      const what = enumLabel(anomaly.kind, "ANOMALY_KIND_") + (scope ? ` (${scope})` : "");
      const text = element("span");
      text.append(element("strong", what), document.createTextNode(
        `: ${anomaly.description}. Observed ${anomaly.observed.toFixed(2)}, baseline ${anomaly.baseline.toFixed(2)}, ` +
        `threshold ${anomaly.threshold.toFixed(2)}.`));
      item.append(text);
      target.append(item);
    }
  }

  function bars(id, distribution, { horizontal = false, hover = null } = {}) {
    const entries = distribution.entries || [];
    const labels = entries.map(labelOf);
    const counts = entries.map((e) => Number(e.installations));
    const trace = horizontal
      ? { type: "bar", orientation: "h", y: labels.slice().reverse(), x: counts.slice().reverse() }
      : { type: "bar", x: labels, y: counts };
    trace.marker = { color: "#2f6fde" };
    trace.hovertemplate = hover || "%{y} installations<extra></extra>";
    if (horizontal) trace.hovertemplate = "%{x} installations<extra></extra>";
    const layout = horizontal ? { margin: { l: 130 }, xaxis: { title: { text: "installations" } } }
      : { yaxis: { title: { text: "installations" } } };
    return plot(id, [trace], layout);
  }

  // A week in which a group is not published (fewer than k installations) is a
  // gap in its line, not a fall to zero.
  function seriesTraces(response, value, extra) {
    const x = response.weeks.map(weekLabel);
    return response.series.map((series) => ({
      x,
      y: series.points.map((p) => (p.suppressed ? null : value(p))),
      name: series.other ? "Other" : series.values.map((v) => v.label).join(" · "),
      ...extra,
    }));
  }

  // Completed jobs per family as stacked bars; beside them each family's share
  // of failed jobs, where both its counts were published that week.
  function printerJobTraces(weeks, completed, failed) {
    const x = weeks.map(weekLabel);
    const label = (series) => (series.other ? "Other" : series.values.map((v) => v.label).join(" · "));
    const failedByFamily = new Map(failed.map((series) => [label(series), series]));
    const traces = completed.map((series) => ({
      type: "bar", x, name: label(series), legendgroup: label(series),
      y: series.points.map((p) => (p.suppressed ? null : Number(p.count))),
    }));
    for (const series of completed) {
      const failures = failedByFamily.get(label(series));
      if (!failures) continue;
      traces.push({
        type: "scatter", mode: "lines+markers", yaxis: "y2", x, name: `${label(series)}: % failed`,
        legendgroup: label(series), line: { dash: "dot" },
        y: series.points.map((p, i) => {
          const f = failures.points[i];
          if (p.suppressed || !f || f.suppressed) return null;
          const done = Number(p.count), lost = Number(f.count);
          return done + lost ? (100 * lost) / (done + lost) : null;
        }),
      });
    }
    return traces;
  }

  async function draw(overview, migration, errors) {
    kpis(overview.active);
    anomalies(overview.anomalies || []);
    const trend = overview.installationTrend || [];
    const x = trend.map((w) => weekLabel(w.week));
    await plot("chart-installations", [
      { type: "scatter", mode: "lines+markers", name: "known", x, y: trend.map((w) => Number(w.known)) },
      { type: "scatter", mode: "lines+markers", name: "active", x, y: trend.map((w) => Number(w.active)) },
      { type: "bar", name: "new", x, y: trend.map((w) => Number(w.newInstallations)), marker: { color: "#9db8ec" } },
    ], { yaxis: { title: { text: "installations" } } });
    const modes = overview.deploymentModes.entries || [];
    await plot("chart-deployment", [{
      type: "pie", hole: 0.45, sort: false,
      labels: modes.map(labelOf), values: modes.map((e) => Number(e.installations)),
    }], { legend: { orientation: "v" } });
    await bars("chart-versions", overview.appVersions);
    await bars("chart-countries", overview.countries, { horizontal: true });
    await bars("chart-printers", overview.printerTypes);
    const features = overview.featureAdoption.features || [];
    await plot("chart-features", [{
      type: "bar", orientation: "h",
      y: features.map((f) => (f.other ? "Other" : f.feature.label)).reverse(),
      x: features.map((f) => f.enabledShare * 100).reverse(),
      text: features.map((f) => percent(f.enabledShare)).reverse(), textposition: "auto",
      hovertemplate: "%{x:.1f} % of installations<extra></extra>", marker: { color: "#1d7a46" },
    }], { margin: { l: 140 }, xaxis: { range: [0, 100], title: { text: "% of installations" } } });
    await plot("chart-errors", seriesTraces(errors, (p) => Number(p.count), { type: "bar" }),
      { barmode: "stack", yaxis: { title: { text: "errors" } } });
    await plot("chart-migration", seriesTraces(migration, (p) => p.share * 100,
      { type: "scatter", mode: "lines", stackgroup: "versions" }),
      { yaxis: { range: [0, 100], title: { text: "% of active installations" } } });
    const k = overview.minGroupSize;
    setText("privacy-note",
      `Groups of fewer than ${k} installations are never shown (where an installation has one value, they are ` +
      `folded into "Other"), and every count is rounded to a multiple of ${k}, so that no small group can be ` +
      "worked out by combining figures.");
  }

  const fixed = (value, digits = 2) => Number(value || 0).toFixed(digits);

  function releaseHealth(answer) {
    const body = document.querySelector("#release-health tbody");
    body.replaceChildren();
    const weeksCovered = answer.weeks || [];
    setText("release-note", weeksCovered.length
      ? `Summed over ${weekLabel(weeksCovered[0])} to ${weekLabel(weeksCovered[weeksCovered.length - 1])}; ` +
        "rates are per installation-week. A regression is flagged where a version is clearly worse than the " +
        "release before it (the rule and its thresholds are in the flag's title)."
      : "");
    for (const release of answer.releases || []) {
      const row = element("tr");
      row.dataset.version = release.version.label;
      const flagged = new Set((release.regressions || []).map((r) => r.metric));
      const cell = (text, metric) => {
        const td = element("td", text);
        const regression = (release.regressions || []).find((r) => r.metric === metric);
        if (regression) {
          td.classList.add("regressed", SEVERITY[regression.severity] || "warning");
          td.title = regression.description;
        }
        return td;
      };
      const reasons = (release.failureReasons || []).slice(0, 3)
        .map((r) => `${r.value.label} ${percent(r.share)}`).join(", ");
      row.append(
        element("td", release.version.label),
        element("td", number(release.installations)),
        cell(release.crashFreeSuppressed ? "too few to show" : percent(release.crashFreeRate),
          "RELEASE_METRIC_CRASH_FREE_RATE"),
        cell(percent(release.jobSuccessRate), "RELEASE_METRIC_JOB_SUCCESS_RATE"),
        cell(fixed(release.errorsPerInstallation), "RELEASE_METRIC_ERRORS_PER_INSTALLATION"),
        element("td", fixed(release.uptimeHoursPerInstallation, 0)),
        element("td", reasons || "–"),
        element("td", release.previous ? release.previous.label : "–"),
      );
      if (flagged.size) row.classList.add("regression");
      body.append(row);
    }
  }

  async function drawUsage(usage, deploymentErrors, featuresByVersion) {
    const weeksOf = usage.weeks || [];
    const x = weeksOf.map((w) => weekLabel(w.week));
    await plot("chart-jobs", [
      { type: "bar", name: "completed", x, y: weeksOf.map((w) => Number(w.jobsCompleted)), marker: { color: "#1d7a46" } },
      { type: "bar", name: "failed", x, y: weeksOf.map((w) => Number(w.jobsFailed)), marker: { color: "#c0392b" } },
      { type: "scatter", mode: "lines+markers", name: "success rate", yaxis: "y2", x,
        y: weeksOf.map((w) => w.jobSuccessRate * 100) },
    ], { barmode: "stack", yaxis: { title: { text: "jobs" } },
      yaxis2: { overlaying: "y", side: "right", range: [0, 100], title: { text: "% completed" } } });
    const jobShare = { type: "bar", hovertemplate: "%{y:.1f} % of the jobs<extra></extra>" };
    await plot("chart-durations", seriesTraces({ weeks: weeksOf.map((w) => w.week), series: usage.jobDurations || [] },
      (p) => p.share * 100, jobShare), { barmode: "stack", yaxis: { range: [0, 100], title: { text: "% of completed jobs" } } });
    await plot("chart-failures", seriesTraces({ weeks: weeksOf.map((w) => w.week), series: usage.failureReasons || [] },
      (p) => p.share * 100, jobShare), { barmode: "stack", yaxis: { range: [0, 100], title: { text: "% of failed jobs" } } });
    await plot("chart-printer-jobs", printerJobTraces(weeksOf.map((w) => w.week),
      usage.completedJobsByPrinterType || [], usage.failedJobsByPrinterType || []),
      { barmode: "stack", yaxis: { title: { text: "completed jobs" } },
        yaxis2: { overlaying: "y", side: "right", rangemode: "tozero", title: { text: "% failed" } } });
    await plot("chart-stability", [
      { type: "scatter", mode: "lines+markers", name: "disconnections per connection", x,
        y: weeksOf.map((w) => w.disconnectionsPerConnection) },
      { type: "scatter", mode: "lines+markers", name: "crash-free installations", yaxis: "y2", x,
        y: weeksOf.map((w) => (w.crashFreeSuppressed ? null : w.crashFreeRate * 100)) },
    ], { yaxis: { title: { text: "per connection" } },
      yaxis2: { overlaying: "y", side: "right", range: [0, 100], title: { text: "% crash-free" } } });
    await plot("chart-files", [
      { type: "scatter", mode: "lines+markers", name: "downloaded", x, y: weeksOf.map((w) => Number(w.filesDownloaded)) },
      { type: "scatter", mode: "lines+markers", name: "uploaded", x, y: weeksOf.map((w) => Number(w.filesUploaded)) },
    ], { yaxis: { title: { text: "files" } } });
    const last = (series) => series.points[series.points.length - 1];
    const shown = (deploymentErrors.series || []).filter((s) => s.points.length && !last(s).suppressed);
    await plot("chart-deployment-errors", [{
      type: "bar", orientation: "h",
      y: shown.map((s) => (s.other ? "Other" : s.values.map((v) => v.label).join(" · "))).reverse(),
      x: shown.map((s) => last(s).rate).reverse(),
      hovertemplate: "%{x:.2f} errors per installation<extra></extra>", marker: { color: "#c0392b" },
    }], { margin: { l: 220 }, xaxis: { title: { text: "errors per active installation" } } });
    const versions = featuresByVersion.versions || [];
    await plot("chart-features-by-version", versions.map((v) => ({
      type: "bar", name: v.version.label,
      x: (v.features || []).map((f) => f.feature.label),
      y: (v.features || []).map((f) => f.enabledShare * 100),
      hovertemplate: "%{y:.1f} % of its installations<extra></extra>",
    })), { barmode: "group", yaxis: { range: [0, 100], title: { text: "% of the version's installations" } } });
  }

  async function load() {
    if (!token()) return showSignIn();
    const error = document.getElementById("load-error");
    const span = `weeks=${weeks()}`;
    const answers = await Promise.all([
      api(`/api/v1/stats/overview?${span}`),
      api(`/api/v1/stats/version-migration?${span}`),
      api(`/api/v1/stats/errors?${span}&group_by=error-type`),
      api("/api/v1/stats/release-health"),
      api(`/api/v1/stats/usage?${span}`),
      api(`/api/v1/stats/error-rates?${span}&by=deployment-mode`),
      api("/api/v1/stats/features-by-version"),
    ]);
    if (answers.some((a) => a.status === 401)) {
      sessionStorage.removeItem(TOKEN_KEY);
      return showSignIn("That admin token was not accepted. Check the servers' admin token file and try again.");
    }
    const failed = answers.find((a) => !a.ok);
    document.getElementById("sign-in").hidden = true;
    document.getElementById("dashboard").hidden = false;
    if (failed) {
      error.textContent = `The statistics could not be loaded: ${Pages.errorText(failed)}.`;
      error.hidden = false;
      return;
    }
    error.hidden = true;
    const [overview, migration, errors, health, usage, deploymentErrors, featuresByVersion] = answers.map((a) => a.body);
    await draw(overview, migration, errors);
    releaseHealth(health);
    await drawUsage(usage, deploymentErrors, featuresByVersion);
    document.body.dataset.loaded = "true";
  }

  async function exportJson() {
    const answer = await fetch(`/api/v1/stats/export?weeks=${weeks()}`, {
      headers: { Authorization: `Bearer ${token()}` },
    });
    if (!answer.ok) {
      const error = document.getElementById("load-error");
      error.textContent = "The export failed; try again.";
      error.hidden = false;
      return;
    }
    Pages.download("printernizer-usage-statistics.json", await answer.blob());
  }

  document.addEventListener("DOMContentLoaded", () => {
    document.getElementById("sign-in").addEventListener("submit", (event) => {
      event.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, document.getElementById("token").value.trim());
      document.getElementById("token").value = "";
      load();
    });
    document.getElementById("sign-out").addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      delete document.body.dataset.loaded;
      showSignIn();
    });
    document.getElementById("weeks").addEventListener("change", load);
    document.getElementById("export").addEventListener("click", exportJson);
    load();
  });
})();
