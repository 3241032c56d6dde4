// The page's behaviour: the form, the examples, the live stream. No framework, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const percent = (p) => (100 * p).toFixed(1) + " %";
const MODALITY_NAMES = { tfidf: "text (TF-IDF)", e5: "text (e5)", image: "image" };
let chosenFile = null;  // the photo to send: from the file input, a drop or an example

function show(id, on) { $(id).hidden = !on; }

function errorText(status, body) {
  if (body && Array.isArray(body.detail)) {
    return body.detail.map((d) => (d.field ? d.field + ": " : "") + (d.reason || d.msg || JSON.stringify(d))).join("; ");
  }
  if (body && body.detail) return String(body.detail);
  return "HTTP " + status;
}

function bar(label, value, share) {
  const li = document.createElement("li");
  const text = document.createElement("div");
  text.className = "bar-label";
  const name = document.createElement("span");
  name.textContent = label;
  const number = document.createElement("span");
  number.textContent = percent(value);
  text.append(name, number);
  const track = document.createElement("div");
  track.className = "bar-track";
  track.setAttribute("role", "img");
  track.setAttribute("aria-label", label + " " + percent(value));
  const fill = document.createElement("div");
  fill.className = "bar-fill";
  fill.style.width = Math.max(0, Math.min(100, 100 * share)).toFixed(1) + "%";
  track.append(fill);
  li.append(text, track);
  return li;
}

function render(prediction) {
  $("category").textContent = prediction.category;
  $("code").textContent = "(code " + prediction.prdtypecode + ")";
  $("confidence").textContent = percent(prediction.confidence);
  $("answer-version").textContent = prediction.model_version;
  const top = $("top-k");
  top.replaceChildren(...prediction.top_k.map((s) => bar(s.category + " (" + s.prdtypecode + ")", s.probability, s.probability)));
  const mods = $("modalities");
  const shares = Object.entries(prediction.contributions || {});
  mods.replaceChildren(...shares.map(([m, share]) => bar(MODALITY_NAMES[m] || m, share, share)));
  show("answer", true);
}

async function classify(event) {
  event.preventDefault();
  show("error", false);
  const title = $("designation").value.trim();
  if (!title) {
    $("error").textContent = "designation: give the listing's title";
    show("error", true);
    $("designation").focus();
    return;
  }
  const form = new FormData();
  form.append("designation", title);
  const description = $("description").value.trim();
  if (description) form.append("description", description);
  if (chosenFile) form.append("image", chosenFile, chosenFile.name || "photo");
  const headers = {};
  const key = $("api-key").value.trim();
  if (key) headers["X-API-Key"] = key;
  $("submit").disabled = true;
  try {
    const response = await fetch("/v1/predict", { method: "POST", body: form, headers });
    const body = await response.json().catch(() => null);
    if (!response.ok) throw new Error(errorText(response.status, body));
    render(body);
  } catch (err) {
    show("answer", false);
    $("error").textContent = err.message;
    show("error", true);
  } finally {
    $("submit").disabled = false;
  }
}

function setPhoto(file) {
  chosenFile = file;
  const preview = $("preview");
  if (!file) { preview.hidden = true; preview.removeAttribute("src"); return; }
  preview.src = URL.createObjectURL(file);
  preview.alt = "the chosen photo";
  preview.hidden = false;
}

function wirePhoto() {
  const zone = $("drop-zone");
  $("image").addEventListener("change", (e) => setPhoto(e.target.files[0] || null));
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("dragging"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("dragging");
    const file = e.dataTransfer.files[0];
    if (file) setPhoto(file);
  });
  $("clear").addEventListener("click", () => {
    $("listing-form").reset();
    setPhoto(null);
    show("answer", false);
    show("error", false);
  });
}

async function loadExamples() {
  const response = await fetch("/v1/examples");
  if (!response.ok) return;
  const { examples } = await response.json();
  if (!examples.length) return;
  const list = $("example-list");
  for (const ex of examples) {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = ex.designation.slice(0, 90) + (ex.image_url ? " (with photo)" : "");
    button.title = "labelled " + ex.category;
    button.addEventListener("click", async () => {
      $("designation").value = ex.designation;
      $("description").value = ex.description || "";
      setPhoto(null);
      if (ex.image_url) {
        const blob = await (await fetch(ex.image_url)).blob();
        setPhoto(new File([blob], "example-" + ex.productid + ".jpg", { type: blob.type || "image/jpeg" }));
      }
      $("listing-form").requestSubmit();
    });
    li.append(button);
    list.append(li);
  }
  show("examples", true);
}

async function loadModel() {
  const response = await fetch("/v1/model");
  if (response.ok) $("model-version").textContent = (await response.json()).version;
}

function followStream() {
  const rows = document.querySelector("#stream tbody");
  const source = new EventSource("/v1/stream/predictions");
  source.addEventListener("open", () => { $("stream-state").textContent = "Following predictions.v1 as they arrive."; });
  source.addEventListener("error", () => { $("stream-state").textContent = "Stream interrupted; reconnecting…"; });
  source.addEventListener("prediction", (e) => {
    const p = JSON.parse(e.data);
    const tr = document.createElement("tr");
    tr.className = "fresh";
    for (const [value, cls] of [[p.productid, "num"], [p.category + " (" + p.prdtypecode + ")", ""],
                                [percent(p.confidence), "num"], [p.model_version, ""]]) {
      const td = document.createElement("td");
      td.textContent = value;
      if (cls) td.className = cls;
      tr.append(td);
    }
    for (const old of rows.querySelectorAll("tr.fresh")) old.className = "";
    rows.prepend(tr);
    while (rows.children.length > 15) rows.lastElementChild.remove();
  });
}

async function refreshStats() {
  try {
    const response = await fetch("/v1/stream/stats");
    if (!response.ok) return;
    const s = await response.json();
    $("throughput").textContent = s.throughput_per_s == null ? "–" : s.throughput_per_s.toFixed(1) + " predictions/s";
    $("lag").textContent = s.lag == null ? "–" : s.lag.total + " messages (" + s.lag.group + ")";
    if (s.drift) {
      const d = s.drift;
      $("drift").textContent = (d.drift_detected ? "drift detected" : "no drift") + ", " + d.n_predictions +
        " predictions, " + d.window_start + " to " + d.window_end + " (model " + d.model_version + ")";
      show("drift-box", true);
    }
  } catch (err) { /* the next refresh tries again */ }
}

document.addEventListener("DOMContentLoaded", () => {
  $("listing-form").addEventListener("submit", classify);
  wirePhoto();
  loadModel();
  loadExamples();
  followStream();
  refreshStats();
  setInterval(refreshStats, 5000);
});
