// The deepserve playground: one framework-free script. It reads GET /models and GET /models/{name},
// and shows each model through POST /predict and POST /generate only, so every panel is a live example
// of the public API; the request it just made is shown as a curl command.
//
// Panels are chosen by the model's kind at each endpoint (GET /models/{name} -> "kinds", the server's
// app/kinds.py): PANELS below maps a kind to the function that builds its panel. A new kind of model is
// one entry there and one function.
"use strict";

const PANELS = {
  "classifier": imageClassifierPanel,
  "text classifier": textClassifierPanel,
  "autoencoder": autoencoderPanel,
  "VAE": autoencoderPanel,
  "language model": languageModelPanel,
  "seq2seq model": seq2seqPanel,
  "image generator": generatorPanel,
  "class-conditional image generator": generatorPanel,
  "diffusion model": diffusionPanel,
  "image translator": translatorPanel,
  "dual encoder": dualEncoderPanel,
};

// What the page did, for the tests and for anyone curious in the console: the last stream's timings.
const playground = { lastStream: null, requests: 0 };
window.playground = playground;

// ----------------------------------------------------------------------------------------- helpers

const $ = (selector, root = document) => root.querySelector(selector);

// An element: attributes (on* are listeners; never a style attribute, which the CSP forbids) and children.
function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  node.append(...children.flat().filter((c) => c !== null && c !== undefined));
  return node;
}

let uid = 0;
// A labelled control: <label for=id>text</label> and the control, in a <span> that keeps them together.
function field(text, control) {
  control.id ||= `f${++uid}`;
  return el("span", { class: "field" }, el("label", { for: control.id, text }), " ", control);
}

function numberInput(value, min, max, step = 1) {
  return el("input", { type: "number", min, max, step, value, inputmode: "numeric" }); // value last: it is
  // sanitised against min, max and step
}

// A range with its value shown beside it (<output>), both labelled.
function slider(text, value, min, max, step, format = (v) => v) {
  const input = el("input", { type: "range", min, max, step, value });
  const shown = el("output", { text: format(value) });
  input.addEventListener("input", () => (shown.textContent = format(input.value)));
  const wrapper = field(text, input);
  wrapper.append(" ", shown);
  return { input, node: wrapper };
}

