// slidewatch serve: the map page. Leaflet (vendored), no other library, no network but this
// server. A georeferenced scene is shown in Web Mercator; a scene without a usable CRS as a
// plain image (L.CRS.Simple: latitude = -row, longitude = column).
(function () {
  "use strict";

  var params = new URLSearchParams(window.location.search);
  var TOKEN = params.get("token");
  var state = {
    config: null, jobs: [], job: null, view: null, map: null, sceneLayer: null,
    probLayer: null, detLayer: null, features: [], layers: {}, selected: null,
    sortKey: "max_prob", sortDir: -1, drawing: null, pollTimer: null
  };
  var $ = function (id) { return document.getElementById(id); };

  // ---------------------------------------------------------------- server

  function withToken(url) {
    if (!TOKEN) { return url; }
    return url + (url.indexOf("?") >= 0 ? "&" : "?") + "token=" + encodeURIComponent(TOKEN);
  }

  function api(path, opts) {
    opts = opts || {};
    opts.headers = Object.assign({}, opts.headers || {});
    if (TOKEN) { opts.headers.Authorization = "Bearer " + TOKEN; }
    if (opts.json !== undefined) {
      opts.body = JSON.stringify(opts.json);
      opts.headers["Content-Type"] = "application/json";
      delete opts.json;
    }
    return fetch(path, opts).then(function (r) {
      var ct = r.headers.get("content-type") || "";
      var body = ct.indexOf("json") >= 0 ? r.json() : r.text();
      return body.then(function (b) {
        if (!r.ok) {
          var e = new Error((b && b.error) || (r.status + " " + r.statusText));
          e.status = r.status; e.body = b;
          throw e;
        }
        return b;
      });
    });
  }

  function fmt(v, digits) {
    if (v === null || v === undefined || Number.isNaN(v)) { return "–"; }
    return Number(v).toFixed(digits);
  }

  function esc(text) {
    var d = document.createElement("span");
    d.textContent = text === null || text === undefined ? "" : String(text);
    return d.innerHTML;
  }

  // ---------------------------------------------------------------- colour ramp

  function hexToRgb(h) {
    return [parseInt(h.slice(1, 3), 16), parseInt(h.slice(3, 5), 16), parseInt(h.slice(5, 7), 16)];
  }

  function rampColor(p) {
    var stops = (state.config && state.config.legend.stops) || [];
    if (p === null || p === undefined || !stops.length) { return "#00bcd4"; }
    p = Math.max(0, Math.min(1, p));
    for (var i = 1; i < stops.length; i++) {
      if (p <= stops[i].value) {
        var a = hexToRgb(stops[i - 1].color), b = hexToRgb(stops[i].color);
        var t = (p - stops[i - 1].value) / (stops[i].value - stops[i - 1].value || 1);
        var c = a.map(function (x, k) { return Math.round(x + (b[k] - x) * t); });
        return "rgb(" + c.join(",") + ")";
      }
    }
    return stops[stops.length - 1].color;
  }

  function drawLegend() {
    var stops = state.config.legend.stops;
    $("legend-bar").style.backgroundImage = "linear-gradient(to right, " + stops.map(function (s) {
      var c = hexToRgb(s.color), a = s.alpha === undefined ? 1 : s.alpha;
      return "rgba(" + c.join(",") + "," + a + ") " + (s.value * 100) + "%";
    }).join(", ") + ")";
  }

  // ---------------------------------------------------------------- scenes, models, uploads

  function loadCatalogue(select) {
    return Promise.all([api("/api/scenes"), api("/api/models")]).then(function (res) {
      var scenes = res[0], models = res[1];
      var sel = $("scene");
      sel.innerHTML = "";
      scenes.scenes.concat(scenes.uploads).forEach(function (s) {
        var o = document.createElement("option");
        o.value = s.name; o.textContent = s.label;
        sel.appendChild(o);
      });
      if (select) { sel.value = select; }
      var dem = $("dem"), demWas = dem.value;
      dem.innerHTML = "<option value=''>none</option>";
      Array.prototype.forEach.call(sel.options, function (o) { dem.appendChild(o.cloneNode(true)); });
      dem.value = demWas;
      if (dem.selectedIndex < 0) { dem.selectedIndex = 0; }
      var ms = $("model");
      ms.innerHTML = "";
      models.models.forEach(function (m) {
        var o = document.createElement("option");
        o.value = m.name;
        o.textContent = m.name + (m.usable ? " (" + m.task + ", " + m.input_size + " px)" : " (unreadable)");
        o.disabled = !m.usable;
        ms.appendChild(o);
      });
    });
  }

  function upload(file) {
    var limit = state.config.max_upload_mb * 1048576;
    $("upload-status").textContent = "";
    if (file.size > limit) {
      $("upload-status").textContent = file.name + ": larger than the server's limit of " +
        state.config.max_upload_mb + " MB";
      return;
    }
    var form = new FormData();
    form.append("file", file, file.name);
    $("upload-status").textContent = "uploading " + file.name + " …";
    api("/api/uploads", { method: "POST", body: form }).then(function (rec) {
      $("upload-status").textContent = "uploaded " + rec.name + " (" + rec.width + " x " +
        rec.height + ", " + rec.bands + " bands" + (rec.crs ? ", " + rec.crs : ", no CRS") + ")";
      return loadCatalogue(rec.scene);
    }).catch(function (e) { $("upload-status").textContent = "upload refused: " + e.message; });
  }

  function startScan() {
    $("scan-error").textContent = "";
    var scene = $("scene").value, model = $("model").value;
    if (!scene || !model) { $("scan-error").textContent = "choose a scene and a model"; return; }
    api("/api/jobs", { method: "POST", json: { scene: scene, model: model, dem: $("dem").value || null } })
      .then(function () { return pollJobs(); })
      .catch(function (e) { $("scan-error").textContent = e.message; });
  }

  // ---------------------------------------------------------------- jobs

  function renderJobs() {
    var tbody = $("jobs").tBodies[0];
    tbody.innerHTML = "";
    state.jobs.forEach(function (j) {
      var tr = document.createElement("tr");
      tr.dataset.job = j.id;
      if (state.job && state.job.id === j.id) { tr.className = "open"; }
      var pct = 0;
      if (j.status === "done") { pct = 100; }
      else if (j.progress && j.progress.total) { pct = Math.round(100 * j.progress.rows / j.progress.total); }
      var what = j.status === "done" ? j.detections + " detections" : j.status;
      if (j.status === "failed") { what = "failed: " + (j.error || ""); }
      tr.innerHTML = "<td>" + esc(j.scene_label) + "<br><small>" + esc(j.model) +
        (j.dem ? ", DEM " + esc(j.dem_label || j.dem) : "") + "</small></td>" +
        "<td><span class='progress'><div style='width:" + pct + "%'></div></span><br>" +
        "<small class='job-status'>" + esc(what) + (j.interrupted && j.status !== "done" ? " (resuming)" : "") +
        "</small></td><td></td>";
      var cell = tr.cells[2];
      if (j.status === "queued" || j.status === "running") {
        var b = document.createElement("button");
        b.textContent = "Cancel"; b.type = "button";
        b.addEventListener("click", function () {
          api("/api/jobs/" + j.id + "/cancel", { method: "POST" }).then(pollJobs);
        });
        cell.appendChild(b);
      } else if (j.status === "done") {
        var o = document.createElement("button");
        o.textContent = "Open"; o.type = "button";
        o.addEventListener("click", function () { openJob(j.id); });
        cell.appendChild(o);
      }
      tbody.appendChild(tr);
    });
  }

  function pollJobs() {
    return api("/api/jobs").then(function (res) {
      var before = {};
      state.jobs.forEach(function (j) { before[j.id] = j.status; });
      state.jobs = res.jobs;
      renderJobs();
      var active = state.jobs.some(function (j) { return j.status === "queued" || j.status === "running"; });
      clearTimeout(state.pollTimer);
      state.pollTimer = setTimeout(pollJobs, active ? 1000 : 5000);
      // a scan that just finished opens when nothing is open yet
      state.jobs.forEach(function (j) {
        if (j.status === "done" && before[j.id] && before[j.id] !== "done" && !state.job) { openJob(j.id); }
      });
      return res.jobs;
    }).catch(function () {
      clearTimeout(state.pollTimer);
      state.pollTimer = setTimeout(pollJobs, 5000);
    });
  }

  // ---------------------------------------------------------------- the map

  function toLatLng(c) {  // page coordinates -> Leaflet
    return state.view.georeferenced ? L.latLng(c[1], c[0]) : L.latLng(-c[1], c[0]);
  }

  function fromLatLng(ll) {  // Leaflet -> page coordinates
    return state.view.georeferenced ? [ll.lng, ll.lat] : [ll.lng, -ll.lat];
  }

  function makeMap(view, jobId) {
    if (state.map) { state.map.remove(); state.map = null; }
    $("map-empty").hidden = true;
    var base = "/api/jobs/" + jobId + "/tiles/";
    var map, bounds, tileOpts;
    if (view.georeferenced) {
      map = L.map("map", { preferCanvas: true, maxZoom: 22 });
      var b = view.bounds;  // west, south, east, north
      bounds = L.latLngBounds([[b[1], b[0]], [b[3], b[2]]]);
      tileOpts = { maxZoom: 22, bounds: bounds.pad(0.01) };
    } else {
      var zmax = view.maxzoom;
      map = L.map("map", { crs: L.CRS.Simple, preferCanvas: true, minZoom: -zmax - 1, maxZoom: 4 });
      bounds = L.latLngBounds([[-view.height, 0], [0, view.width]]);
      tileOpts = { zoomOffset: zmax, minZoom: -zmax - 1, maxZoom: 4, noWrap: true,
                   bounds: bounds, minNativeZoom: -zmax, maxNativeZoom: 4 };
    }
    state.sceneLayer = L.tileLayer(withToken(base + "scene/{z}/{x}/{y}.png"), tileOpts).addTo(map);
    state.probLayer = L.tileLayer(withToken(base + "probability/{z}/{x}/{y}.png"),
      Object.assign({ opacity: $("opacity").value / 100 }, tileOpts)).addTo(map);
    map.fitBounds(bounds);
    map.attributionControl.setPrefix("Leaflet");
    state.map = map;
    map.on("click", onMapClick);
  }

  function openJob(jobId) {
    cancelDrawing();
    return api("/api/jobs/" + jobId + "/view").then(function (view) {
      state.job = view.job; state.view = view; state.selected = null;
      $("selected").hidden = true;
      makeMap(view, jobId);
      renderJobs();
      $("draw-new").disabled = false;
      ["export-geojson", "export-gpkg"].forEach(function (id) { $(id).classList.remove("disabled"); });
      $("export-geojson").href = withToken("/api/jobs/" + jobId + "/reviews.geojson");
      $("export-gpkg").href = withToken("/api/jobs/" + jobId + "/reviews.gpkg");
      var url = new URL(window.location.href);
      url.searchParams.set("job", jobId);
      window.history.replaceState(null, "", url.toString());
      return loadDetections();
    }).catch(function (e) { $("scan-error").textContent = e.message; });
  }

  function styleOf(f) {
    var p = f.properties, s = p.status;
    var colour = p.origin === "drawn" ? "#00bcd4" : rampColor(p.mean_prob);
    var style = { color: colour, weight: 2, fillColor: colour, fillOpacity: 0.15, dashArray: null };
    if (s === "accepted" || s === "redrawn" || s === "added") { style.weight = 3; style.fillOpacity = 0.3; }
    if (s === "rejected" || s === "deleted") { style.dashArray = "4 4"; style.fillOpacity = 0.02; }
    if (state.selected === f.id) { style.weight = 4; style.color = "#00e5ff"; }
    return style;
  }

  function loadDetections() {
    var jobId = state.job.id;
    return api("/api/jobs/" + jobId + "/detections").then(function (fc) {
      if (!state.job || state.job.id !== jobId) { return; }
      state.features = fc.features;
      if (state.detLayer) { state.map.removeLayer(state.detLayer); }
      state.layers = {};
      state.detLayer = L.geoJSON(fc, {
        coordsToLatLng: function (c) { return toLatLng(c); },
        style: styleOf,
        onEachFeature: function (f, layer) {
          state.layers[f.id] = layer;
          layer.on("click", function (ev) {
            if (state.drawing) { return; }
            L.DomEvent.stopPropagation(ev);
            select(f.id, false);
          });
        }
      }).addTo(state.map);
      renderTable();
      if (state.selected !== null) { showSelected(); }
    });
  }

  // ---------------------------------------------------------------- the table

  function renderTable() {
    var key = state.sortKey, dir = state.sortDir;
    var rows = state.features.slice().sort(function (a, b) {
      var x = key === "fid" ? a.id : a.properties[key], y = key === "fid" ? b.id : b.properties[key];
      if (x === y) { return a.id - b.id; }
      if (x === null || x === undefined) { return 1; }
      if (y === null || y === undefined) { return -1; }
      return (x < y ? -1 : 1) * dir;
    });
    var tbody = $("detections").tBodies[0];
    tbody.innerHTML = "";
    rows.forEach(function (f) {
      var p = f.properties, tr = document.createElement("tr");
      tr.dataset.fid = f.id;
      if (state.selected === f.id) { tr.className = "selected"; }
      tr.innerHTML = "<td>" + f.id + "</td><td class='num'>" + fmt(p.area_m2, 0) +
        "</td><td class='num'>" + fmt(p.mean_prob, 3) + "</td><td class='num'>" + fmt(p.max_prob, 3) +
        "</td><td class='num'>" + (p.slope_mean_deg == null ? "" : fmt(p.slope_mean_deg, 1)) +
        "</td><td class='status-" + esc(p.status) + "'>" + esc(p.status) + "</td>";
      tr.addEventListener("click", function () { select(f.id, true); });
      tbody.appendChild(tr);
    });
    $("det-count").textContent = "(" + state.features.length + ")";
    Array.prototype.forEach.call($("detections").tHead.rows[0].cells, function (th) {
      th.classList.remove("sorted-asc", "sorted-desc");
      if (th.dataset.key === key) { th.classList.add(dir > 0 ? "sorted-asc" : "sorted-desc"); }
    });
  }

  function sortBy(key) {
    if (state.sortKey === key) { state.sortDir = -state.sortDir; }
    else { state.sortKey = key; state.sortDir = key === "fid" || key === "status" ? 1 : -1; }
    renderTable();
  }

  // ---------------------------------------------------------------- selection and review

  function feature(fid) {
    return state.features.find(function (f) { return f.id === fid; }) || null;
  }

  function select(fid, zoom) {
    state.selected = fid;
    if (state.detLayer) { state.detLayer.setStyle(styleOf); }
    renderTable();
    var layer = state.layers[fid];
    if (zoom && layer) { state.map.fitBounds(layer.getBounds().pad(1.5), { maxZoom: state.view.georeferenced ? 18 : 2 }); }
    showSelected();
    $("review-msg").textContent = "";
  }

  function showSelected() {
    var f = feature(state.selected);
    if (!f) { $("selected").hidden = true; return; }
    var p = f.properties;
    $("selected").hidden = false;
    $("sel-id").textContent = "#" + f.id + (p.origin === "drawn" ? " (drawn)" : "");
    $("chip").src = withToken("/api/jobs/" + state.job.id + "/detections/" + f.id + "/chip.png?v=" + p.version);
    if (state.camFor !== f.id + ":" + p.version) { $("cam").hidden = true; $("cam").removeAttribute("src"); }
    $("sel-info").textContent = "status " + p.status + ", version " + p.version +
      (p.reviewer ? ", by " + p.reviewer + " at " + p.reviewed_at : "") +
      "\narea " + fmt(p.area_m2, 0) + " m² (" + fmt(p.area_px, 0) + " px), mean p " + fmt(p.mean_prob, 3) +
      ", max p " + fmt(p.max_prob, 3) +
      (p.slope_mean_deg == null ? "" : ", slope " + fmt(p.slope_mean_deg, 1) + "° mean, " + fmt(p.slope_max_deg, 1) + "° max") +
      (p.note ? "\nnote: " + p.note : "");
    $("note").value = p.note || "";
  }

  function reviewer() {
    var name = $("reviewer").value.trim();
    if (!name) { $("review-msg").textContent = "give your name as reviewer first"; return null; }
    try { window.localStorage.setItem("slidewatch.reviewer", name); } catch (e) { /* private mode */ }
    return name;
  }

  function afterReview(promise) {
    return promise.then(function (f) {
      $("review-msg").textContent = "saved (version " + f.properties.version + ")";
      state.selected = f.id;
      return loadDetections();
    }).catch(function (e) {
      $("review-msg").textContent = (e.status === 409 ? "conflict: " : "not saved: ") + e.message;
      if (e.status === 409) { return loadDetections(); }
    });
  }

  function sendReview(status, geometry) {
    var f = feature(state.selected), name = reviewer();
    if (!f || !name) { return; }
    var body = { version: f.properties.version, status: status, reviewer: name, note: $("note").value };
    if (geometry) { body.geometry = geometry; }
    if (f.properties.origin === "drawn" && status === "rejected") { body.status = "deleted"; }
    if (f.properties.origin === "drawn" && status === "accepted") { body.status = "added"; }
    afterReview(api("/api/jobs/" + state.job.id + "/detections/" + f.id, { method: "PUT", json: body }));
  }

  // ---------------------------------------------------------------- drawing

  function startDrawing(kind) {
    if (!state.map) { return; }
    if (!reviewer()) { return; }
    cancelDrawing();
    state.drawing = { kind: kind, points: [], shape: null };
    state.map.doubleClickZoom.disable();
    $("draw-what").textContent = kind === "add" ? "New landslide" : "Redraw #" + state.selected;
    $("draw-bar").hidden = false;
    $("map").style.cursor = "crosshair";
  }

  function onMapClick(ev) {
    var d = state.drawing;
    if (!d) { return; }
    d.points.push(ev.latlng);
    redrawShape();
  }

  function redrawShape() {
    var d = state.drawing;
    if (d.shape) { state.map.removeLayer(d.shape); }
    d.shape = L.polygon(d.points, { color: "#00e5ff", dashArray: "6 3", weight: 2 }).addTo(state.map);
  }

  function cancelDrawing() {
    var d = state.drawing;
    if (d && d.shape && state.map) { state.map.removeLayer(d.shape); }
    state.drawing = null;
    $("draw-bar").hidden = true;
    $("map").style.cursor = "";
    if (state.map) { state.map.doubleClickZoom.enable(); }
  }

  function finishDrawing() {
    var d = state.drawing;
    if (!d || d.points.length < 3) { $("draw-what").textContent = "at least 3 corners"; return; }
    var ring = d.points.map(fromLatLng);
    ring.push(ring[0]);
    var geometry = { type: "Polygon", coordinates: [ring] };
    var kind = d.kind, name = reviewer();
    cancelDrawing();
    if (!name) { return; }
    if (kind === "redraw") {
      sendReview("redrawn", geometry);
    } else {
      afterReview(api("/api/jobs/" + state.job.id + "/detections", {
        method: "POST", json: { geometry: geometry, reviewer: name, note: $("note").value }
      }));
    }
  }

  // ---------------------------------------------------------------- start

  function init() {
    try { $("reviewer").value = window.localStorage.getItem("slidewatch.reviewer") || ""; } catch (e) { /* */ }
    $("start").addEventListener("click", startScan);
    $("upload").addEventListener("change", function () { if (this.files[0]) { upload(this.files[0]); } });
    $("opacity").addEventListener("input", function () {
      if (state.probLayer) { state.probLayer.setOpacity(this.value / 100); }
    });
    Array.prototype.forEach.call(document.querySelectorAll("#detections th.sortable"), function (th) {
      th.addEventListener("click", function () { sortBy(th.dataset.key); });
    });
    Array.prototype.forEach.call(document.querySelectorAll("button.review"), function (b) {
      b.addEventListener("click", function () { sendReview(b.dataset.status, null); });
    });
    $("redraw").addEventListener("click", function () { if (state.selected !== null) { startDrawing("redraw"); } });
    $("draw-new").addEventListener("click", function () { startDrawing("add"); });
    $("show-cam").addEventListener("click", function () {
      var f = feature(state.selected);
      if (!f) { return; }
      state.camFor = f.id + ":" + f.properties.version;
      $("cam").src = withToken("/api/jobs/" + state.job.id + "/detections/" + f.id + "/gradcam.png?v=" + f.properties.version);
      $("cam").hidden = false;
    });
    $("cam").addEventListener("error", function () {
      $("cam").hidden = true;
      $("review-msg").textContent = "no Grad-CAM for this model (see slidewatch explain)";
    });
    $("draw-finish").addEventListener("click", finishDrawing);
    $("draw-cancel").addEventListener("click", cancelDrawing);
    $("draw-undo").addEventListener("click", function () {
      if (state.drawing && state.drawing.points.length) { state.drawing.points.pop(); redrawShape(); }
    });
    api("/api/config").then(function (cfg) {
      state.config = cfg;
      if (!$("reviewer").value) { $("reviewer").value = cfg.reviewer || ""; }
      drawLegend();
      return loadCatalogue();
    }).then(pollJobs).then(function (jobs) {
      var want = params.get("job");
      var done = (jobs || []).filter(function (j) { return j.status === "done"; });
      if (want && done.some(function (j) { return j.id === want; })) { return openJob(want); }
      if (done.length) { return openJob(done[0].id); }
    }).catch(function (e) { $("scan-error").textContent = e.message; });
  }

  document.addEventListener("DOMContentLoaded", init);
})();
