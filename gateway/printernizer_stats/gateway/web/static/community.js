// The public community page: every chart of /api/v1/community (no credentials), and the disclosure.
"use strict";

(() => {
  const { element, percent, plot, setText } = Pages;

  function every(seconds) {
    if (seconds === 3600) return "hourly";
    if (seconds % 3600 === 0) return `every ${seconds / 3600} hours`;
    if (seconds % 60 === 0) return `every ${seconds / 60} minutes`;
    return `every ${seconds} seconds`;
  }

  // One way to draw each plot kind a chart may ask for (community.py, Chart.plot).
  const DRAW = {
    trend(id, chart, spec) {
      const x = chart.rows.map((row) => row[spec.x]);
      return plot(id, spec.series.map((series) => ({
        type: series.type === "bar" ? "bar" : "scatter",
        mode: series.type === "bar" ? undefined : "lines+markers",
        name: series.name,
        x,
        y: chart.rows.map((row) => Number(row[series.column])),
        hovertemplate: `%{y} installations ${series.name}<extra></extra>`,
      })), { yaxis: { title: { text: "installations" } } });
    },
    pie(id, chart, spec) {
      return plot(id, [{
        type: "pie", hole: 0.45, sort: false,
        labels: chart.rows.map((row) => row[spec.category]),
        values: chart.rows.map((row) => Number(row[spec.value])),
        hovertemplate: "%{label}: %{value} installations<extra></extra>",
      }], { legend: { orientation: "v" } });
    },
    bars(id, chart, spec) {
      const labels = chart.rows.map((row) => row[spec.category]);
      const values = chart.rows.map((row) => Number(row[spec.value]) * (spec.percent ? 100 : 1));
      const unit = spec.percent ? "% of active installations" : "installations";
      const hover = spec.percent ? "%{VALUE:.1f} %<extra></extra>" : "%{VALUE} installations<extra></extra>";
      const trace = spec.horizontal
        ? { type: "bar", orientation: "h", y: labels.slice().reverse(), x: values.slice().reverse(),
            hovertemplate: hover.replace("VALUE", "x") }
        : { type: "bar", x: labels, y: values, hovertemplate: hover.replace("VALUE", "y") };
      trace.marker = { color: spec.percent ? "#1d7a46" : "#2f6fde" };
      if (spec.percent) {
        trace.text = chart.rows.map((row) => percent(Number(row[spec.value]))).reverse();
        trace.textposition = "auto";
      }
      const axis = { title: { text: unit }, ...(spec.percent ? { range: [0, 100] } : {}) };
      const layout = spec.horizontal ? { margin: { l: 180 }, xaxis: axis } : { yaxis: axis };
      return plot(id, [trace], layout);
    },
    // A share per group and week, stacked; a week in which a group is not published (fewer
    // than k installations) has no row, and is a gap in its band rather than a fall to zero.
    shares(id, chart, spec) {
      const groups = [...new Set(chart.rows.map((row) => row[spec.group]))];
      const traces = groups.map((group) => {
        const byWeek = new Map(chart.rows.filter((row) => row[spec.group] === group)
          .map((row) => [row[spec.x], Number(row[spec.value]) * 100]));
        return {
          type: "scatter", mode: "lines", stackgroup: "shares", name: group,
          x: chart.weeks,
          y: chart.weeks.map((week) => (byWeek.has(week) ? byWeek.get(week) : null)),
          hovertemplate: `${group}: %{y:.1f} %<extra></extra>`,
        };
      });
      return plot(id, traces, { yaxis: { range: [0, 100], title: { text: "% of active installations" } } });
    },
  };

  function download(path, name, label) {
    const link = element("a", label);
    link.href = path;
    link.download = name;
    return link;
  }

  function figure(chart) {
    const id = `chart-${chart.chart}`;
    const panel = element("figure", null, chart.plot.wide ? "chart-panel wide" : "chart-panel");
    panel.dataset.chart = chart.chart;
    const caption = element("figcaption", chart.title);
    const about = element("p", chart.description, "note");
    const target = element("div", null, "chart");
    target.id = id;
    const files = element("p", "Download: ", "downloads");
    const path = `/api/v1/community/${chart.chart}`;
    files.append(
      download(`${path}.json`, `printernizer-${chart.chart}.json`, "JSON"), document.createTextNode(" · "),
      download(`${path}.csv`, `printernizer-${chart.chart}.csv`, "CSV"));
    panel.append(caption, about, target, files);
    return { panel, id };
  }

  async function drawCharts() {
    const answer = await Pages.fetchJson("/api/v1/community");
    if (!answer.ok) {
      document.getElementById("unavailable").hidden = false;
      document.body.dataset.state = "unavailable";
      return;
    }
    const figures = answer.body;
    const asOf = figures.asOf.slice(0, 16).replace("T", " ");
    setText("as-of", `Figures as of ${asOf} UTC, complete weeks up to ${figures.until}; ` +
      `refreshed ${every(figures.refreshSeconds)}.`);
    if (figures.minGroupSize) {
      for (const node of document.querySelectorAll(".min-group-size")) node.textContent = figures.minGroupSize;
    }
    const section = document.getElementById("charts");
    section.replaceChildren();
    for (const chart of figures.charts) {
      const { panel, id } = figure(chart);
      section.append(panel);
      const draw = DRAW[chart.plot.kind];
      if (draw) await draw(id, chart, chart.plot);
    }
    document.body.dataset.state = "loaded";
  }

  async function showDisclosure() {
    const answer = await Pages.fetchJson("/api/v1/community/disclosure");
    if (!answer.ok) return;
    const never = document.getElementById("never-collected");
    never.replaceChildren(...answer.body.neverCollected.map((line) => element("li", line)));
    const rows = answer.body.fields.map((item) => {
      const row = element("tr");
      row.append(element("td", item.field, "field"), element("td", item.why), element("td", String(item.since)));
      return row;
    });
    document.getElementById("disclosure-fields").replaceChildren(...rows);
  }

  document.addEventListener("DOMContentLoaded", async () => {
    await Promise.all([drawCharts(), showDisclosure()]);
    document.body.dataset.loaded = "true";
  });
})();
