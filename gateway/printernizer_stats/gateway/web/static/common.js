// Helpers of the dashboard page.
"use strict";

const Pages = (() => {
  const regions = new Intl.DisplayNames(["en"], { type: "region" });

  /** "DEPLOYMENT_MODE_HOME_ASSISTANT_ADDON" -> "Home Assistant Addon" (prefix removed). */
  function enumLabel(name, prefix) {
    if (!name || name.endsWith("_UNSPECIFIED")) return "not known yet";
    if (prefix === "COUNTRY_" && name.startsWith(prefix)) {
      const code = name.slice(prefix.length);
      try { return regions.of(code) || code; } catch (_) { return code; }
    }
    const words = (name.startsWith(prefix) ? name.slice(prefix.length) : name).toLowerCase().split("_");
    return words.map((w) => w.charAt(0).toUpperCase() + w.slice(1)).join(" ");
  }

  function weekLabel(week) {
    return `${week.year}-W${String(week.week).padStart(2, "0")}`;
  }

  function percent(share) {
    return `${(share * 100).toFixed(share < 0.1 ? 1 : 0)} %`;
  }

  /** fetch() that never throws: {ok, status, body} (body is parsed JSON when there is some). */
  async function fetchJson(path, options = {}) {
    let response;
    try {
      response = await fetch(path, options);
    } catch (error) {
      return { ok: false, status: 0, body: { error: "the gateway cannot be reached" } };
    }
    let body = null;
    try { body = await response.json(); } catch (_) { body = null; }
    return { ok: response.ok, status: response.status, body, response };
  }

  function errorText(answer) {
    if (answer.body && answer.body.error) return answer.body.error;
    return `the gateway answered ${answer.status}`;
  }

  /** Text into an element (never HTML: figures and labels are data). */
  function setText(id, text) {
    document.getElementById(id).textContent = text;
  }

  function element(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = text;
    if (className) node.className = className;
    return node;
  }

  const PLOT_CONFIG = { displayModeBar: false, responsive: true };
  const PLOT_LAYOUT = {
    margin: { l: 50, r: 20, t: 10, b: 40 },
    paper_bgcolor: "rgba(0,0,0,0)",
    plot_bgcolor: "rgba(0,0,0,0)",
    font: { family: "system-ui, sans-serif", size: 12 },
    legend: { orientation: "h", y: -0.18 },
  };

  /** Draw a chart into the element `id`, or say there is nothing to draw.
   * Marks the element data-state="drawn" or "empty" once done (the browser tests wait for it). */
  async function plot(id, traces, layout = {}) {
    const target = document.getElementById(id);
    if (target.dataset.state === "drawn") Plotly.purge(target);
    target.replaceChildren();
    const hasData = traces.some((t) => (t.values || t.y || t.x || []).length > 0);
    if (!hasData) {
      target.append(element("p", "No data in this window yet.", "empty"));
      target.dataset.state = "empty";
      return;
    }
    const merged = { ...PLOT_LAYOUT, ...layout, margin: { ...PLOT_LAYOUT.margin, ...(layout.margin || {}) } };
    await Plotly.newPlot(target, traces, merged, PLOT_CONFIG);
    target.dataset.state = "drawn";
  }

  /** Save a JSON value as a file download. */
  function download(filename, blob) {
    const url = URL.createObjectURL(blob);
    const link = element("a");
    link.href = url;
    link.download = filename;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  return { enumLabel, weekLabel, percent, fetchJson, errorText, setText, element, plot, download };
})();
