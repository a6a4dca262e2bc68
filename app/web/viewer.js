// encoder-serve viewer: classification bars, embedding similarity and attention maps.
// Plain browser JavaScript with no dependencies, so the page works offline and needs no build.
"use strict";

const API_KEY_STORAGE = "encoder-serve.apiKey";
const $ = (id) => document.getElementById(id);

const state = {
  models: [],
  // The attention currently shown: its text and model, and every view fetched for them.
  attention: null,
  // The embedding model whose similarity is shown, if one is.
  similarityModel: null,
};

// Each result panel's generation: clearing a panel starts a new one, so an answer that arrives
// for an older text, model or request is dropped instead of drawn under the current ones.
const generations = { classification: 0, similarity: 0, attention: 0, explanation: 0, rerank: 0 };
// The newest attention render: an older one still loading draws nothing.
let latestRender = 0;

// ---------------------------------------------------------------- HTTP

class ApiError extends Error {}

async function api(path, body) {
  const headers = { Accept: "application/json" };
  const key = $("api-key").value.trim();
  if (key) headers.Authorization = `Bearer ${key}`;
  const init = { method: body === undefined ? "GET" : "POST", headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    throw new ApiError(`cannot reach the server (${err.message})`);
  }
  const payload = await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(describeFailure(response.status, payload));
  return payload;
}

function describeFailure(status, payload) {
  const message = payload?.error?.message ?? `HTTP ${status}`;
  // The only failure the user can fix from this page: say how.
  if (status === 401) return `${message} (set the API key at the top right)`;
  return `${status}: ${message}`;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
}

// Runs an action behind a button: one at a time, errors shown inline instead of thrown.
async function run(button, action) {
  clearError();
  button.disabled = true;
  button.classList.add("loading");
  try {
    await action();
  } catch (err) {
    showError(err instanceof ApiError ? err.message : `unexpected error: ${err.message}`);
    if (!(err instanceof ApiError)) console.error(err);
  } finally {
    button.disabled = false;
    button.classList.remove("loading");
  }
}

// ---------------------------------------------------------------- models

async function loadModels() {
  clearError();
  try {
    state.models = (await api("/models")).models;
  } catch (err) {
    state.models = [];
    showError(`could not list models: ${err.message}`);
  }
  const select = $("model");
  const previous = select.value;
  select.replaceChildren(
    ...state.models.map(
      (model) =>
        new Option(`${model.name} · ${model.task}${model.default ? " · default" : ""}`, model.name),
    ),
  );
  if (state.models.some((model) => model.name === previous)) {
    select.value = previous;
  } else {
    // Open on a classifier when one is served, the default one first (as /classify picks
    // it): "Classify" then works on the first click.
    const classifier = preferred("classification");
    if (classifier) select.value = classifier.name;
  }
  onModelChange();
}

// The default model of a task (GET /models marks it), else the first of the task.
function preferred(task) {
  const ofTask = state.models.filter((model) => model.task === task);
  return ofTask.find((model) => model.default) ?? ofTask[0] ?? null;
}

function selectedModel() {
  return state.models.find((model) => model.name === $("model").value) ?? null;
}

// Similarity needs embeddings; a classifier (e.g. a head on an encoder) cannot give them.
function embeddingModel() {
  const model = selectedModel();
  if (model?.task === "embedding") return model;
  return preferred("embedding");
}

function onModelChange() {
  const model = selectedModel();
  clearClassification();
  clearAttention();
  clearRerank();
  // The rerank view shows only when a reranker is served.
  $("rerank-card").hidden = !preferred("rerank");
  fillTargets();
  if (state.similarityModel !== (embeddingModel()?.name ?? null)) clearSimilarity();
  $("labels-row").hidden = model?.task !== "embedding";
  $("model-info").textContent = model
    ? [model.labels?.length ? `${model.labels.length} labels` : `${model.dimensions} dims`,
       `max ${model.max_length} tokens`, model.device, model.precision].filter(Boolean).join(" · ")
    : "no models loaded";
}

// ---------------------------------------------------------------- classification

function candidateLabels() {
  return $("labels").value.split(",").map((label) => label.trim()).filter(Boolean);
}