function debounce(fn, ms) {
  let timer;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

// One request in flight per control: a newer call waits for the current one and only the latest
// pending arguments run (live predictions while typing or sliding never pile up on the server).
function latestOnly(fn) {
  let running = false;
  let pending = null;
  return async function run(...args) {
    if (running) {
      pending = args;
      return;
    }
    running = true;
    try {
      await fn(...args);
    } finally {
      running = false;
      if (pending) {
        const next = pending;
        pending = null;
        run(...next);
      }
    }
  };
}

const percent = (p) => `${(100 * p).toFixed(1)}%`;
const figureOf = (value) => {
  if (Number.isInteger(value)) return String(value);
  return Math.abs(value) < 1e-3 && value !== 0 ? value.toExponential(2) : Number(value).toPrecision(4);
};
const b64png = (canvas) => canvas.toDataURL("image/png").split(",", 2)[1];
const pngSrc = (b64) => `data:image/png;base64,${b64}`;

// ------------------------------------------------------------------------------------- the API

class ApiError extends Error {
  constructor(status, message, retryAfter) {
    super(message);
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

const STATUS_TEXT = {
  400: "Bad request", 404: "Not found", 408: "Request timeout", 413: "Too large", 415: "Wrong content type",
  422: "Does not fit the model", 429: "Too many requests", 500: "Server error", 503: "Unavailable",
  504: "Deadline passed",
};

async function apiError(response) {
  let message = response.statusText;
  try {
    const body = await response.json();
    message = typeof body.error === "string" ? body.error : (body.error?.message ?? JSON.stringify(body));
  } catch {
    // not JSON: keep the status text
  }
  return new ApiError(response.status, message, response.headers.get("Retry-After"));
}

// Paths are relative, so the page works behind a proxy that serves the app under a prefix.
async function request(path, body, { signal, stream = false } = {}) {
  const init = { signal, headers: {} };
  if (body !== undefined) {
    Object.assign(init, { method: "POST", body: JSON.stringify(body) });
    init.headers["Content-Type"] = "application/json";
    showCurl(path, body, stream);
  }
  playground.requests += 1;
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, "the server could not be reached");
  }
  if (!response.ok) throw await apiError(response);
  clearMessage();
  return response;
}

const getJSON = async (path) => (await request(path)).json();
const postJSON = async (path, body, options) => (await request(path, body, options)).json();

// Errors are shown in one alert box: status, what it means, the server's own message, Retry-After.
function showError(error) {
  if (error.name === "AbortError") return;
  const box = $("#message");
  box.replaceChildren();
  if (error instanceof ApiError && error.status) {
    box.append(el("strong", { text: `${error.status} ${STATUS_TEXT[error.status] ?? "Error"}:` }), error.message);
    if (error.retryAfter) box.append(` (retry after ${error.retryAfter} s)`);
  } else {
    box.append(el("strong", { text: "Error:" }), error.message ?? String(error));
  }
  box.dataset.status = error.status ?? "";
  box.hidden = false;
}

function clearMessage() {
  const box = $("#message");
  box.hidden = true;
  box.dataset.status = "";
}

const shellQuote = (text) => `'${text.replaceAll("'", "'\\''")}'`;

function showCurl(path, body, stream) {
  const url = new URL(path, location.href).href;
  const flags = stream ? "-sN" : "-s";
  const data = body === undefined ? "" : ` -H 'Content-Type: application/json' -d ${shellQuote(JSON.stringify(body))}`;
  $("#curl").textContent = `curl ${flags} ${shellQuote(url)}${data}`;
}

// ------------------------------------------------------------------------------------- page set-up

let session = new AbortController(); // aborted when another model is picked: its streams stop

async function start() {
  const select = $("#model");
  let models;
  try {
    ({ models } = await getJSON("models"));
  } catch (error) {
    showError(error);
    return;
  }
  for (const m of models) {
    const what = m.state === "ready" ? m.task : `${m.state}: ${m.reason ?? ""}`;
    select.append(el("option", { value: m.name, text: `${m.name} (${what})`, disabled: m.state !== "ready" }));
  }
  const wanted = decodeURIComponent(location.hash.slice(1));
  const ready = models.filter((m) => m.state === "ready");
  select.value = ready.some((m) => m.name === wanted) ? wanted : (ready[0]?.name ?? "");
  select.addEventListener("change", () => {
    history.replaceState(null, "", `#${encodeURIComponent(select.value)}`);
    show(select.value);
  });
  window.addEventListener("hashchange", () => {
    const name = decodeURIComponent(location.hash.slice(1));
    if (name && name !== select.value && ready.some((m) => m.name === name)) {
      select.value = name;
      show(name);
    }
  });
  if (select.value) show(select.value);
}

async function show(name) {
  session.abort();
  const mine = (session = new AbortController());
  clearMessage();
  const panels = $("#panels");
  panels.replaceChildren();
  document.body.dataset.ready = "";
  let model;
  try {
    model = await getJSON(`models/${encodeURIComponent(name)}`);
  } catch (error) {
    showError(error);
    return;
  }
  if (mine !== session) return; // another model was picked meanwhile
  showCurl(`models/${encodeURIComponent(name)}`);
  $("#summary").textContent = `${model.family} · ${model.task} · version ${model.version} · ${model.provider ?? ""}`;
  for (const [endpoint, kind] of Object.entries(model.kinds ?? {})) {
    const build = PANELS[kind];
    if (!build) continue;
    const section = el("section", { class: "panel", "data-panel": kind, "aria-label": `${kind} (${endpoint})` });
    section.append(el("h2", { text: `${kind[0].toUpperCase()}${kind.slice(1)} · ${endpoint}` }));
    panels.append(section);
    build(model, section, session.signal);
  }
  howItWorks(model);
  document.body.dataset.ready = name;
}

// ---------------------------------------------------------------------------- the drawing pad

// A 280x280 canvas to draw on with the mouse, a pen or a finger (pointer events), or the keyboard
// (arrow keys move the pen, drawing; Space lifts or lowers it). Also takes an uploaded image.
function drawingPad(onChange, colour = "#ffffff") {
  const size = 280;
  const canvas = el("canvas", {
    width: size, height: size, class: "pad", tabindex: 0, role: "img",
    "aria-label": "Drawing area: draw with the mouse or a finger, or with the arrow keys (Space lifts the pen)",
  });
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  const pen = { x: size / 2, y: size / 2, down: false, keyboardDown: true, colour };
  const clear = () => {
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, size, size);
  };
  clear();
  const at = (event) => {
    const box = canvas.getBoundingClientRect();
    return { x: ((event.clientX - box.left) * size) / box.width, y: ((event.clientY - box.top) * size) / box.height };
  };
  const line = (from, to) => {
    Object.assign(ctx, { strokeStyle: pen.colour, lineWidth: 22, lineCap: "round", lineJoin: "round" });
    ctx.beginPath();
    ctx.moveTo(from.x, from.y);
    ctx.lineTo(to.x, to.y);
    ctx.stroke();
  };
  canvas.addEventListener("pointerdown", (event) => {
    canvas.setPointerCapture(event.pointerId);
    pen.down = true;
    Object.assign(pen, at(event));
    line(pen, pen);
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!pen.down) return;
    const next = at(event);
    line(pen, next);
    Object.assign(pen, next);
  });
  const lift = () => {
    if (!pen.down) return;
    pen.down = false;
    onChange();
  };
  canvas.addEventListener("pointerup", lift);
  canvas.addEventListener("pointercancel", lift);
  const later = debounce(onChange, 250);
  const moves = { ArrowLeft: [-10, 0], ArrowRight: [10, 0], ArrowUp: [0, -10], ArrowDown: [0, 10] };
  canvas.addEventListener("keydown", (event) => {
    if (event.key === " ") pen.keyboardDown = !pen.keyboardDown;
    else if (!moves[event.key]) return;
    event.preventDefault();
    if (event.key === " ") return;
    const [dx, dy] = moves[event.key];
    const next = { x: Math.min(size, Math.max(0, pen.x + dx)), y: Math.min(size, Math.max(0, pen.y + dy)) };
    if (pen.keyboardDown) line(pen, next);
    Object.assign(pen, next);
    later();
  });
  async function upload(file) {
    const image = await createImageBitmap(file);
    clear();
    const scale = Math.min(size / image.width, size / image.height);
    const [w, h] = [image.width * scale, image.height * scale];
    ctx.drawImage(image, (size - w) / 2, (size - h) / 2, w, h);
    onChange();
  }
  const fileInput = el("input", { type: "file", accept: "image/png,image/jpeg" });
  fileInput.addEventListener("change", () => fileInput.files[0] && upload(fileInput.files[0]).catch(showError));
  const controls = el(
    "div",
    { class: "row" },
    el("button", { type: "button", class: "secondary", text: "Clear", onclick: () => (clear(), onChange()) }),
    field("Upload an image", fileInput),
  );
  return { canvas, controls, pen, isEmpty: () => !inkBox(canvas) };
}

// The bounding box of the drawing (pixels brighter than the black background), or null.
function inkBox(canvas) {
  const { width, height } = canvas;
  const data = canvas.getContext("2d").getImageData(0, 0, width, height).data;
  let [x0, y0, x1, y1] = [width, height, -1, -1];
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const i = 4 * (y * width + x);
      if (data[i] + data[i + 1] + data[i + 2] > 60) {
        x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y);
      }
    }
  }
  return x1 < 0 ? null : { x: x0, y: y0, w: x1 - x0 + 1, h: y1 - y0 + 1 };
}

// What the model sees: the drawing at the model's input size. Centred, the drawing's bounding box is
// scaled to fill the frame less a margin, as the training digits fill theirs. The page sends exactly
// this picture (the server's own resize is then the identity), so the preview is the model's input.
function modelInput(pad, pre, centred) {
  const target = el("canvas", { width: pre.width, height: pre.height, class: "pixels", role: "img" });
  const ctx = target.getContext("2d", { willReadFrequently: true });
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, pre.width, pre.height);
  Object.assign(ctx, { imageSmoothingEnabled: true, imageSmoothingQuality: "high" });
  const box = centred ? inkBox(pad.canvas) : null;
  if (box) {
    const side = Math.max(box.w, box.h) * 1.15; // a margin around the strokes
    const cx = box.x + box.w / 2;
    const cy = box.y + box.h / 2;
    ctx.drawImage(pad.canvas, cx - side / 2, cy - side / 2, side, side, 0, 0, pre.width, pre.height);
  } else {
    ctx.drawImage(pad.canvas, 0, 0, pre.width, pre.height);
  }
  target.setAttribute("aria-label", `The ${pre.width}x${pre.height} input the model sees`);
  return target;
}

// A classification answer's first item, named and with its probability, then the bars of its top_k.
function topClass(heading, top) {
  return [
    el("p", { class: "prediction" }, `${heading}: `, el("strong", { class: "label", text: top.label }),
      ` (${percent(top.probability)})`),
    bars(top.top_k),
  ];
}

