/* The report's interactive lesson: the balanced one-way model's closed forms (the same formulas
   as workbench/present/lesson.py, which the tests compare this file with) drawn as inline SVG.
   Units: the within mean square MSW is 1; the page multiplies by the data's MSW where it states
   variances. No library, no network. */
(function () {
  "use strict";
  var LOG_2PI = Math.log(2 * Math.PI);

  // ------------------------------------------------------------------------------------------
  // The closed forms (lesson.Balanced)

  function model(n, m, F) {
    return { n: n, m: m, F: F, N: n * m, W: m * (n - 1), nB: F * (m - 1) };
  }

  function threshold(n, m) {
    return (4 * (n * n - 1) * m) / ((m - 1) * n * n);
  }

  function logMarginal(b, s2, t2) {
    var lam = s2 + b.n * t2;
    return -0.5 * (b.N * LOG_2PI + b.m * (b.n - 1) * Math.log(s2) + b.m * Math.log(lam) +
      b.W / s2 + b.nB / lam);
  }

  function logJoint(b, s2, t2) {
    return -0.5 * (b.N * (LOG_2PI + Math.log(s2)) + b.m * (LOG_2PI + Math.log(t2)) + b.W / s2 +
      b.nB / (s2 + b.n * t2));
  }

  function ml(b) {
    var msw = b.W / (b.m * (b.n - 1)), lam = b.nB / b.m;
    if (lam > msw) return [msw, (lam - msw) / b.n];
    return [(b.W + b.nB) / b.N, 0];
  }

  // [joint mode, saddle] as {shrinkage, sigma2, tau2, logJoint}, or null below the threshold
  function stationary(b) {
    var n = b.n;
    if (b.nB <= 0 || b.F < threshold(b.n, b.m)) return null;
    var disc = Math.max((n + 2) * (n + 2) - 4 * (n + 1) * (1 + b.W / b.nB), 0);
    return [1, -1].map(function (sign) {
      var s = (n + 2 + sign * Math.sqrt(disc)) / (2 * (n + 1));
      var s2 = (b.W + b.nB * (1 - s) * (1 - s)) / b.N;
      var t2 = (s * s2) / (n * (1 - s));
      return { shrinkage: s, sigma2: s2, tau2: t2, logJoint: logJoint(b, s2, t2) };
    });
  }

  // l maximised over tau^2 >= 0 at sigma^2: [tau^2, l]
  function marginalProfile(b, s2) {
    var lam = Math.max(b.nB / b.m, s2), t2 = (lam - s2) / b.n;
    return [t2, logMarginal(b, s2, t2)];
  }

  // h at its interior local maximum over tau^2 at sigma^2: [tau^2, h], NaNs where none
  function jointBranch(b, s2) {
    var disc = b.nB * (b.nB - 4 * b.m * s2);
    if (!(disc >= 0) || !(b.nB > 0)) return [NaN, NaN];
    var t2 = (b.nB - 2 * b.m * s2 + Math.sqrt(disc)) / (2 * b.m) / b.n;
    return [t2, logJoint(b, s2, t2)];
  }

  // the positive roots of a x^3 + p x^2 + q x + r (a > 0, r < 0): bisection on each monotone piece
  function cubicRoots(a, p, q, r) {
    function f(x) { return ((a * x + p) * x + q) * x + r; }
    var cuts = [0], d = p * p - 3 * a * q;
    if (d > 0) {
      [(-p - Math.sqrt(d)) / (3 * a), (-p + Math.sqrt(d)) / (3 * a)].forEach(function (x) {
        if (x > 0) cuts.push(x);
      });
    }
    cuts.push(1 + Math.max(Math.abs(p), Math.abs(q), Math.abs(r)) / a); // Cauchy's bound
    var roots = [];
    for (var k = 0; k + 1 < cuts.length; k++) {
      var lo = cuts[k], hi = cuts[k + 1], flo = f(lo), fhi = f(hi);
      if (flo === 0) { roots.push(lo); continue; }
      if (flo * fhi > 0) continue;
      for (var it = 0; it < 200 && hi - lo > 1e-15 * hi; it++) {
        var mid = 0.5 * (lo + hi), fm = f(mid);
        if ((fm < 0) === (flo < 0)) { lo = mid; flo = fm; } else { hi = mid; }
      }
      if (lo > 0) roots.push(0.5 * (lo + hi));
    }
    return roots;
  }

  // h maximised over sigma^2 at tau^2: [sigma^2, h] (the root of the cubic with the largest h)
  function tauPath(b, t2) {
    var c = b.n * t2;
    var roots = cubicRoots(b.N, 2 * b.N * c - b.W - b.nB, b.N * c * c - 2 * b.W * c, -b.W * c * c);
    var best = [NaN, -Infinity];
    roots.forEach(function (x) {
      var h = logJoint(b, x, t2);
      if (h > best[1]) best = [x, h];
    });
    return best;
  }

  function summary(n, m, F) {
    var b = model(n, m, F), e = ml(b), st = stationary(b), j = st && st[0];
    return {
      n: n, m: m, F: F, threshold: threshold(n, m), limit: (n - 1) / n,
      sigma2_ml: e[0], tau2_ml: e[1], interior: !!j,
      sigma2_joint: j ? j.sigma2 : null, tau2_joint: j ? j.tau2 : null,
      shrinkage: j ? j.shrinkage : null, ratio: j ? j.sigma2 / e[0] : null,
      saddle_tau2: j ? st[1].tau2 : null
    };
  }

  // Python's "{:.Ng}" for the numbers the page writes
  function g(x, p) { return String(Number(x.toPrecision(p))); }

  function sentence(n, m, F, unit, y) {
    var s = summary(n, m, F), sq = y ? " " + y + "²" : "";
    var head = "n = " + n + ", m = " + m + ", F = " + g(F, 3) + " (threshold " +
      g(s.threshold, 3) + "): ML σ² = " + g(unit * s.sigma2_ml, 4) + sq +
      (s.tau2_ml === 0 ? " with τ² = 0 (boundary)" : "");
    if (!s.interior) {
      return head + "; no interior joint mode: F is below the threshold, the log joint rises " +
        "without bound as τ → 0 and nothing stops it.";
    }
    return head + "; joint σ² = " + g(unit * s.sigma2_joint, 4) + sq + ", ratio " +
      s.ratio.toFixed(3) + " (limit (n − 1)/n = " + s.limit.toFixed(3) + ").";
  }

  var api = {
    model: model, threshold: threshold, ml: ml, stationary: stationary, summary: summary,
    sentence: sentence,
    marginalProfile: function (n, m, F, s2) { return marginalProfile(model(n, m, F), s2); },
    jointBranch: function (n, m, F, s2) { return jointBranch(model(n, m, F), s2); },
    tauPath: function (n, m, F, t2) { return tauPath(model(n, m, F), t2); }
  };
  window.wbLesson = api;

  // ------------------------------------------------------------------------------------------
  // Drawing: three small SVG plots, each W x H in its viewBox

  var SVGNS = "http://www.w3.org/2000/svg";
  var W = 420, H = 290, PAD = { l: 52, r: 20, t: 26, b: 42 };
  var BLUE = "#0072B2", VERM = "#D55E00", GREY = "#777", BLACK = "#000";

  function el(name, attrs, text) {
    var e = document.createElementNS(SVGNS, name);
    Object.keys(attrs).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function logspace(lo, hi, k) {
    var out = [], a = Math.log(lo), d = (Math.log(hi) - a) / (k - 1);
    for (var i = 0; i < k; i++) out.push(Math.exp(a + i * d));
    return out;
  }

  // ticks of a log axis: 1, 2, 5 x 10^k inside [lo, hi] (every decade when it spans many)
  function logTicks(lo, hi) {
    if (Math.log10(hi / lo) < 0.6) return linTicks(lo, hi); // a narrow window: even steps
    var out = [], steps = Math.log10(hi / lo) > 3 ? [1] : [1, 2, 5];
    for (var e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++) {
      steps.forEach(function (s) {
        var v = s * Math.pow(10, e);
        if (v >= lo * 0.999 && v <= hi * 1.001) out.push(v);
      });
    }
    return out;
  }

  function linTicks(lo, hi) {
    var span = hi - lo, step = Math.pow(10, Math.floor(Math.log10(span / 4)));
    if (span / step > 10) step *= 2;
    if (span / step > 10) step *= 2.5;
    var out = [];
    for (var v = Math.ceil(lo / step) * step; v <= hi + 1e-9 * span; v += step) {
      out.push(Math.abs(v) < 1e-12 * span ? 0 : v);
    }
    return out;
  }

  // a plot: svg cleared, axes drawn; returns {x, y} mapping data to the viewBox and a clipped
  // group `g` for the data
  function frame(svg, o) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    var x0 = PAD.l, x1 = W - PAD.r, y0 = H - PAD.b, y1 = PAD.t;
    function x(v) {
      var f = o.xlog ? Math.log(v / o.xlim[0]) / Math.log(o.xlim[1] / o.xlim[0])
        : (v - o.xlim[0]) / (o.xlim[1] - o.xlim[0]);
      return x0 + f * (x1 - x0);
    }
    function y(v) { return y0 - ((v - o.ylim[0]) / (o.ylim[1] - o.ylim[0])) * (y0 - y1); }
    var id = svg.id + "-clip";
    var defs = el("defs", {}), clip = el("clipPath", { id: id });
    clip.appendChild(el("rect", { x: x0, y: y1, width: x1 - x0, height: y0 - y1 }));
    defs.appendChild(clip);
    svg.appendChild(defs);
    svg.appendChild(el("rect", { x: x0, y: y1, width: x1 - x0, height: y0 - y1, fill: "#fff",
      stroke: "#999" }));
    (o.xlog ? logTicks(o.xlim[0], o.xlim[1]) : linTicks(o.xlim[0], o.xlim[1])).forEach(function (v) {
      svg.appendChild(el("line", { x1: x(v), x2: x(v), y1: y0, y2: y0 + 4, stroke: "#555" }));
      svg.appendChild(el("text", { x: x(v), y: y0 + 16, "text-anchor": "middle",
        "font-size": 11 }, g(v, 3)));
    });
    linTicks(o.ylim[0], o.ylim[1]).forEach(function (v) {
      svg.appendChild(el("line", { x1: x0 - 4, x2: x0, y1: y(v), y2: y(v), stroke: "#555" }));
      svg.appendChild(el("text", { x: x0 - 7, y: y(v) + 4, "text-anchor": "end",
        "font-size": 11 }, g(v, 3)));
    });
    svg.appendChild(el("text", { x: (x0 + x1) / 2, y: H - 6, "text-anchor": "middle",
      "font-size": 12 }, o.xlabel));
    svg.appendChild(el("text", { x: 13, y: (y0 + y1) / 2, "text-anchor": "middle",
      "font-size": 12, transform: "rotate(-90 13 " + (y0 + y1) / 2 + ")" }, o.ylabel));
    svg.appendChild(el("text", { x: x0, y: 16, "font-size": 12.5, "font-weight": 600 }, o.title));
    var grp = el("g", { "clip-path": "url(#" + id + ")" });
    svg.appendChild(grp);
    return { x: x, y: y, g: grp, box: [x0, x1, y1, y0] };
  }

  // a polyline through the finite points (a gap where a value is not finite)
  function line(f, xs, ys, attrs) {
    var d = "", pen = false;
    for (var i = 0; i < xs.length; i++) {
      if (!isFinite(ys[i])) { pen = false; continue; }
      var px = f.x(xs[i]), py = Math.max(-1e4, Math.min(1e4, f.y(ys[i])));
      d += (pen ? "L" : "M") + px.toFixed(2) + " " + py.toFixed(2);
      pen = true;
    }
    var a = { d: d, fill: "none", "stroke-width": 2.2 };
    Object.keys(attrs).forEach(function (k) { a[k] = attrs[k]; });
    f.g.appendChild(el("path", a));
  }

  function vline(f, v, attrs, label) {
    f.g.appendChild(el("line", Object.assign({ x1: f.x(v), x2: f.x(v), y1: f.box[2],
      y2: f.box[3], "stroke-width": 1.2 }, attrs)));
    if (label) {
      f.g.appendChild(el("text", { x: f.x(v) + 3, y: f.box[2] + 12, "font-size": 10.5,
        fill: attrs.stroke }, label));
    }
  }

  function marker(f, shape, vx, vy, color, filled, title) {
    var px = f.x(vx), py = f.y(vy), s = 5.5, e;
    var a = { fill: filled ? color : (shape === "diamond" ? "none" : "#fff"), stroke: color,
      "stroke-width": 1.8, "class": "lesson-marker" };
    if (shape === "circle") {
      e = el("circle", Object.assign({ cx: px, cy: py, r: s }, a));
    } else if (shape === "square") {
      e = el("rect", Object.assign({ x: px - s, y: py - s, width: 2 * s, height: 2 * s }, a));
    } else if (shape === "diamond") {
      e = el("path", Object.assign({ d: "M" + px + " " + (py - 7) + "l7 7l-7 7l-7 -7z" }, a));
    } else { // star
      var d = "";
      for (var k = 0; k < 10; k++) {
        var r = k % 2 ? 3.6 : 8.5, ang = -Math.PI / 2 + (k * Math.PI) / 5;
        d += (k ? "L" : "M") + (px + r * Math.cos(ang)).toFixed(2) + " " +
          (py + r * Math.sin(ang)).toFixed(2);
      }
      e = el("path", Object.assign({ d: d + "z" }, a));
    }
    if (title) e.appendChild(el("title", {}, title));
    f.g.appendChild(e);
  }

  // a line of text in the top left corner of the plot, or the bottom left with `low`
  function note(f, text, color, low) {
    f.g.appendChild(el("text", { x: f.box[0] + 8, y: low ? f.box[3] - 8 : f.box[2] + 16,
      "font-size": 11.5, fill: color || BLACK }, text));
  }

  // (a) profiles over sigma^2 / sigma^2_ML, each minus its maximum
  function drawProfiles(svg, b, s) {
    // where l falls about 6 below its maximum (l ~ -m (n - 1) log(r)^2 / 4 near it), widened
    // to show (n - 1)/n and the end of the joint's branch
    var end = b.nB / (4 * b.m) / s.sigma2_ml, d = 1.3 * Math.sqrt(24 / (b.m * (b.n - 1)));
    var lo = Math.min(Math.exp(-d), 0.92 * s.limit, s.interior ? 0.92 * s.ratio : 0.8 * end);
    lo = Math.max(0.01, lo);
    var hi = Math.min(5, Math.max(Math.exp(d), 1.1));
    var xs = logspace(lo, hi, 260);
    var lm = xs.map(function (r) { return marginalProfile(b, r * s.sigma2_ml)[1]; });
    // the branch up to its end exactly, so that its last point is drawn
    var xj = logspace(lo, Math.min(hi, end), 260).filter(function (r) { return r >= lo; });
    var lj = xj.map(function (r) { return jointBranch(b, r * s.sigma2_ml)[1]; });
    var lmax = marginalProfile(b, s.sigma2_ml)[1];
    var jmax = s.interior ? logJoint(b, s.sigma2_joint, s.tau2_joint) : Math.max.apply(null,
      lj.filter(isFinite));
    var f = frame(svg, { xlim: [lo, hi], ylim: [-6, 0.8], xlog: true,
      title: "(a) Profiles over σ²",
      xlabel: "σ² / σ²(ML), log scale", ylabel: "log density − its maximum" });
    vline(f, s.limit, { stroke: GREY, "stroke-dasharray": "2 3" }, "(n−1)/n");
    line(f, xs, lm.map(function (v) { return v - lmax; }), { stroke: BLUE });
    if (xj.length) {
      line(f, xj, lj.map(function (v) { return v - jmax; }), { stroke: VERM,
        "stroke-dasharray": "7 4" });
    }
    marker(f, "circle", 1, 0, BLUE, true, "ML: σ² = σ²(ML)");
    if (s.interior) {
      marker(f, "star", s.ratio, 0, VERM, true, "joint mode: σ² = " + g(s.ratio, 4) + " × ML");
    } else if (xj.length && end >= lo && end <= hi) {
      marker(f, "circle", end, 0, VERM, false, "end of the joint's interior branch");
      note(f, "no interior joint mode", VERM);
    } else {
      note(f, "no interior joint mode", VERM);
    }
    return f;
  }

  // (b) the log joint along tau^2 / sigma^2_ML, sigma^2 maximised
  function drawTauPath(svg, b, s) {
    var top = Math.max(s.tau2_ml, s.interior ? s.tau2_joint : 0, 1 / b.n) / s.sigma2_ml;
    var hi = 10 * top, lo = hi * 1e-5;
    var xs = logspace(lo, hi, 300);
    var hs = xs.map(function (r) { return tauPath(b, r * s.sigma2_ml)[1]; });
    var ylim, ref, low = -1;
    if (s.interior) {
      // the path's lowest point left of the mode: the saddle, or (at large F) the kink where
      // the best sigma^2 jumps to the collapsing branch; the saddle is then off the path
      for (var i = 0; xs[i] < s.tau2_joint / s.sigma2_ml; i++) {
        if (low < 0 || hs[i] < hs[low]) low = i;
      }
      ref = stationary(b)[0].logJoint;
      var depth = ref - hs[low];
      ylim = [-Math.max(2.5, 2.5 * depth) - depth, Math.max(2, 2 * depth)];
    } else {
      ref = hs[hs.length - 1];
      ylim = [-1, 10];
    }
    var f = frame(svg, { xlim: [lo, hi], ylim: ylim, xlog: true,
      title: "(b) The log joint along τ² → 0",
      xlabel: "τ² / σ²(ML), log scale",
      ylabel: s.interior ? "log joint − at the joint mode" : "log joint − at the right end" });
    if (s.tau2_ml > 0) vline(f, s.tau2_ml / s.sigma2_ml, { stroke: BLUE, "stroke-dasharray": "5 3" }, "τ² of ML");
    line(f, xs, hs.map(function (v) { return v - ref; }), { stroke: VERM });
    if (s.interior) {
      marker(f, "star", s.tau2_joint / s.sigma2_ml, 0, VERM, true, "joint mode (local maximum)");
      if (low >= 0) {
        marker(f, "circle", xs[low], hs[low] - ref, VERM, false,
          "the lowest point: past it the log joint climbs to the collapse");
      }
      note(f, "→ +∞ as τ → 0 (the funnel)", GREY, true);
    } else {
      note(f, "no interior joint mode: it only rises as τ → 0", VERM);
    }
    return f;
  }

  // (c) sigma^2_joint / sigma^2_ML against F, for this n and m
  function drawRatio(svg, b, s, data) {
    var lim = data.ranges.F, thr = threshold(b.n, b.m);
    var f = frame(svg, { xlim: lim, ylim: [0.4, 1.05], xlog: true,
      title: "(c) σ² joint / σ² ML against F",
      xlabel: "F = MSB / MSW, log scale", ylabel: "σ²(joint) / σ²(ML)" });
    f.g.appendChild(el("rect", { x: f.box[0], y: f.box[2], width: f.x(Math.min(thr, lim[1])) -
      f.box[0], height: f.box[3] - f.box[2], fill: "#eee" }));
    f.g.appendChild(el("text", { x: f.box[0] + 6, y: f.box[3] - 8, "font-size": 10.5,
      fill: GREY }, "no interior mode"));
    var xs = logspace(Math.max(thr, lim[0]), lim[1], 200);
    var ys = xs.map(function (F) { var t = summary(b.n, b.m, F); return t.ratio === null ? NaN : t.ratio; });
    line(f, xs, ys, { stroke: VERM });
    vline(f, thr, { stroke: GREY }, "threshold");
    f.g.appendChild(el("line", { x1: f.box[0], x2: f.box[1], y1: f.y(s.limit), y2: f.y(s.limit),
      stroke: BLACK, "stroke-dasharray": "2 3" }));
    f.g.appendChild(el("text", { x: f.box[1] - 4, y: f.y(s.limit) + 13, "text-anchor": "end",
      "font-size": 10.5 }, "(n − 1)/n = " + s.limit.toFixed(3)));
    var F = Math.min(Math.max(s.F, lim[0]), lim[1]);
    if (s.interior) marker(f, "circle", F, s.ratio, VERM, true, "the sliders' F");
    else marker(f, "circle", F, 0.42, VERM, false, "the sliders' F: no interior mode");
    if (data) {
      var d = summary(data.n, data.m, data.F_data);
      var Fd = Math.min(Math.max(data.F_data, lim[0]), lim[1]);
      marker(f, "diamond", Fd, d.interior ? d.ratio : 0.42, BLACK, false,
        "these data: n = " + data.n + ", m = " + data.m + ", F = " + g(data.F_data, 3));
    }
    return f;
  }

  // ------------------------------------------------------------------------------------------
  // The page: sliders -> state -> text line and plots

  function setup(root) {
    var data = JSON.parse(document.getElementById("lesson-data").textContent);
    var inN = root.querySelector("#lesson-n"), inM = root.querySelector("#lesson-m");
    var inF = root.querySelector("#lesson-f"), out = root.querySelector("#lesson-line");
    var fr = data.ranges.F, STEPS = Number(inF.max);
    function fromPos(p) { return fr[0] * Math.pow(fr[1] / fr[0], p / STEPS); }
    function toPos(F) { return Math.round((STEPS * Math.log(F / fr[0])) / Math.log(fr[1] / fr[0])); }
    var state = { n: data.n, m: data.m, F: data.F };

    function draw() {
      var b = model(state.n, state.m, state.F), s = summary(state.n, state.m, state.F);
      inN.value = state.n; inM.value = state.m; inF.value = toPos(state.F);
      root.querySelector("#lesson-n-out").textContent = state.n;
      root.querySelector("#lesson-m-out").textContent = state.m;
      root.querySelector("#lesson-f-out").textContent = g(state.F, 3);
      out.textContent = sentence(state.n, state.m, state.F, data.unit, data.y);
      drawProfiles(root.querySelector("#lesson-profile"), b, s);
      drawTauPath(root.querySelector("#lesson-tau"), b, s);
      drawRatio(root.querySelector("#lesson-ratio"), b, s, data);
      var at = state.n === data.n && state.m === data.m && state.F === data.F;
      root.querySelector("#lesson-where").textContent = at ? "These are the report's data."
        : "Moved away from the report's data (◆ in (c) marks them).";
    }
    inN.addEventListener("input", function () { state.n = Number(inN.value); draw(); });
    inM.addEventListener("input", function () { state.m = Number(inM.value); draw(); });
    inF.addEventListener("input", function () { state.F = fromPos(Number(inF.value)); draw(); });
    root.querySelector("#lesson-reset").addEventListener("click", function () {
      state = { n: data.n, m: data.m, F: data.F };
      draw();
    });
    api.set = function (n, m, F) { state = { n: n, m: m, F: F }; draw(); };
    api.state = function () { return { n: state.n, m: state.m, F: state.F }; };
    root.classList.add("lesson-live");
    draw();
  }

  var root = document.getElementById("lesson");
  if (root && document.getElementById("lesson-data")) setup(root);
})();