function clearClassification() {
  generations.classification += 1;
  $("classify-model").textContent = "";
  $("bars").replaceChildren(element("p", "placeholder", "Scores appear here."));
}

async function classify() {
  clearClassification();
  const generation = generations.classification;
  const model = selectedModel();
  if (!model) throw new ApiError("no model to classify with");
  const body = { inputs: [inputText()], model: model.name };
  if (model.task === "embedding") {
    const labels = candidateLabels();
    if (labels.length < 2) {
      throw new ApiError(`${model.name} is an embedding model: enter at least two candidate labels`);
    }
    body.candidate_labels = labels;
  }
  const result = await api("/classify", body);
  if (generation !== generations.classification) return;
  $("classify-model").textContent = `· ${result.model}`;
  renderBars(result.results[0]);
}

function renderBars(scores) {
  const rows = scores.map((item, index) => {
    const row = element("div", "bar" + (index === 0 ? " top" : ""));
    row.dataset.testid = "class-bar";
    row.dataset.label = item.label;
    row.dataset.score = String(item.score);
    const fill = element("span", "bar-fill");
    // Raw scores may fall outside [0, 1]: the bar clips, the number stays exact.
    fill.style.width = `${Math.max(0, Math.min(1, item.score)) * 100}%`;
    const track = element("span", "bar-track");
    track.append(fill);
    row.append(element("span", "bar-label", item.label), track,
      element("span", "bar-value", item.score.toFixed(3)));
    return row;
  });
  $("bars").replaceChildren(...rows);
}

// ---------------------------------------------------------------- rerank

// The selected model when it is a reranker, else the default reranker.
function rerankModel() {
  const model = selectedModel();
  if (model?.task === "rerank") return model;
  return preferred("rerank");
}

function clearRerank() {
  generations.rerank += 1;
  $("rerank-model").textContent = "";
  $("rerank-truncated").hidden = true;
  $("rerank-bars").replaceChildren(
    element("p", "placeholder", "Relevance scores appear here, best first."),
  );
}

async function rerank() {
  clearRerank();
  const generation = generations.rerank;
  const model = rerankModel();
  if (!model) throw new ApiError("no rerank model is loaded");
  const documents = $("documents").value.split("\n").map((line) => line.trim()).filter(Boolean);
  if (documents.length === 0) throw new ApiError("enter at least one document, one per line");
  const result = await api("/v1/rerank", {
    model: model.name, query: inputText(), documents, return_documents: true,
  });
  if (generation !== generations.rerank) return;
  $("rerank-model").textContent = `· ${result.model}`;
  const warnings = result.meta?.warnings ?? [];
  $("rerank-truncated").textContent = warnings.join("; ");
  $("rerank-truncated").hidden = warnings.length === 0;
  const rows = result.results.map((item, rank) => {
    const row = element("div", "bar" + (rank === 0 ? " top" : ""));
    row.dataset.testid = "rerank-bar";
    row.dataset.index = String(item.index);
    row.dataset.score = String(item.relevance_score);
    const fill = element("span", "bar-fill");
    fill.style.width = `${Math.max(0, Math.min(1, item.relevance_score)) * 100}%`;
    const track = element("span", "bar-track");
    track.append(fill);
    const label = element("span", "bar-label", item.document.text);
    label.title = item.document.text;
    row.append(label, track, element("span", "bar-value", item.relevance_score.toFixed(3)));
    return row;
  });
  $("rerank-bars").replaceChildren(...rows);
}

// ---------------------------------------------------------------- similarity

function clearSimilarity() {
  generations.similarity += 1;
  state.similarityModel = null;
  $("similarity").hidden = true;
  $("similarity-value").textContent = "";
  $("compare-model").textContent = "";
}

async function compare() {
  clearSimilarity();
  const generation = generations.similarity;
  const model = embeddingModel();
  if (!model) throw new ApiError("no embedding model is loaded");
  const texts = [inputText(), requireText($("text-b"), "the second text")];
  const result = await api("/encode", { inputs: texts, model: model.name });
  if (generation !== generations.similarity) return;
  state.similarityModel = model.name;
  const [a, b] = result.embeddings;
  // /encode returns unit vectors, so the dot product is the cosine.
  const cosine = a.reduce((sum, value, i) => sum + value * b[i], 0);
  $("similarity-value").textContent = cosine.toFixed(3);
  $("similarity-fill").style.width = `${Math.max(0, Math.min(1, cosine)) * 100}%`;
  $("similarity").hidden = false;
  $("compare-model").textContent = `embeddings from ${result.model}`;
}