function bars(items) {
  return el(
    "ol",
    { class: "bars" },
    items.map(({ label, probability }) => {
      const fill = el("div");
      fill.style.width = percent(probability); // CSSOM, which the CSP allows (style attributes it does not)
      return el("li", {}, el("span", { text: label }), el("span", { class: "bar", "aria-hidden": "true" }, fill),
        el("span", { text: percent(probability) }));
    }),
  );
}

// ---------------------------------------------------------------------------------------- panels

function imageClassifierPanel(model, root) {
  const pre = model.preprocessing;
  const k = Math.min(5, model.labels.length);
  const preview = el("figure", {}, el("canvas", { class: "pixels", width: pre.width, height: pre.height }),
    el("figcaption", { text: `What the model sees (${pre.width}x${pre.height})` }));
  const result = el("div", { "aria-live": "polite" }, el("p", { class: "muted", text: "Draw something." }));
  const centred = el("input", { type: "checkbox", checked: true });
  const classify = latestOnly(async () => {
    if (pad.isEmpty()) return;
    const input = modelInput(pad, pre, centred.checked);
    preview.firstChild.replaceWith(input);
    try {
      const answer = await postJSON("predict", { model: model.name, inputs: b64png(input), top_k: k });
      const top = answer.outputs[0];
      result.replaceChildren(...topClass("Prediction", top));
    } catch (error) {
      showError(error);
    }
  });
  const pad = drawingPad(classify);
  centred.addEventListener("change", classify);
  const extras = [field("Centre and scale the drawing", centred)];
  if (pre.channels === 3) {
    const colour = el("input", { type: "color", value: "#ffcc00" });
    pad.pen.colour = colour.value;
    colour.addEventListener("input", () => (pad.pen.colour = colour.value));
    extras.push(field("Pen colour", colour));
  }
  pad.controls.append(...extras);
  root.append(
    el("p", { class: "muted", text: `Draw one of: ${model.labels.join(", ")}. The top ${k} classes are shown.` }),
    el("div", { class: "figures" }, el("figure", {}, pad.canvas, el("figcaption", { text: "Your drawing" })), preview,
      result),
    pad.controls,
  );
}

function textClassifierPanel(model, root) {
  const pre = model.preprocessing;
  const vocabulary = pre.vocabulary;
  const shown = [...vocabulary].map((c) => (c === "\n" ? "⏎" : c === " " ? "␣" : c)).join("");
  const text = el("input", { type: "text", maxlength: pre.max_length, spellcheck: "false", autocomplete: "off" });
  const mapUnknown = el("input", { type: "checkbox" });
  const result = el("div", { "aria-live": "polite" });
  const classify = latestOnly(async () => {
    if (!text.value) return result.replaceChildren();
    const body = { model: model.name, inputs: text.value, top_k: model.labels.length };
    if (mapUnknown.checked) body.map_unknown = true;
    try {
      const top = (await postJSON("predict", body)).outputs[0];
      result.replaceChildren(...topClass("Prediction", top));
    } catch (error) {
      result.replaceChildren();
      showError(error);
    }
  });
  const live = debounce(classify, 120);
  text.addEventListener("input", live);
  mapUnknown.addEventListener("change", classify);
  const example = () => {
    const letters = [...vocabulary].filter((c) => c !== "\n");
    text.value = Array.from({ length: Math.min(24, pre.max_length) }, () =>
      letters[Math.floor(Math.random() * letters.length)]).join("");
    classify();
  };
  root.append(
    el("p", {}, `Vocabulary (${[...vocabulary].length} characters; others are refused with 422 unless mapped to <unk>): `,
      el("code", { class: "vocabulary", text: shown })),
    el("p", { class: "muted", text: `Labels: ${model.labels.join(" · ")}. At most ${pre.max_length} tokens.` }),
    field("Text", text),
    el("div", { class: "row" }, field("Map unknown characters to <unk>", mapUnknown),
      el("button", { type: "button", class: "secondary", text: "Random text", onclick: example })),
    result,
  );
  text.value = [...vocabulary].filter((c) => c !== "\n").slice(0, 12).join("");
  classify();
}

function languageModelPanel(model, root, signal) {
  const defaults = model.generation ?? {};
  const vocabularySize = [...(model.preprocessing?.vocabulary ?? "")].length;
  const prompt = el("textarea", { rows: 3, spellcheck: "false" });
  prompt.value = "The ";
  const maxTokens = numberInput(Math.min(defaults.max_new_tokens ?? 64, 200), 1, model.limits.max_new_tokens);
  const temperature = slider("Temperature", defaults.temperature ?? 0.8, 0, 2, 0.05);
  const topP = slider("Top-p", 1, 0.05, 1, 0.05);
  const topK = numberInput(defaults.top_k ?? 0, 0, vocabularySize);
  const seed = numberInput("", 0, undefined);
  seed.placeholder = "random";
  const go = el("button", { type: "button", text: "Generate" });
  const stop = el("button", { type: "button", class: "secondary", text: "Stop", disabled: true });
  const output = el("pre", { class: "stream", "aria-live": "off", "aria-label": "Generated text" });
  const stat = (label) => {
    const dd = el("dd", { text: "–" });
    return [el("div", {}, el("dt", { text: label }), dd), dd];
  };
  const [ttftRow, ttft] = stat("time to first token");
  const [rateRow, rate] = stat("tokens/s");
  const [countRow, count] = stat("tokens");
  const [reasonRow, reason] = stat("finish");
  let running = null;

  async function generate() {
    const body = {
      model: model.name, prompt: prompt.value, max_new_tokens: Number(maxTokens.value),
      temperature: Number(temperature.input.value), top_k: Number(topK.value), stream: true,
    };
    if (Number(topP.input.value) < 1) body.top_p = Number(topP.input.value);
    if (seed.value !== "") body.seed = Number(seed.value);
    running = new AbortController();
    const abort = () => running?.abort();
    signal.addEventListener("abort", abort, { once: true });
    go.disabled = true;
    stop.disabled = false;
    const tokens = el("span", { class: "tokens" });
    output.replaceChildren(el("span", { class: "prompt", text: prompt.value }), tokens);
    for (const dd of [ttft, rate, count, reason]) dd.textContent = "–";
    const record = { start: performance.now(), firstToken: null, tokenTimes: [], chunks: [], end: null, done: false };
    playground.lastStream = record;
    try {
      const response = await request("generate", body, { signal: running.signal, stream: true });
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let tokensInChunk = 0;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const event = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          for (const line of event.split("\n")) {
            if (!line.startsWith("data: ")) continue;
            const data = JSON.parse(line.slice(6));
            if (data.token !== undefined) {
              const now = performance.now();
              record.firstToken ??= now;
              record.tokenTimes.push(now);
              tokensInChunk += 1;
              tokens.append(data.token);
              ttft.textContent = `${(record.firstToken - record.start).toFixed(0)} ms`;
              count.textContent = record.tokenTimes.length;
              const seconds = (now - record.firstToken) / 1000;
              if (seconds > 0) rate.textContent = ((record.tokenTimes.length - 1) / seconds).toFixed(0);
            } else {
              reason.textContent = data.finish_reason ?? "–";
              if (data.error) showError(new Error(data.error));
            }
          }
        }
        if (tokensInChunk) record.chunks.push({ t: performance.now(), tokens: record.tokenTimes.length });
      }
    } catch (error) {
      showError(error);
    } finally {
      record.end = performance.now();
      record.done = true;
      go.disabled = false;
      stop.disabled = true;
      signal.removeEventListener("abort", abort);
      running = null;
    }
  }
  go.addEventListener("click", generate);
  stop.addEventListener("click", () => running?.abort());
  root.append(
    field("Prompt", prompt),
    el("div", { class: "row" }, field("Max new tokens", maxTokens), temperature.node, topP.node, field("Top-k (0 = off)", topK),
      field("Seed", seed)),
    el("div", { class: "row" }, go, stop),
    output,
    el("dl", { class: "stats" }, ttftRow, rateRow, countRow, reasonRow),
  );
}

