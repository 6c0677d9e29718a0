// Live parts of the console: poll a JSON route and update the figures in place.
// Progressive enhancement only: without this script every page works and shows a
// "refresh" link. No inline script anywhere (the CSP forbids it).
"use strict";

(function () {
  const live = document.getElementById("live");
  if (!live || !window.fetch) {
    return;
  }
  const source = live.dataset.source;
  const number = new Intl.NumberFormat();
  let known = null;

  function setText(root, field, text) {
    const node = root.querySelector('[data-field="' + field + '"]');
    if (node && node.textContent !== text) {
      node.textContent = text;
    }
  }

  function apply(data) {
    const ids = data.campaigns.map(function (c) { return c.id; }).join(",");
    if (known !== null && ids !== known) {
      // A campaign started or finished: the server renders the new set.
      window.location.reload();
      return;
    }
    known = ids;
    data.campaigns.forEach(function (c) {
      const row = live.querySelector('[data-campaign="' + c.id + '"]');
      if (!row) {
        return;
      }
      const bar = row.querySelector("progress");
      if (bar) {
        bar.value = c.percent;
        bar.textContent = c.percent + " %";
      }
      setText(row, "done", number.format(c.done) + " of " + number.format(c.recipients) +
        " (" + c.percent.toFixed(1) + " %)");
      setText(row, "rate", c.rate.toFixed(1) + "/s");
      setText(row, "eta", c.eta);
    });
    const queue = document.getElementById("queue");
    if (queue) {
      setText(queue, "instances", String(data.queue.instances));
      setText(queue, "queued", number.format(data.queue.queued));
      setText(queue, "deferred", number.format(data.queue.deferred));
      setText(queue, "oldest", data.queue.oldest);
      setText(queue, "suspended", String(data.queue.suspended));
    }
  }

  function poll() {
    fetch(source, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (data) { if (data) { apply(data); } })
      .catch(function () { /* the next poll tries again */ })
      .finally(function () { window.setTimeout(poll, 3000); });
  }

  live.setAttribute("aria-live", "polite");
  window.setTimeout(poll, 3000);
}());