// ---------------------------------------------------------------- attention

let idleCaption = "";

function clearAttention() {
  generations.attention += 1;
  state.attention = null;
  $("attention-model").textContent = "";
  $("view-caption").innerHTML = idleCaption;
  $("attention-truncated").hidden = true;
  $("first-token").textContent = "";
  $("special-names").textContent = "special tokens";
  $("heatmap").replaceChildren();
  $("cls-strip").replaceChildren();
  $("legend").hidden = true;
  $("tooltip").hidden = true;
}

async function showAttention() {
  clearAttention();
  const generation = generations.attention;
  const model = selectedModel();
  if (!model) throw new ApiError("no model is loaded");
  const text = inputText();
  // The first request (mean over heads, every layer) also says how many layers and heads exist.
  // /tokenize, alongside, counts the whole text's tokens: more than the map has means the server
  // cut the text to its attention limit.
  const [mean, tokenized] = await Promise.all([
    api("/attention", { inputs: text, model: model.name, aggregate: "mean" }),
    api("/tokenize", { inputs: text, model: model.name }).catch(() => null),
  ]);
  if (generation !== generations.attention) return;
  state.attention = {
    text,
    model: mean.model,
    tokens: mean.tokens,
    special: mean.special ?? mean.tokens.map(() => false),
    views: new Map([["mean", mean]]),
  };
  fillSelect($("layer"), mean.num_layers, "layer", mean.num_layers - 1);
  fillSelect($("head"), mean.num_heads, "head", 0);
  $("attention-model").textContent = `· ${mean.model} · ${mean.tokens.length} tokens`;
  $("first-token").textContent = `(${mean.tokens[0]})`;
  const specials = [...new Set(mean.tokens.filter((_, i) => state.attention.special[i]))];
  $("special-names").textContent = specials.length ? specials.join("/") : "special tokens";
  showTruncation(text, state.attention, tokenized);
  await renderAttention();
}

// Says when the map covers only the start of the text, and where it stops.
function showTruncation(text, shown, tokenized) {
  const notice = $("attention-truncated");
  const all = tokenized?.tokens?.[0];
  const cutByTokenizer = Boolean(tokenized?.truncated?.[0]);
  if (!all || (!cutByTokenizer && all.length <= shown.tokens.length)) {
    notice.hidden = true;
    return;
  }
  const total = cutByTokenizer ? `more than ${all.length}` : String(all.length);
  const kept = shown.special.filter((isSpecial) => !isSpecial).length;
  const last = all.filter((token) => !token.special)[kept - 1];
  // Offsets count characters (code points), not JavaScript's UTF-16 units.
  const end = last ? Array.from(text).slice(0, last.stop).join("").trimEnd() : "";
  // The last few words the map still covers, from a word's start.
  const tail = end.length > 40 ? `…${end.slice(-40).replace(/^\S*\s+/, "")}` : end;
  notice.textContent =
    `The text was cut: the map shows its first ${shown.tokens.length} tokens of ${total}, ` +
    `the most the server allows (ENCODER_MAX_ATTENTION_TOKENS). ` +
    (tail ? `Everything after “${tail}” is left out.` : "");
  notice.hidden = false;
}

function fillSelect(select, count, noun, chosen) {
  const keep = Number(select.value);
  select.replaceChildren(
    ...Array.from({ length: count }, (_, i) => new Option(`${noun} ${i + 1}`, String(i))),
  );
  select.value = String(keep >= 0 && keep < count && select.dataset.touched ? keep : chosen);
}

function currentView() {
  return document.querySelector('input[name="view"]:checked').value;
}