function seq2seqPanel(model, root) {
  const input = el("input", { type: "text", value: "3rd of March 2021", spellcheck: "false", autocomplete: "off" });
  const beams = numberInput(4, 1, model.limits.max_beams);
  const result = el("div", { "aria-live": "polite" });
  const translate = latestOnly(async () => {
    if (!input.value) return result.replaceChildren();
    const body = { model: model.name, input: input.value, num_beams: Number(beams.value) };
    try {
      const answer = await postJSON("generate", body);
      const rows = (answer.beams ?? [{ text: answer.text, score: null }]).map((beam, i) =>
        el("tr", {}, el("td", { text: i + 1 }), el("td", { class: "mono", text: beam.text }),
          el("td", { text: beam.score === null ? "(greedy)" : beam.score.toFixed(3) })));
      result.replaceChildren(
        el("p", { class: "prediction" }, "Output: ", el("strong", { class: "mono output", text: answer.text })),
        el("table", {}, el("thead", {}, el("tr", {}, el("th", { text: "beam" }), el("th", { text: "text" }),
          el("th", { text: "score (log-probability)" }))), el("tbody", {}, rows)),
      );
    } catch (error) {
      showError(error);
    }
  });
  const live = debounce(translate, 150);
  input.addEventListener("input", live);
  beams.addEventListener("change", translate);
  root.append(
    field("Input", input),
    el("div", { class: "row" }, field("Beams (1 = greedy)", beams),
      el("button", { type: "button", text: "Translate", onclick: translate })),
    result,
  );
  translate();
}

function generatorPanel(model, root) {
  const dim = model.generation.latent_dim;
  const maxImages = model.limits.max_images;
  const img = (alt) => el("img", { class: "big", alt });

  // A class-conditional generator (a conditional GAN) draws the class it is given: one picker for the
  // panel's three requests. "Each class in turn" leaves class out of the grid's request (the server
  // then gives the images the classes 0, 1, 2, ...); the walk and the sliders stay in one class.
  const conditional = model.kinds["/generate"] === "class-conditional image generator";
  const labels = model.labels ?? [];
  const classPicker = conditional
    ? el("select", {}, el("option", { value: "", text: "each class in turn" }),
      labels.map((label, i) => el("option", { value: i, text: label })))
    : null;
  const picked = () => (classPicker.value === "" ? null : Number(classPicker.value));
  const withClass = (body, fallback) => {
    if (conditional && (picked() ?? fallback) !== null) body.class = picked() ?? fallback;
    return body;
  };
  const className = (answer, i) => labels[answer.classes[i]] ?? String(answer.classes[i]);

  // A grid of images from consecutive seeds (each with its class, from the answer, for a conditional one).
  const seed = numberInput(0, 0, undefined);
  const count = numberInput(Math.min(8, maxImages), 1, maxImages);
  const grid = el("div", { class: "grid", "aria-live": "polite" });
  let seedLatent = null;
  const drawGrid = latestOnly(async () => {
    try {
      const body = withClass({ model: model.name, seed: Number(seed.value), num_samples: Number(count.value) }, null);
      const answer = await postJSON("generate", body);
      seedLatent = answer.latents[0];
      grid.replaceChildren(...answer.images.map((b64, i) => {
        if (!conditional) return el("img", { src: pngSrc(b64), alt: `sample from seed ${body.seed + i}` });
        const name = className(answer, i);
        return el("figure", { class: "sample", "data-class": answer.classes[i] },
          el("img", { src: pngSrc(b64), alt: `class ${name}, seed ${body.seed + i}` }),
          el("figcaption", { text: `class ${name}` }));
      }));
    } catch (error) {
      showError(error);
    }
  });

  // A walk between two seeds' latents: fetched once, the slider picks the step.
  const steps = Math.min(9, maxImages);
  const from = numberInput(1, 0, undefined);
  const to = numberInput(2, 0, undefined);
  const position = slider("Position between the seeds", 0, 0, steps - 1, 1, (v) => `${v}/${steps - 1}`);
  const walkImage = img("interpolated image");
  walkImage.classList.add("walk");
  const walkClass = el("figcaption");
  let walk = [];
  const showStep = () => walk.length && (walkImage.src = pngSrc(walk[Number(position.input.value)]));
  position.input.addEventListener("input", showStep);
  const drawWalk = latestOnly(async () => {
    try {
      const body = withClass({ model: model.name, interpolate: { from: Number(from.value), to: Number(to.value), steps } }, 0);
      const answer = await postJSON("generate", body);
      walk = answer.images;
      if (conditional) walkClass.textContent = `class ${className(answer, 0)}`;
      showStep();
    } catch (error) {
      showError(error);
    }
  });

  // One slider per latent dimension (the decoder of a VAE, the generator of a GAN), decoded live.
  const sliderImage = img("image decoded from the latent sliders");
  const sliders = Array.from({ length: dim }, (_, i) => slider(`z${i + 1}`, 0, -3, 3, 0.1, (v) => Number(v).toFixed(1)));
  const decode = latestOnly(async () => {
    try {
      const latent = sliders.map((s) => Number(s.input.value));
      const answer = await postJSON("generate", withClass({ model: model.name, latent: [latent] }, 0));
      sliderImage.src = pngSrc(answer.images[0]);
    } catch (error) {
      showError(error);
    }
  });
  for (const s of sliders) s.input.addEventListener("input", decode);
  const setSliders = (values) => {
    sliders.forEach((s, i) => {
      s.input.value = values[i].toFixed(1);
      s.input.dispatchEvent(new Event("input"));
    });
  };

  seed.addEventListener("change", drawGrid);
  count.addEventListener("change", drawGrid);
  from.addEventListener("change", drawWalk);
  to.addEventListener("change", drawWalk);
  const latentSection = el("details", { open: model.kinds["/predict"] === "VAE" },
    el("summary", { text: `Latent sliders (${dim} dimensions)` }),
    el("div", { class: "row" },
      el("button", { type: "button", class: "secondary", text: "Start from the seed's latent",
        onclick: () => seedLatent && setSliders(seedLatent) }),
      el("button", { type: "button", class: "secondary", text: "Zero", onclick: () => setSliders(new Array(dim).fill(0)) })),
    el("div", { class: "figures" }, sliderImage, el("div", { class: "sliders" }, sliders.map((s) => s.node))));
  if (conditional) {
    classPicker.addEventListener("change", () => (drawGrid(), drawWalk(), decode()));
    root.append(el("p", { class: "muted",
      text: `The generator draws the class it is given: one of ${labels.join(", ")}. The grid shows each image's class as the answer gives it; the walk and the sliders use the class picked (${labels[0]} when each class is in turn).` }));
  }
  root.append(
    el("h3", { text: "Samples from seeds" }),
    el("div", { class: "row" }, field("First seed", seed), field("Images", count),
      conditional ? field("Class", classPicker) : null,
      el("button", { type: "button", text: "Generate", onclick: drawGrid })),
    grid,
    el("h3", { text: "Interpolation between two seeds" }),
    el("div", { class: "row" }, field("From seed", from), field("To seed", to), position.node),
    conditional ? el("figure", {}, walkImage, walkClass) : walkImage,
    el("h3", { text: "The latent space" }),
    latentSection,
  );
  drawGrid();
  drawWalk();
  decode();
}

