"use strict";
(function () {
  const meta = JSON.parse(document.getElementById("wv-meta").textContent);
  const $ = (id) => document.getElementById(id);
  const root = $("wv"), heat = $("heat"), legend = $("legend"), slider = $("slider"), playBtn = $("play");
  const R = meta.rows, C = meta.cols, N = R * C, T = meta.steps.length;
  const cm = meta.cmap;
  const lut = Uint8Array.from(atob(cm.lut), (c) => c.charCodeAt(0));
  let frames = [];          // one Float32Array per frame
  let current = -1, timer = null, hover = null;

  // ---- number formatting: Python's str.format mini-language for one float (the GIF's fmt)
  function pyRepr(x) {
    if (Number.isNaN(x)) return "nan";
    if (!Number.isFinite(x)) return x > 0 ? "inf" : "-inf";
    return null;
  }
  function expFix(s) {   // JS "1.5e-5" -> Python "1.5e-05"
    return s.replace(/e([+-])(\d)$/, "e$10$2");
  }
  function toFixedEven(a, p) {   // toFixed rounds exact ties up; Python rounds them to even
    const s = a.toFixed(p), y = a * Math.pow(10, p);
    if (y > 2 ** 52 || Number.isInteger(y) || !Number.isInteger(y * 2)) return s;
    const lo = Math.floor(y), n = lo % 2 === 0 ? lo : lo + 1;
    const digits = String(n).padStart(p + 1, "0");
    return p === 0 ? digits : digits.slice(0, -p) + "." + digits.slice(-p);
  }
  function fmtG(x, p, upper) {
    p = p === 0 ? 1 : p;
    if (x === 0) return "0";
    const e = parseInt(x.toExponential(p - 1).split("e")[1], 10);
    let s;
    if (e < -4 || e >= p) {
      s = x.toExponential(p - 1);
      let [m, ex] = s.split("e");
      if (m.indexOf(".") >= 0) m = m.replace(/0+$/, "").replace(/\.$/, "");
      s = expFix(m + "e" + ex);
    } else {
      s = toFixedEven(x, Math.max(0, p - 1 - e));
      if (s.indexOf(".") >= 0) s = s.replace(/0+$/, "").replace(/\.$/, "");
    }
    return upper ? s.toUpperCase() : s;
  }
  function shortest32(x) {     // the shortest decimal that reads back as this float32
    const special = pyRepr(x);
    if (special !== null) return special;
    for (let p = 1; p <= 9; p++) {
      const s = x.toPrecision(p);
      if (Math.fround(Number(s)) === x) return String(Number(s));
    }
    return String(x);
  }
  function fmt(x, sp = meta.spec) {   // like grid.format_value: nan/inf spelled out, else the pattern
    const special = pyRepr(x);
    if (special !== null) return special;
    if (!sp) return shortest32(x);
    const t = sp.type, p = sp.prec, a = Math.abs(x);
    let body;
    if (t === "f" || t === "F") body = toFixedEven(a, p === null ? 6 : p);
    else if (t === "e" || t === "E") {
      body = expFix(a.toExponential(p === null ? 6 : p));
      if (t === "E") body = body.toUpperCase();
    } else if (t === "%") body = toFixedEven(a * 100, p === null ? 6 : p) + "%";
    else if (t === "g" || t === "G" || t === "n") body = fmtG(a, p === null ? 6 : p, t === "G");
    else body = p === null ? shortest32(a) : fmtG(a, p, false);
    if (sp.group) {
      const parts = body.split(".");
      parts[0] = parts[0].replace(/\B(?=(\d{3})+(?!\d))/g, sp.group);
      body = parts.join(".");
    }
    // A value that rounds to zero gets no minus sign: never "-0.00" (grid.format_value does the same).
    const negative = (x < 0 || Object.is(x, -0)) && /[1-9]/.test(body);
    let sign = negative ? "-" : sp.sign === "+" ? "+" : sp.sign === " " ? " " : "";
    const pad = sp.width - sign.length - body.length;
    if (pad > 0) {
      if (sp.zero) body = "0".repeat(pad) + body;
      else sign = " ".repeat(pad) + sign;
    }
    return sp.pre + sign + body + sp.post;
  }

  // ---- colours: matplotlib's Normalize + Colormap lookup, with its under/over/bad colours
  function limits(i) { return meta.limits ? meta.limits[i] : [meta.vmin, meta.vmax]; }
  function colourIndex(v, lo, hi) {      // -3 bad, -2 under, -1 over, else LUT index
    if (!Number.isFinite(v)) return -3;
    let x = (v - lo) / (hi - lo) * cm.n;
    if (x === cm.n) x = cm.n - 1;
    if (x < 0) return -2;
    if (x >= cm.n) return -1;
    return Math.floor(x);
  }
  function rgbOf(k) {
    if (k === -3) return cm.bad;
    if (k === -2) return cm.under;
    if (k === -1) return cm.over;
    return [lut[3 * k], lut[3 * k + 1], lut[3 * k + 2]];
  }
  function darkText(k) {
    if (k < 0) return cm.extremes_dark[k === -3 ? 2 : k === -2 ? 0 : 1];
    return cm.dark.charCodeAt(k) === 49;
  }

  // ---- layout, fixed for every frame
  const FONT = "11px 'DejaVu Sans', system-ui, sans-serif";
  const g = heat.getContext("2d");
  g.font = FONT;
  const textW = Math.max(...[meta.vmin, meta.vmax, -Math.abs(meta.vmax), -Math.abs(meta.vmin)]
    .map((v) => g.measureText(fmt(v)).width), g.measureText("-inf").width);
  let rowLabW = 0, colLabW = 0;
  for (const label of meta.rowLabels) rowLabW = Math.max(rowLabW, g.measureText(label).width);
  for (const label of meta.colLabels) colLabW = Math.max(colLabW, g.measureText(label).width);
  const left = Math.ceil(rowLabW + 10), top = Math.ceil(colLabW * 0.72 + 16);
  // Fit the page (the MLflow UI's preview pane is narrow), leaving room for the legend.
  const avail = Math.max(240, (document.documentElement.clientWidth || 900) - 28 - 92) - left - 4;
  let cell = Math.max(2, Math.min(56, Math.floor(Math.min(avail / C, 620 / R))));
  if (meta.annotate === true) cell = Math.max(cell, Math.ceil(textW + 8));
  const annotate = meta.annotate !== false && cell >= textW + 6 && cell >= 16;
  const rowStep = Math.max(1, Math.ceil(14 / cell)), colStep = Math.max(1, Math.ceil(14 / cell));
  const gridW = C * cell, gridH = R * cell;
  heat.width = left + gridW + 4;
  heat.height = top + gridH + 4;
  heat.dataset.left = left; heat.dataset.top = top; heat.dataset.cell = cell;
  const legendH = Math.max(gridH, 160);
  legend.width = 86; legend.height = top + legendH + 8;
  const off = document.createElement("canvas");
  off.width = C; off.height = R;
  const offCtx = off.getContext("2d");
  const pixels = offCtx.createImageData(C, R);

  function drawLabels() {
    g.fillStyle = "#262626"; g.font = FONT;
    g.textAlign = "right"; g.textBaseline = "middle";
    for (let r = 0; r < R; r += rowStep) g.fillText(meta.rowLabels[r], left - 5, top + (r + 0.5) * cell);
    for (let c = 0; c < C; c += colStep) {
      g.save();
      g.translate(left + (c + 0.5) * cell, top - 5);
      g.rotate(-Math.PI / 4);
      g.textAlign = "left"; g.textBaseline = "middle";
      g.fillText(meta.colLabels[c], 0, 0);
      g.restore();
    }
  }

  function drawLegend(lo, hi) {
    const l = legend.getContext("2d");
    l.clearRect(0, 0, legend.width, legend.height);
    const x0 = 6, w = 16, y0 = top, h = legendH;
    for (let y = 0; y < h; y++) {
      const v = hi - (y + 0.5) / h * (hi - lo);
      const rgb = rgbOf(colourIndex(v, lo, hi));
      l.fillStyle = `rgb(${rgb[0]},${rgb[1]},${rgb[2]})`;
      l.fillRect(x0, y0 + y, w, 1);
    }
    l.fillStyle = "#262626"; l.font = FONT; l.textAlign = "left"; l.textBaseline = "middle";
    for (let k = 0; k <= 4; k++) {
      const v = hi - k / 4 * (hi - lo), y = y0 + k / 4 * (h - 1);
      l.fillRect(x0 + w, Math.round(y), 4, 1);
      l.fillText(Number(v.toPrecision(3)).toString(), x0 + w + 7, y);
    }
    legend.dataset.lo = lo; legend.dataset.hi = hi;
  }

  function draw(i) {
    const vals = frames[i];
    const [lo, hi] = limits(i);
    const d = pixels.data, idx = new Int16Array(N);
    for (let k = 0; k < N; k++) {
      const ci = colourIndex(vals[k], lo, hi), rgb = rgbOf(ci);
      idx[k] = ci;
      d[4 * k] = rgb[0]; d[4 * k + 1] = rgb[1]; d[4 * k + 2] = rgb[2]; d[4 * k + 3] = 255;
    }
    offCtx.putImageData(pixels, 0, 0);
    g.clearRect(0, 0, heat.width, heat.height);
    g.imageSmoothingEnabled = false;
    g.drawImage(off, left, top, gridW, gridH);
    if (cell >= 6) {   // white grid between cells, as in the GIF
      g.fillStyle = "#fff";
      const lw = Math.max(1, Math.round(cell * 0.06));
      for (let c = 1; c < C; c++) g.fillRect(left + c * cell - lw / 2, top, lw, gridH);
      for (let r = 1; r < R; r++) g.fillRect(left, top + r * cell - lw / 2, gridW, lw);
    }
    if (annotate) {
      g.font = FONT; g.textAlign = "center"; g.textBaseline = "middle";
      for (let r = 0; r < R; r++) for (let c = 0; c < C; c++) {
        const k = r * C + c;
        g.fillStyle = darkText(idx[k]) ? "#262626" : "#ffffff";
        g.fillText(fmt(vals[k]), left + (c + 0.5) * cell, top + (r + 0.5) * cell);
      }
    }
    drawLabels();
    const prev = current >= 0 ? limits(current) : null;
    if (!prev || prev[0] !== lo || prev[1] !== hi || current < 0) drawLegend(lo, hi);
  }

  function show(i) {
    i = Math.max(0, Math.min(T - 1, i));
    draw(i);
    current = i;
    slider.value = String(i);
    $("title").textContent = meta.titles[i] || `${meta.name}  ·  step ${meta.steps[i]}`;
    $("stepinfo").textContent = `step ${meta.steps[i]}  ·  frame ${i + 1}/${T}`;
    root.dataset.frame = String(i);
    root.dataset.step = String(meta.steps[i]);
    if (hover) showTip(hover.r, hover.c, hover.x, hover.y);
  }

  // ---- hover: labels and the stored value of the cell under the pointer
  function span(i, block, total, labels) {
    if (block <= 1) return labels[i];
    const a = i * block, b = Math.min(total, a + block) - 1;
    return `${labels[i]} (${a}–${b})`;
  }
  function showTip(r, c, x, y) {
    const v = frames[current][r * C + c];
    const tip = $("tip"), box = $("box");
    const rect = heat.getBoundingClientRect(), sx = rect.width / heat.width, sy = rect.height / heat.height;
    tip.textContent = `row ${span(r, meta.block[0], meta.matrix[0], meta.rowLabels)}  ·  ` +
      `col ${span(c, meta.block[1], meta.matrix[1], meta.colLabels)}\n` +
      `step ${meta.steps[current]}:  ${fmt(v)}\nstored value (float32): ${shortest32(v)}`;
    tip.dataset.row = r; tip.dataset.col = c; tip.dataset.value = shortest32(v);
    tip.style.display = "block";
    const stage = $("stage").getBoundingClientRect();
    tip.style.left = `${Math.min(x - stage.left + 14, stage.width - tip.offsetWidth)}px`;
    tip.style.top = `${y - stage.top + 16}px`;
    box.style.display = "block";
    box.style.left = `${(left + c * cell) * sx + rect.left - stage.left}px`;
    box.style.top = `${(top + r * cell) * sy + rect.top - stage.top}px`;
    box.style.width = `${cell * sx}px`; box.style.height = `${cell * sy}px`;
  }
  heat.addEventListener("mousemove", (ev) => {
    if (current < 0) return;
    const rect = heat.getBoundingClientRect();
    const px = (ev.clientX - rect.left) * heat.width / rect.width - left;
    const py = (ev.clientY - rect.top) * heat.height / rect.height - top;
    const c = Math.floor(px / cell), r = Math.floor(py / cell);
    if (px < 0 || py < 0 || r >= R || c >= C) { hideTip(); return; }
    hover = { r, c, x: ev.clientX, y: ev.clientY };
    showTip(r, c, ev.clientX, ev.clientY);
  });
  function hideTip() { hover = null; $("tip").style.display = "none"; $("box").style.display = "none"; }
  heat.addEventListener("mouseleave", hideTip);

  // ---- playback and keys
  function stop() {
    if (timer !== null) clearTimeout(timer);
    timer = null; playBtn.textContent = "Play"; root.dataset.playing = "0";
  }
  function tick() {
    show((current + 1) % T);
    timer = setTimeout(tick, current === T - 1 ? Math.max(meta.frameMs, meta.holdLastMs) : meta.frameMs);
  }
  function play() {
    if (T < 2) return;
    playBtn.textContent = "Pause"; root.dataset.playing = "1";
    timer = setTimeout(tick, meta.frameMs);
  }
  playBtn.addEventListener("click", () => (timer === null ? play() : stop()));
  slider.addEventListener("input", () => { stop(); show(parseInt(slider.value, 10)); });
  document.addEventListener("keydown", (ev) => {
    if (current < 0) return;
    const moves = { ArrowRight: 1, ArrowDown: 1, ArrowLeft: -1, ArrowUp: -1 };
    if (ev.key in moves) {
      if (ev.target === slider) return;   // the slider moves itself and fires "input"
      stop(); show(current + moves[ev.key]);
    } else if (ev.key === "Home") { stop(); show(0); }
    else if (ev.key === "End") { stop(); show(T - 1); }
    else if (ev.key === " " && ev.target !== playBtn) { timer === null ? play() : stop(); }
    else return;
    ev.preventDefault();
  });

  // ---- decoding: base64 → inflate → byte planes → XOR with the previous frame → float32
  async function decode() {
    const raw = Uint8Array.from(atob(document.getElementById("wv-data").textContent.replace(/\s+/g, "")),
                                (c) => c.charCodeAt(0));
    let bytes = raw;
    if (meta.codec === "deflate") {
      if (typeof DecompressionStream === "undefined") {
        throw new Error("this browser cannot inflate the data (it has no DecompressionStream)");
      }
      const stream = new Blob([raw]).stream().pipeThrough(new DecompressionStream("deflate"));
      bytes = new Uint8Array(await new Response(stream).arrayBuffer());
    }
    if (bytes.length !== T * N * 4) throw new Error(`data holds ${bytes.length} bytes, expected ${T * N * 4}`);
    const prev = new Uint32Array(N);
    for (let t = 0; t < T; t++) {
      const base = t * N * 4, bits = new Uint32Array(N);
      for (let k = 0; k < N; k++) {
        bits[k] = (bytes[base + k] | (bytes[base + N + k] << 8) | (bytes[base + 2 * N + k] << 16) |
                   (bytes[base + 3 * N + k] << 24)) ^ prev[k];
        prev[k] = bits[k];
      }
      frames.push(new Float32Array(bits.buffer));
    }
  }

  slider.max = String(T - 1);
  const pooled = meta.block[0] > 1 || meta.block[1] > 1;
  $("note").textContent = `${meta.name}: ${R}×${C} cells` + (meta.note ? `; ${meta.note}` : "") +
    `; colormap ${meta.cmapName}; values stored as float32` + (pooled ? "; hover shows each cell's block" : "") +
    ".  ← → step, Home/End, space plays.";
  // A small read-only handle for scripts and tests driving the page.
  window.weightviz = { format: fmt, shortest: shortest32, show, frame: () => current, frames: T };
  decode().then(() => { show(0); root.dataset.ready = "1"; }, (err) => {
    $("title").textContent = "";
    $("error").textContent = `cannot show the data: ${err.message}`;
    root.dataset.ready = "error";
  });
})();