// Fetches (once per text and model) what the chosen view needs: a head view loads every head of
// its layer, so stepping through heads costs no request.
async function viewResponse(view, layer) {
  const shown = state.attention;
  const key = view === "head" ? `layer:${layer}` : view;
  if (!shown.views.has(key)) {
    const body = { inputs: shown.text, model: shown.model, aggregate: view === "head" ? "none" : view };
    if (view === "head") body.layers = [layer];
    shown.views.set(key, await api("/attention", body));
  }
  return shown.views.get(key);
}

function pickMatrix(view, response, layer, head) {
  if (view === "rollout") return response.attentions;
  const layerIndex = indexOf(response.layers, layer);
  if (view === "mean") return response.attentions[layerIndex];
  return response.attentions[layerIndex][indexOf(response.heads, head)];
}

// The response lists the layer/head indices it returned; without the list they are 0..n-1.
function indexOf(returned, wanted) {
  if (!returned) return wanted;
  const index = returned.indexOf(wanted);
  if (index < 0) throw new ApiError(`the server did not return index ${wanted}`);
  return index;
}

async function renderAttention() {
  const shown = state.attention;
  if (!shown) return;
  const render = ++latestRender;
  const view = currentView();
  const layer = Number($("layer").value);
  const head = Number($("head").value);
  $("layer").disabled = view === "rollout";
  $("head").disabled = view !== "head";
  const response = await viewResponse(view, layer);
  // Controls changed while this view loaded: the newer render draws, not this one.
  if (render !== latestRender || shown !== state.attention) return;
  const matrix = pickMatrix(view, response, layer, head);
  // Hiding the special tokens drops their rows and columns; the other values stay as they are.
  const hide = $("hide-special").checked;
  const visible = shown.tokens.map((_, i) => i).filter((i) => !(hide && shown.special[i]));
  $("view-caption").textContent = caption(view, layer, head);
  const max = renderHeatmap(shown.tokens, shown.special, matrix, visible);
  renderStrip(shown.tokens, shown.special, matrix[0], visible);
  renderLegend(max, hide && visible.length < shown.tokens.length);
}

function caption(view, layer, head) {
  if (view === "rollout") {
    return "Rollout: attention propagated through every layer (with the residual path), " +
      "from the input tokens up to the last layer.";
  }
  if (view === "mean") return `Layer ${layer + 1}, mean over all heads.`;
  return `Layer ${layer + 1}, head ${head + 1}.`;
}

function renderHeatmap(tokens, special, matrix, visible) {
  const table = $("heatmap");
  const max = largest(visible.flatMap((i) => visible.map((j) => matrix[i][j])));
  const labelHeight = columnLabelHeight(visible.map((j) => tokens[j]));
  const cell = cellSize(visible.length, labelHeight);
  table.style.setProperty("--cell", `${cell}px`);
  table.style.setProperty("--label-height", `${labelHeight}px`);
  table.classList.toggle("dense", cell < 15);

  const head = document.createElement("tr");
  head.append(element("th", "corner"));
  for (const j of visible) {
    const th = element("th", labelClass("col-label", special[j]));
    th.append(element("span", "", tokens[j]));
    head.append(th);
  }
  const thead = document.createElement("thead");
  thead.append(head);

  const tbody = document.createElement("tbody");
  for (const i of visible) {
    const tr = document.createElement("tr");
    tr.dataset.testid = "heatmap-row";
    tr.append(element("th", labelClass("row-label", special[i]), tokens[i]));
    for (const j of visible) {
      const td = document.createElement("td");
      td.dataset.testid = "heatmap-cell";
      setTip(td, tokens[i], tokens[j], matrix[i][j]);
      td.style.background = color(matrix[i][j] / max);
      tr.append(td);
    }
    tbody.append(tr);
  }
  table.replaceChildren(thead, tbody);
  return max;
}

// The ramp runs from 0 to the largest value shown; on the √ scale its middle is a quarter of it.
function renderLegend(max, specialHidden) {
  const sqrt = $("scale").value === "sqrt";
  const middle = sqrt ? max / 4 : max / 2;
  $("legend-max").textContent = max.toFixed(3);
  $("legend-scale").textContent =
    `${sqrt ? "√ scale" : "linear scale"} (mid-ramp ${middle.toFixed(3)})`;
  $("legend-rows").textContent =
    "rows: from-token (query) · columns: to-token (key) · " +
    (specialHidden ? "special tokens hidden, so rows sum to less than 1" : "each row sums to 1");
  $("legend").hidden = false;
}