// A diffusion model: the server runs the DDIM walk; the panel streams it and draws each event's images
// (the walk's current estimate every few steps) over the grid, then the answer's images with their classes.
function diffusionPanel(model, root, signal) {
  const defaults = model.diffusion ?? {};
  const labels = model.labels ?? [];
  const conditional = Boolean(defaults.conditional);
  const classPicker = el("select", {}, el("option", { value: "", text: "each class in turn" }),
    labels.map((label, i) => el("option", { value: i, text: label })));
  const count = numberInput(Math.min(8, model.limits.max_images), 1, model.limits.max_images);
  const steps = slider("DDIM steps", defaults.steps ?? 20, 1, Math.min(100, model.limits.max_steps), 1);
  const guidance = slider("Guidance scale (0: unconditional)", defaults.guidance_scale ?? 1.5, 0,
    Math.min(5, model.limits.max_guidance_scale), 0.1, (v) => Number(v).toFixed(1));
  const seed = numberInput(0, 0, undefined);
  const go = el("button", { type: "button", text: "Generate" });
  const progress = el("p", { class: "muted", "aria-live": "polite", text: "–" });
  const grid = el("div", { class: "grid" });
  const record = { events: [], done: false };

  const draw = (images, classes) => grid.replaceChildren(...images.map((b64, i) => {
    const name = classes ? labels[classes[i]] ?? String(classes[i]) : null;
    return el("figure", { class: "sample", "data-class": classes ? classes[i] : "" },
      el("img", { src: pngSrc(b64), alt: name === null ? `sample ${i + 1}` : `class ${name}, sample ${i + 1}` }),
      name === null ? null : el("figcaption", { text: `class ${name}` }));
  }));

  async function generate() {
    const body = {
      model: model.name, num_samples: Number(count.value), steps: Number(steps.input.value),
      guidance_scale: Number(guidance.input.value), seed: Number(seed.value), stream: true,
    };
    if (conditional && classPicker.value !== "") body.class = Number(classPicker.value);
    go.disabled = true;
    record.events = [];
    record.done = false;
    playground.lastDiffusion = record;
    try {
      const response = await request("generate", body, { signal, stream: true });
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const line = buffer.slice(0, end).split("\n").find((l) => l.startsWith("data: "));
          buffer = buffer.slice(end + 2);
          if (!line) continue;
          const data = JSON.parse(line.slice(6));
          record.events.push(data.step ?? "final");
          if (data.error) {
            showError(new Error(data.error));
          } else if (data.step !== undefined) {
            progress.textContent = `step ${data.step} of ${data.steps}`;
            draw(data.images, null);
          } else {
            progress.textContent = `done: ${body.steps} steps in ${(data.timings.total_s * 1000).toFixed(0)} ms`;
            draw(data.images, data.classes ?? null);
          }
        }
      }
    } catch (error) {
      showError(error);
    } finally {
      record.done = true;
      go.disabled = false;
    }
  }
  go.addEventListener("click", generate);
  root.append(
    el("p", { class: "muted", text: `The server walks from noise to ${conditional ? "the class asked for" : "an image"} in the steps given; every ${defaults.stream_every ?? 5} steps it sends its current estimate, drawn here as it comes.` }),
    el("div", { class: "row" }, conditional ? field("Class", classPicker) : null, field("Images", count), field("Seed", seed),
      steps.node, conditional ? guidance.node : null, go),
    progress,
    grid,
  );
  generate();
}

// Seeded uniform numbers in [0, 1) (mulberry32): the same seed, the same picture.
function uniformRng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// A seeded Gaussian (Box-Muller): the same drawing gets the same noise.
function gaussian(seed) {
  const uniform = uniformRng(seed);
  return () => Math.sqrt(-2 * Math.log(1 - uniform())) * Math.cos(2 * Math.PI * uniform());
}

