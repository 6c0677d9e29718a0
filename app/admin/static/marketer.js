// Live parts of the marketer's pages (progressive enhancement: each page works without it).
// - [data-poll]: poll a JSON route, copy its fields into [data-field] children and the
//   <progress>; reload the page once the server says "done" (to render the final state).
// - form[data-live-preview]: the template preview follows the typing.
// - form[data-count]: the campaign's audience count follows the choices.
// No inline script anywhere (the CSP forbids it).
"use strict";

(function () {
  if (!window.fetch) {
    return;
  }
  const number = new Intl.NumberFormat();

  function show(root, field, value) {
    root.querySelectorAll('[data-field="' + field + '"]').forEach(function (node) {
      const text = typeof value === "number" ? number.format(value) : String(value);
      if (node.textContent !== text) {
        node.textContent = text;
      }
    });
  }

  document.querySelectorAll("[data-poll]").forEach(function (root) {
    if (root.dataset.done) {
      return;
    }
    const bar = root.querySelector("progress");
    function apply(data) {
      Object.keys(data).forEach(function (key) { show(root, key, data[key]); });
      if (bar && typeof data.percent === "number") {
        bar.value = data.percent;
        bar.textContent = data.percent + " %";
      }
      if (data.done) {
        window.location.reload();
        return true;
      }
      return false;
    }
    function poll() {
      fetch(root.dataset.poll, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (response) { return response.ok ? response.json() : null; })
        .then(function (data) { return data ? apply(data) : false; })
        .catch(function () { return false; })
        .then(function (finished) { if (!finished) { window.setTimeout(poll, 1000); } });
    }
    window.setTimeout(poll, 500);
  });

  // The template editor: its Preview button posts the form into the preview frame; here
  // the frame follows the typing (debounced), and shows the stored template on load.
  document.querySelectorAll("form[data-live-preview]").forEach(function (form) {
    const button = document.getElementById(form.dataset.livePreview);
    let timer = null;
    function refresh() { form.requestSubmit(button); }
    form.addEventListener("input", function () {
      window.clearTimeout(timer);
      timer = window.setTimeout(refresh, 500);
    });
    refresh();
  });

  // The segment builder: "Add a condition" copies the last row, emptied, with new ids.
  document.querySelectorAll("#add-rule").forEach(function (button) {
    const rules = document.querySelector("#segment-builder .rules");
    button.hidden = false;
    button.addEventListener("click", function () {
      const rows = rules.querySelectorAll("[data-rule]");
      const copy = rows[rows.length - 1].cloneNode(true);
      const n = rows.length + 1;
      copy.querySelectorAll("label").forEach(function (label) {
        const id = label.htmlFor.replace(/-\d+$/, "-" + n);
        label.htmlFor = id;
        label.textContent = label.textContent.replace(/^Condition \d+/, "Condition " + n);
      });
      copy.querySelectorAll("input, select").forEach(function (control) {
        control.id = control.id.replace(/-\d+$/, "-" + n);
        if (control.tagName === "INPUT") {
          control.value = "";
        }
      });
      rules.appendChild(copy);
      copy.querySelector("select").focus();
    });
  });

  // The campaign's audience step: the count of who it would reach follows the choices.
  document.querySelectorAll("form[data-count]").forEach(function (form) {
    const target = document.getElementById(form.dataset.countTarget);
    let timer = null;
    let sent = 0;
    function refresh() {
      const mine = ++sent;
      fetch(form.dataset.count, {
        method: "POST",
        credentials: "same-origin",
        headers: { Accept: "application/json", "X-CSRF-Token": form.elements.csrf.value },
        body: new URLSearchParams(new FormData(form))
      })
        .then(function (response) { return response.json(); })
        .then(function (data) {
          if (mine !== sent) {
            return;
          }
          if (target) {
            target.textContent = data.text;
          }
          const json = document.getElementById("segment-json");
          if (json && data.segment) {
            json.textContent = data.segment;
          }
        })
        .catch(function () { /* the next change tries again */ });
    }
    form.addEventListener("input", function () {
      window.clearTimeout(timer);
      timer = window.setTimeout(refresh, 300);
    });
    form.addEventListener("change", function () {
      window.clearTimeout(timer);
      timer = window.setTimeout(refresh, 300);
    });
  });
}());