// Vertical column labels as tall as the longest token needs (monospace: ~7.3 px a character).
function columnLabelHeight(tokens) {
  const longest = Math.max(...tokens.map((token) => token.length));
  return Math.min(72, Math.ceil(longest * 7.3) + 8);
}

// Fits the map in the panel beside and below its labels; below 11 px the labels would not be
// legible, so long inputs scroll instead (the labels are sticky). Each cell has 1 px spacing.
const LEGEND_HEIGHT = 30;

function cellSize(count, labelHeight) {
  const room = $("heatmap-wrap");
  const width = room.clientWidth - 120;
  const height = room.clientHeight - LEGEND_HEIGHT - labelHeight - 4;
  const fit = Math.floor(Math.min(width, height) / count) - 1;
  return Math.max(11, Math.min(30, fit));
}

const COMPACT_STRIP_TOKENS = 40;

function renderStrip(tokens, special, row, visible) {
  const max = largest(visible.map((j) => row[j]));
  const chips = visible.map((j) => {
    const token = tokens[j];
    const chip = element("span", labelClass("chip", special[j]));
    chip.dataset.testid = "cls-token";
    chip.style.background = color(row[j] / max);
    chip.classList.toggle("on-dark", shade(row[j] / max) > 0.55);
    setTip(chip, tokens[0], token, row[j]);
    chip.append(element("span", "chip-token", token), element("span", "chip-value", row[j].toFixed(2)));
    return chip;
  });
  const strip = $("cls-strip");
  // Long inputs: the token alone in each chip (its value is in the tooltip), so the whole strip
  // stays a few lines tall and leaves the room to the map.
  strip.classList.toggle("compact", chips.length > COMPACT_STRIP_TOKENS);
  strip.replaceChildren(...chips);
}

function labelClass(base, isSpecial) {
  return isSpecial ? `${base} special` : base;
}

// Sequential white-to-indigo ramp: equal steps in value read as equal steps in darkness.
const RAMP = [
  [247, 248, 252], [208, 221, 244], [150, 180, 232], [88, 132, 214], [46, 86, 178], [24, 44, 120],
];

// Most heads park much of their attention on [CLS] or [SEP]; on a linear scale everything
// else then looks blank, so the square-root scale (the default) lifts the small values.
function shade(fraction) {
  const clipped = Math.max(0, Math.min(1, fraction));
  return $("scale").value === "sqrt" ? Math.sqrt(clipped) : clipped;
}

function color(fraction) {
  const t = shade(fraction) * (RAMP.length - 1);
  const low = Math.floor(t);
  const high = Math.min(RAMP.length - 1, low + 1);
  const mix = RAMP[low].map((channel, k) => Math.round(channel + (RAMP[high][k] - channel) * (t - low)));
  return `rgb(${mix.join(",")})`;
}

// ---------------------------------------------------------------- tooltip

function setTip(node, from, to, value) {
  node.dataset.from = from;
  node.dataset.to = to;
  node.dataset.value = value.toFixed(4);
  node.setAttribute("aria-label", tipText(node));
}

function tipText(node) {
  return `${node.dataset.from} → ${node.dataset.to}: ${node.dataset.value}`;
}

function onPointerOver(event) {
  const target = event.target.closest("[data-value]");
  const tooltip = $("tooltip");
  document.querySelectorAll(".hover").forEach((node) => node.classList.remove("hover"));
  if (!target) {
    tooltip.hidden = true;
    return;
  }
  tooltip.replaceChildren(
    element("b", "", target.dataset.from), " → ", element("b", "", target.dataset.to),
    element("span", "tip-value", target.dataset.value),
  );
  tooltip.hidden = false;
  highlightAxes(target);
  const box = target.getBoundingClientRect();
  const tip = tooltip.getBoundingClientRect();
  // Above the cell, kept inside the window.
  const left = Math.min(window.innerWidth - tip.width - 8, Math.max(8, box.left + box.width / 2 - tip.width / 2));
  const top = box.top - tip.height - 8 < 8 ? box.bottom + 8 : box.top - tip.height - 8;
  tooltip.style.left = `${left + window.scrollX}px`;
  tooltip.style.top = `${top + window.scrollY}px`;
}