function autoencoderPanel(model, root) {
  const pre = model.preprocessing;
  const isVae = model.kinds["/predict"] === "VAE";
  // A denoising autoencoder reports how it does on noisy inputs: start with noise for it.
  const denoising = Object.keys(model.metrics ?? {}).some((name) => name.includes("noisy"));
  const noise = slider("Noise (std)", denoising ? 0.3 : 0, 0, 1, 0.05, (v) => Number(v).toFixed(2));
  const centred = el("input", { type: "checkbox", checked: true });
  const input = el("figure", {}, el("canvas", { class: "pixels" }), el("figcaption", { text: "Input the model sees" }));
  const noisy = el("figure", {}, el("canvas", { class: "pixels" }), el("figcaption", { text: "Noisy input (sent)" }));
  const output = el("figure", {}, el("img", { class: "pixels reconstruction", alt: "reconstruction" }),
    el("figcaption", { text: "Reconstruction" }));
  const reconstruct = latestOnly(async () => {
    if (pad.isEmpty()) return;
    const clean = modelInput(pad, pre, centred.checked);
    input.firstChild.replaceWith(clean);
    const sent = addNoise(clean, Number(noise.input.value));
    noisy.firstChild.replaceWith(sent);
    const body = { model: model.name, inputs: b64png(sent), format: "png" };
    if (isVae) body.return_reconstruction = true;
    try {
      const item = (await postJSON("predict", body)).outputs[0];
      output.firstChild.src = pngSrc(item.reconstruction);
    } catch (error) {
      showError(error);
    }
  });
  const pad = drawingPad(reconstruct);
  noise.input.addEventListener("change", reconstruct);
  centred.addEventListener("change", reconstruct);
  pad.controls.append(field("Centre and scale the drawing", centred), noise.node);
  root.append(
    el("p", { class: "muted", text: "Draw a digit: the model encodes it and decodes the code back into an image." }),
    el("div", { class: "figures" }, el("figure", {}, pad.canvas, el("figcaption", { text: "Your drawing" })), input, noisy,
      output),
    pad.controls,
  );
}

// An image translator (CycleGAN): one graph per direction, image in, image out.
function translatorPanel(model, root) {
  const pre = model.preprocessing;
  const directions = Object.keys(model.graphs ?? {});
  const direction = el("select", {}, directions.map((d) => el("option", { value: d, text: d.replaceAll("_", " ") })));
  const centred = el("input", { type: "checkbox", checked: true });
  const input = el("figure", {}, el("canvas", { class: "pixels" }), el("figcaption", { text: "Input (sent)" }));
  const caption = el("figcaption", { text: "Translated" });
  const output = el("figure", {}, el("img", { class: "pixels translation", alt: "translated image" }), caption);
  const translate = latestOnly(async () => {
    if (pad.isEmpty()) return;
    const sent = modelInput(pad, pre, centred.checked);
    sent.classList.add("sent");
    input.firstChild.replaceWith(sent);
    const body = { model: model.name, inputs: b64png(sent), direction: direction.value, format: "png" };
    try {
      const answer = await postJSON("predict", body);
      output.firstChild.src = pngSrc(answer.outputs[0].image);
      output.firstChild.dataset.direction = answer.direction;
      caption.textContent = `Translated: ${answer.direction.replaceAll("_", " ")}`;
    } catch (error) {
      showError(error);
    }
  });
  const pad = drawingPad(translate);
  direction.addEventListener("change", translate);
  centred.addEventListener("change", translate);
  pad.controls.append(field("Centre and scale the drawing", centred));
  root.append(
    el("p", { class: "muted", text: `Draw a digit or upload an image: the model translates it ${directions.map((d) => d.replaceAll("_", " ")).join(" or ")} (one graph per direction). Input and output side by side.` }),
    el("div", { class: "row" }, field("Direction", direction)),
    el("div", { class: "figures" }, el("figure", {}, pad.canvas, el("figcaption", { text: "Your drawing" })), input, output),
    pad.controls,
  );
}

// ----------------------------------------------------------------------------- the dual encoder

// The attributes of the captioned shapes clip-shapes was trained on (training/captions.py), so the page
// can make test images like the training ones: a shape of a named colour, size and position on a grey
// background, drawn here through its signed distance as training.data.render_shapes draws it.
const SHAPE_WORLD = {
  shape: ["circle", "square", "triangle", "cross", "ring", "star"],
  colour: { red: [0.9, 0.1, 0.1], green: [0.1, 0.7, 0.15], blue: [0.1, 0.25, 0.95], yellow: [0.95, 0.88, 0.1],
    purple: [0.58, 0.15, 0.8], orange: [1.0, 0.55, 0.05], white: [0.97, 0.97, 0.97], black: [0.04, 0.04, 0.04] },
  size: ["small", "large"],
  position: ["left", "middle", "right"],
};
const WHERE = { left: "on the left", middle: "in the middle", right: "on the right" };
// Zero-shot label sets from the held-out prompt templates (never training captions).
const PROMPT_SETS = {
  Shapes: SHAPE_WORLD.shape.map((v) => `a photo of a ${v}`),
  Colours: Object.keys(SHAPE_WORLD.colour).map((v) => `a photo of something ${v}`),
  Sizes: SHAPE_WORLD.size.map((v) => `a photo of a ${v} object`),
  Positions: SHAPE_WORLD.position.map((v) => `a photo of an object ${WHERE[v]}`),
};
const shapeWords = (a) => `${a.size} ${a.colour} ${a.shape} ${WHERE[a.position]}`;
const describeShape = (a) => `a photo of a ${shapeWords(a)}`; // the held-out retrieval template

// Signed distance (negative inside) of a shape in local units where its radius is ~1.
function shapeDistance(shape, u, v) {
  switch (shape) {
    case "circle": return Math.hypot(u, v) - 0.9;
    case "square": return Math.max(Math.abs(u), Math.abs(v)) - 0.7;
    case "triangle": return Math.max(...[0, 1, 2].map((k) => {
      const a = Math.PI / 2 + (2 * Math.PI * k) / 3;
      return u * Math.cos(a) + v * Math.sin(a) - 0.5;
    }));
    case "cross": return Math.min(Math.max(Math.abs(u) - 0.95, Math.abs(v) - 0.3), Math.max(Math.abs(u) - 0.3, Math.abs(v) - 0.95));
    case "ring": return Math.abs(Math.hypot(u, v) - 0.67) - 0.25;
    default: { // star
      const t = (((Math.atan2(v, u) * 5) / (2 * Math.PI)) % 1 + 1) % 1;
      return Math.hypot(u, v) - (0.45 + 0.55 * Math.abs(2 * t - 1));
    }
  }
}