// A heatmap cell lights up its row and column labels, so long maps stay readable.
function highlightAxes(cell) {
  if (cell.tagName !== "TD") return;
  const row = cell.parentElement;
  row.firstElementChild.classList.add("hover");
  const column = Array.prototype.indexOf.call(row.children, cell);
  $("heatmap").tHead.rows[0].children[column].classList.add("hover");
}

// ---------------------------------------------------------------- explanations

// The labels an explanation can target: the classifier's own, or the zero-shot candidates.
function targetLabels() {
  const model = selectedModel();
  if (!model) return [];
  return model.task === "embedding" ? candidateLabels() : model.labels ?? [];
}

function fillTargets() {
  clearExplanation();
  const select = $("explain-target");
  const previous = select.value;
  const labels = targetLabels();
  select.replaceChildren(
    new Option("top label", ""),
    ...labels.map((label) => new Option(label, label)),
  );
  if (labels.includes(previous)) select.value = previous;
}

function clearExplanation() {
  generations.explanation += 1;
  $("explain-model").textContent = "";
  $("explain-summary").textContent = "Click Explain to see how much each word moved a label's score.";
  $("explain-words").replaceChildren();
  $("explain-legend").hidden = true;
}

// Errors as sentences: "Could not explain the text: <the server's reason>."
function asSentence(prefix, err) {
  const reason = err instanceof ApiError ? err.message.replace(/^\d{3}: /, "") : err.message;
  const sentence = `${prefix}: ${reason}`;
  return /[.!?]$/.test(sentence) ? sentence : `${sentence}.`;
}

async function explain() {
  clearExplanation();
  const generation = generations.explanation;
  const model = selectedModel();
  if (!model) throw new ApiError("There is no model to explain with.");
  let text;
  try {
    text = inputText();
  } catch {
    throw new ApiError("Enter a text to explain first.");
  }
  const method = $("explain-method").value;
  const body = { inputs: text, model: model.name, method };
  if (method === "shap") body.samples = 256;
  const target = $("explain-target").value;
  if (target) body.target = target;
  if (model.task === "embedding") {
    const labels = candidateLabels();
    if (labels.length < 2) {
      throw new ApiError(`${model.name} is an embedding model: enter at least two candidate labels to explain.`);
    }
    body.candidate_labels = labels;
  }
  $("explain-summary").textContent = "Explaining…";
  let result;
  try {
    result = await api("/explain", body);
  } catch (err) {
    if (generation === generations.explanation) clearExplanation();
    throw new ApiError(asSentence("Could not explain the text", err));
  }
  if (generation !== generations.explanation) return;
  renderExplanation(text, result);
}

function renderExplanation(text, result) {
  $("explain-model").textContent = `· ${result.model}`;
  const limit = largest(result.words.map((word) => Math.abs(word.score)));
  const nodes = [];
  let at = 0;
  for (const word of result.words) {
    if (word.start > at) nodes.push(document.createTextNode(text.slice(at, word.start)));
    const chip = element("span", "explain-word", text.slice(word.start, word.stop));
    chip.dataset.testid = "explain-word";
    chip.dataset.score = String(word.score);
    const background = diverging(word.score / limit);
    chip.style.background = `rgb(${background.join(", ")})`;
    // White text on the dark chips (the strongest words), as the attention strip does.
    chip.classList.toggle("on-dark", isDark(background));
    const sign = word.score >= 0 ? "+" : "";
    chip.title = `${word.text}: ${sign}${word.score.toFixed(4)} to ${result.target}`;
    nodes.push(chip);
    at = word.stop;
  }
  if (at < text.length) nodes.push(document.createTextNode(text.slice(at)));
  $("explain-words").replaceChildren(...nodes);
  const method = result.method === "shap"
    ? `Shapley values from ${result.parameters.samples} samples (seed ${result.parameters.seed})`
    : "occlusion: each word removed in turn";
  const empty = result.empty_score === null ? "" : `, ${result.empty_score.toFixed(3)} with no words`;
  const cut = result.truncated ? " The text was cut at the model's max length: the rest is not explained." : "";
  $("explain-summary").textContent =
    `Score of ${result.target}: ${result.score.toFixed(3)} for the whole text${empty}. ` +
    `Method: ${method}, ${result.parameters.evaluations} inputs run.${cut}`;
  $("explain-summary").dataset.target = result.target;
  $("explain-min").textContent = `−${limit.toFixed(3)}`;
  $("explain-max").textContent = `+${limit.toFixed(3)}`;
  $("explain-legend-text").textContent = `blue lowers, red raises the score of ${result.target}`;
  $("explain-legend").hidden = false;
}