// A (size x size) canvas showing the attributes; the rest (rotation, grey levels, the blob, the exact
// place within its third) drawn from the seed.
function shapeImage(attributes, seed, size) {
  const rand = uniformRng(seed);
  const between = (lo, hi) => lo + (hi - lo) * rand();
  const scale = size / 32; // the training images are 32x32
  const radius = (attributes.size === "large" ? between(8, 9.5) : between(5, 6)) * scale;
  const margin = radius * 1.1 + scale;
  const span = size - 1 - 2 * margin;
  const third = SHAPE_WORLD.position.indexOf(attributes.position);
  const cx = margin + span * ([0, 0.43, 0.72][third] + [0.28, 0.14, 0.28][third] * rand());
  const cy = margin + span * rand();
  const theta = between(0, 2 * Math.PI);
  const aspect = [between(0.9, 1.1), between(0.9, 1.1)];
  const grey = between(0.25, 0.75);
  const background = [0, 1, 2].map(() => grey + between(-0.04, 0.04));
  const colour = SHAPE_WORLD.colour[attributes.colour].map((c) => Math.min(1, Math.max(0, c + between(-0.05, 0.05))));
  const blobGrey = between(0.2, 0.8);
  const blob = { x: between(0, size - 1), y: between(0, size - 1), sigma: between(1.5, 3) * scale, alpha: between(0.3, 0.6),
    colour: [0, 1, 2].map(() => blobGrey + between(-0.04, 0.04)) };
  const canvas = el("canvas", { width: size, height: size, class: "pixels", role: "img",
    "aria-label": `generated image: ${describeShape(attributes)}` });
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  const image = ctx.createImageData(size, size);
  const [cos, sin] = [Math.cos(theta), Math.sin(theta)];
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) {
      const [dx, dy] = [x - cx, y - cy];
      const u = (cos * dx + sin * dy) / (radius * aspect[0]);
      const v = (-sin * dx + cos * dy) / (radius * aspect[1]);
      const ink = Math.min(1, Math.max(0, 0.5 - (shapeDistance(attributes.shape, u, v) * radius) / scale));
      const b = blob.alpha * Math.exp(-((x - blob.x) ** 2 + (y - blob.y) ** 2) / (2 * blob.sigma ** 2));
      for (let c = 0; c < 3; c++) {
        const under = background[c] * (1 - b) + blob.colour[c] * b;
        image.data[4 * (y * size + x) + c] = Math.round(255 * (under * (1 - ink) + colour[c] * ink));
      }
      image.data[4 * (y * size + x) + 3] = 255;
    }
  }
  ctx.putImageData(image, 0, 0);
  return canvas;
}

function randomAttributes(rand) {
  const pick = (values) => values[Math.floor(rand() * values.length)];
  return { shape: pick(SHAPE_WORLD.shape), colour: pick(Object.keys(SHAPE_WORLD.colour)), size: pick(SHAPE_WORLD.size),
    position: pick(SHAPE_WORLD.position) };
}

// A dual encoder (CLIP): zero-shot classification of one image against label prompts, and text-to-image
// retrieval of a query over a gallery of images, both in one /predict each.
function dualEncoderPanel(model, root) {
  const pre = model.preprocessing;
  const limits = model.limits;
  const mapUnknown = el("input", { type: "checkbox" });
  const options = (values) => values.map((v) => el("option", { value: v, text: v }));

  // The image: drawn or uploaded on the pad, or a generated shape.
  let current = null; // a canvas at the model's input size: what is sent
  const shown = el("figure", {}, el("canvas", { class: "pixels" }), el("figcaption", { text: `The image sent (${pre.width}x${pre.height})` }));
  const setImage = (canvas) => {
    current = canvas;
    shown.firstChild.replaceWith(canvas);
    classify();
  };
  const pad = drawingPad(() => !pad.isEmpty() && setImage(modelInput(pad, pre, false)));
  const colour = el("input", { type: "color", value: "#ffcc00" });
  pad.pen.colour = colour.value;
  colour.addEventListener("input", () => (pad.pen.colour = colour.value));
  pad.controls.append(field("Pen colour", colour));
  const pickers = Object.fromEntries(["shape", "colour", "size", "position"].map((name) => {
    const values = name === "colour" ? Object.keys(SHAPE_WORLD.colour) : SHAPE_WORLD[name];
    return [name, el("select", {}, options(values))];
  }));
  pickers.colour.value = "red";
  pickers.size.value = "large";
  let shapeSeed = 1;
  const makeShape = () => {
    const attributes = Object.fromEntries(Object.entries(pickers).map(([k, s]) => [k, s.value]));
    const small = shapeImage(attributes, shapeSeed++, pre.width);
    // The pad shows it too (scaled up), so that drawing on top of it works.
    const ctx = pad.canvas.getContext("2d");
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(small, 0, 0, pad.canvas.width, pad.canvas.height);
    setImage(small);
  };
  for (const select of Object.values(pickers)) select.addEventListener("change", makeShape);

  // Zero-shot: the label prompts, one per line.
  const labels = el("textarea", { rows: 6, spellcheck: "false" });
  labels.value = PROMPT_SETS.Shapes.join("\n");
  const zeroShot = el("div", { "aria-live": "polite" });
  const prompts = () => labels.value.split("\n").map((l) => l.trim()).filter(Boolean);
  const classify = latestOnly(async () => {
    const given = prompts();
    if (!current || !given.length) return zeroShot.replaceChildren();
    const body = { model: model.name, inputs: [b64png(current)], labels: given, top_k: given.length };
    if (mapUnknown.checked) body.map_unknown = true;
    try {
      const top = (await postJSON("predict", body)).outputs[0];
      zeroShot.replaceChildren(...topClass("Best label", top));
    } catch (error) {
      zeroShot.replaceChildren();
      showError(error);
    }
  });
  labels.addEventListener("input", debounce(classify, 200));
  mapUnknown.addEventListener("change", () => (classify(), search()));
  const presets = Object.entries(PROMPT_SETS).map(([name, set]) => el("button", { type: "button", class: "secondary",
    text: name, onclick: () => ((labels.value = set.join("\n")), classify()) }));

  // Retrieval: a gallery of generated shapes (and any image added to it), ranked for a text query.
  const gallerySize = Math.min(8, limits.max_gallery_images);
  const gallerySeed = numberInput(1, 0, undefined);
  let gallery = []; // [{ canvas, text }]
  const galleryView = el("div", { class: "grid gallery" });
  const query = el("input", { type: "text", spellcheck: "false", autocomplete: "off", maxlength: model.text_preprocessing?.max_length });
  const ranking = el("ol", { class: "ranking", "aria-live": "polite" });
  const showGallery = () => galleryView.replaceChildren(...gallery.map((g, i) =>
    el("figure", {}, g.canvas, el("figcaption", { text: `${i}: ${g.text}` }))));
  const search = latestOnly(async () => {
    if (!query.value || !gallery.length) return ranking.replaceChildren();
    const body = { model: model.name, inputs: gallery.map((g) => b64png(g.canvas)), query: query.value };
    if (mapUnknown.checked) body.map_unknown = true;
    try {
      const answer = (await postJSON("predict", body)).outputs[0];
      ranking.replaceChildren(...answer.ranking.map(({ index, score }, rank) => {
        const copy = el("img", { class: "big", src: gallery[index].canvas.toDataURL(), alt: gallery[index].text });
        return el("li", { "data-index": index }, el("figure", {}, copy,
          el("figcaption", { text: `#${rank + 1}: image ${index}, cosine ${score.toFixed(3)}` })));
      }));
    } catch (error) {
      ranking.replaceChildren();
      showError(error);
    }
  });
  const newGallery = () => {
    const rand = uniformRng(Number(gallerySeed.value) * 7919 + 1);
    const seen = new Set();
    gallery = [];
    while (gallery.length < gallerySize) { // distinct attributes: a full description has one answer
      const attributes = randomAttributes(rand);
      const text = shapeWords(attributes);
      if (seen.has(text)) continue;
      seen.add(text);
      gallery.push({ canvas: shapeImage(attributes, Math.floor(rand() * 1e9), pre.width), text });
    }
    query.value = `a photo of a ${gallery[Math.floor(gallery.length / 2)].text}`; // one image's full description
    showGallery();
    search();
  };
  gallerySeed.addEventListener("change", newGallery);
  query.addEventListener("input", debounce(search, 200));
  // Past the server's SERVE_MAX_GALLERY_IMAGES the search is refused (422), and the page shows it.
  const addImage = el("button", { type: "button", class: "secondary", text: "Add the image above to the gallery",
    onclick: () => {
      if (!current) return;
      const copy = el("canvas", { width: current.width, height: current.height, class: "pixels", role: "img", "aria-label": "added image" });
      copy.getContext("2d").drawImage(current, 0, 0);
      gallery.push({ canvas: copy, text: "your image" });
      showGallery();
      search();
    } });

  root.append(
    el("p", { class: "muted", text: "Both encoders map into one space: an image is classified against any label prompts you write (zero-shot), and a text query ranks a gallery of images (retrieval). Texts: lower-case letters, space and comma." }),
    el("h3", { text: "The image" }),
    el("div", { class: "row" }, ...Object.entries(pickers).map(([name, select]) => field(name[0].toUpperCase() + name.slice(1), select)),
      el("button", { type: "button", text: "Make the shape", onclick: makeShape })),
    el("div", { class: "figures" }, el("figure", {}, pad.canvas, el("figcaption", { text: "Draw, upload, or make a shape" })), shown),
    pad.controls,
    el("h3", { text: "Zero-shot classification" }),
    el("div", { class: "figures" },
      el("div", { class: "half" }, field("Label prompts (one per line)", labels),
        el("div", { class: "row" }, el("span", { class: "muted", text: "Prompt sets:" }), ...presets),
        field("Map unknown characters to <unk>", mapUnknown)),
      el("div", { class: "half" }, zeroShot)),
    el("h3", { text: "Text-to-image retrieval" }),
    field("Query", query),
    el("div", { class: "row" }, field("Gallery seed", gallerySeed), addImage,
      el("button", { type: "button", text: "Search", onclick: search })),
    el("div", { class: "figures" }, el("div", { class: "half" }, el("p", { class: "muted", text: "Gallery (the images sent)" }), galleryView),
      el("div", { class: "half" }, el("p", { class: "muted", text: "Ranking (most similar first)" }), ranking)),
  );
  makeShape();
  newGallery();
}