// -1 (lowers the score most) .. 0 .. +1 (raises it most): blue, near white, red, as [r, g, b].
function diverging(fraction) {
  const t = Math.max(-1, Math.min(1, fraction));
  const end = t < 0 ? [33, 102, 172] : [178, 24, 43];
  const mix = Math.abs(t);
  return end.map((channel) => Math.round(247 + (channel - 247) * mix));
}

// Whether white text reads better than dark text on this colour: WCAG's relative luminance
// below 0.18, where the contrast with white overtakes the contrast with black.
function isDark(rgb) {
  const linear = rgb.map((channel) => {
    const c = channel / 255;
    return c <= 0.04045 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
  });
  return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2] < 0.18;
}

// ---------------------------------------------------------------- helpers

// Not Math.max(...values): a 256-token map has 65,536 values, past what a call's arguments allow.
function largest(values) {
  return values.reduce((most, value) => (value > most ? value : most), 1e-9);
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function requireText(textarea, name) {
  const text = textarea.value.trim();
  if (!text) throw new ApiError(`enter ${name} first`);
  return text;
}

function inputText() {
  return requireText($("text"), "a text");
}

// ---------------------------------------------------------------- wiring

function init() {
  const keyInput = $("api-key");
  keyInput.value = localStorage.getItem(API_KEY_STORAGE) ?? "";
  keyInput.addEventListener("change", () => {
    localStorage.setItem(API_KEY_STORAGE, keyInput.value.trim());
    loadModels();
  });
  // Enter in the key field would submit (reload) the page: apply the key instead.
  $("api-key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    keyInput.dispatchEvent(new Event("change"));
  });
  idleCaption = $("view-caption").innerHTML;
  $("model").addEventListener("change", () => {
    clearError();
    onModelChange();
  });
  // Results that no longer match what the inputs say go at once, before any new request.
  $("text").addEventListener("input", () => {
    clearError();
    clearClassification();
    clearExplanation();
    clearAttention();
    clearSimilarity();
    clearRerank();
  });
  $("labels").addEventListener("input", () => {
    clearError();
    clearClassification();
    fillTargets();
  });
  $("documents").addEventListener("input", () => {
    clearError();
    clearRerank();
  });
  $("text-b").addEventListener("input", () => {
    clearError();
    clearSimilarity();
  });
  for (const control of [$("scale"), $("hide-special")]) {
    control.addEventListener("change", () => run(control, renderAttention));
  }
  $("classify").addEventListener("click", (event) => run(event.currentTarget, classify));
  $("attend").addEventListener("click", (event) => run(event.currentTarget, showAttention));
  $("compare").addEventListener("click", (event) => run(event.currentTarget, compare));
  $("rerank").addEventListener("click", (event) => run(event.currentTarget, rerank));
  $("explain").addEventListener("click", (event) => run(event.currentTarget, explain));
  for (const control of [$("explain-method"), $("explain-target")]) {
    control.addEventListener("change", clearExplanation);
  }
  for (const control of [$("layer"), $("head"), ...document.getElementsByName("view")]) {
    control.addEventListener("change", () => {
      control.dataset.touched = "1";
      run(control, renderAttention);
    });
  }
  document.addEventListener("pointerover", onPointerOver);
  let resizing = 0;
  window.addEventListener("resize", () => {
    clearTimeout(resizing);
    // Every view shown is cached, so refitting the map costs no request.
    resizing = setTimeout(() => renderAttention().catch(() => {}), 150);
  });
  loadModels();
}

init();