function addNoise(source, std) {
  const out = el("canvas", { width: source.width, height: source.height, class: "pixels", role: "img",
    "aria-label": `the input with Gaussian noise of std ${std}` });
  const ctx = out.getContext("2d");
  const image = source.getContext("2d").getImageData(0, 0, source.width, source.height);
  const normal = gaussian(1);
  for (let i = 0; i < image.data.length; i += 4) {
    const n = std * 255 * normal();
    for (let c = 0; c < 3; c++) image.data[i + c] = Math.min(255, Math.max(0, image.data[i + c] + n));
  }
  ctx.putImageData(image, 0, 0);
  return out;
}

// ------------------------------------------------------------------------------------ how it works

function table(rows) {
  return el("div", { class: "table-wrap" }, el("table", {}, el("tbody", {}, rows.map(([key, value]) =>
    el("tr", {}, el("th", { scope: "row", text: key }), el("td", { class: "mono", text: value }))))));
}

const shape = (spec) => `${spec.name}: ${spec.dtype}[${spec.shape.map((d) => (d < 0 ? "?" : d)).join(", ")}]`;

// A titled block of the "how it works" grid.
const block = (title, content) => el("div", {}, el("h3", { text: title }), content);

function howItWorks(model) {
  const body = $("#how-body");
  const endpoints = Object.entries(model.kinds ?? {}).map(([endpoint, kind]) => `${kind} at ${endpoint}`).join("; ");
  const blocks = [];
  const grid = el("div", { class: "how-grid" });
  const parts = [el("p", { text: model.description }), grid];
  blocks.push(block("Model", table([
      ["served", `version ${model.version} of [${model.versions.join(", ")}] on ${model.provider}`],
      ["family / task", `${model.family} / ${model.task}`],
      ["endpoints", endpoints || "none"],
      ["trained by", model.trained_by ?? "–"],
    ].concat(Object.entries(model.graphs ?? {}).map(([role, g]) =>
      [`graph ${role}`, `${g.file}: ${g.inputs.map(shape).join(", ")} → ${g.outputs.map(shape).join(", ")}`])))));
  if (model.architecture && Object.keys(model.architecture).length) {
    blocks.push(block("Architecture (layers and sizes)",
      table(Object.entries(model.architecture).map(([k, v]) => [k, JSON.stringify(v)]))));
  }
  if (model.metrics) {
    blocks.push(block("Quality (report.json)", table(Object.entries(model.metrics).map(([k, v]) => [k, figureOf(v)]))));
  }
  if (model.parity) {
    const p = model.parity;
    blocks.push(block("Parity: ONNX against PyTorch", table([
      ["max |difference|", figureOf(p.max_abs_diff)],
      ["batch sizes checked", p.batch_sizes.join(", ")],
      ["per graph", Object.entries(p.per_graph ?? {}).map(([g, d]) => `${g}: ${figureOf(d)}`).join("; ") || "–"],
      ["provider", p.provider],
    ])));
  }
  if (model.plots?.length) {
    const version = `?version=${model.version}`;
    parts.push(el("h3", { text: "Pictures from the report" }), el("div", { class: "plots" }, model.plots.map((file) =>
      el("figure", {}, el("img", { src: `models/${encodeURIComponent(model.name)}/plots/${encodeURIComponent(file)}${version}`,
        alt: `${file.replace(".png", "").replaceAll("_", " ")} of ${model.name}`, loading: "lazy" }),
      el("figcaption", { text: file })))));
  }
  grid.append(...blocks);
  body.replaceChildren(...parts);
}

start();
