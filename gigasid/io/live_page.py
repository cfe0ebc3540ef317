"""The live page of a running job: HTML that polls a JSON status and swaps a snapshot image.

The page and its two data paths are :func:`~gigasid.io.serve.serve` routes under ``/live/``:

* ``/live/`` - the page; every second it fetches ``status.json`` and, only when the status
  names a new snapshot version, loads ``snapshot.png?v=N`` off-screen and swaps it in (so the
  picture never flickers and an unchanged snapshot is never fetched twice);
* ``/live/status.json`` - the state, progress and ETA (whatever ``status()`` returns);
* ``/live/snapshot.png`` - the current picture (whatever ``snapshot()`` returns).

This module knows nothing about run directories: the caller passes the two functions (the CLI
passes a :class:`gigasid.engine.live.LiveView`'s). The page needs no network beyond the server
that served it and keeps a record of what it showed in ``window.gigasidLive`` (for tests).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from gigasid.io.serve import Response, Route

__all__ = ["LIVE_PREFIX", "live_routes"]

#: Where the live page lives on the server (the rest of the URL space serves files).
LIVE_PREFIX = "/live/"

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="gigasid">
<link rel="icon" href="data:,">
<title>gigasid live view</title>
<style>
  html, body { margin: 0; height: 100%; background: #1b1b1b; color: #e8e8e8;
               font: 13px/1.4 system-ui, sans-serif; }
  body { display: flex; flex-direction: column; }
  header { padding: 8px 12px; background: #262626; }
  header div { margin: 2px 0; }
  #gigasid-live-run { font-weight: bold; }
  #gigasid-live-bar { width: 240px; vertical-align: middle; }
  #gigasid-live-note { color: #f0c674; }
  #gigasid-live-error { color: #ff8080; }
  #gigasid-live-viewer a { color: #8ab4f8; }
  main { flex: 1; min-height: 0; display: flex; align-items: center; justify-content: center;
         padding: 8px; }
  /* fit the window whatever the scale's size; coarse scales are shown as their pixels */
  main img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }
</style>
</head>
<body>
<header>
  <div id="gigasid-live-run">gigasid live view</div>
  <div id="gigasid-live-state">connecting...</div>
  <div><progress id="gigasid-live-bar" max="100" value="0"></progress>
       <span id="gigasid-live-progress"></span></div>
  <div id="gigasid-live-note"></div>
  <div id="gigasid-live-viewer"></div>
  <div id="gigasid-live-error"></div>
</header>
<main><img id="gigasid-live-image" alt="no snapshot yet" src="data:,"></main>
<noscript><p>The live view needs JavaScript.</p></noscript>
<script>
(function () {
  "use strict";
  var POLL_MS = 1000;
  // What the page did, for whoever wants to know (the browser test reads it).
  var live = { polls: 0, swaps: 0, shown: null, pending: null, status: null, done: false,
               states: [], progress: [], swapped: [], errors: [] };
  window.gigasidLive = live;
  function el(id) { return document.getElementById(id); }
  function text(id, value) { el(id).textContent = value || ""; }
  function remember(list, value) {
    if (list[list.length - 1] !== value) { list.push(value); }
  }
  function describe(s) {
    var parts = [s.state];
    if (s.scale !== undefined && s.scale !== null) {
      if (s.num_samples > 1) { parts.push("sample " + (s.sample + 1) + " of " + s.num_samples); }
      parts.push("scale " + s.scale + " (finest 0, coarsest " + (s.num_scales - 1) + "), " +
                 s.scale_shape[1] + "\u00d7" + s.scale_shape[0] + " px");
      if (s.steps !== null) { parts.push("step " + s.step + "/" + s.steps); }
      parts.push(s.tiles_done + " of " + s.tiles_total + " tiles finished");
    }
    return parts.join(" \u00b7 ");
  }
  function render(s) {
    text("gigasid-live-run", "gigasid live view: " + s.run + (s.app ? " (" + s.app + ")" : ""));
    var state = describe(s);
    text("gigasid-live-state", state);
    remember(live.states, state);
    var pct = typeof s.percent === "number" ? s.percent : 0;
    el("gigasid-live-bar").value = pct;
    var progress = pct.toFixed(1) + " %" +
      (s.eta ? " \u00b7 about " + s.eta + " of tile work left" : "");
    text("gigasid-live-progress", progress);
    remember(live.progress, progress);
    text("gigasid-live-note", s.note);
    var viewer = el("gigasid-live-viewer");
    if (s.finished && s.viewer && !viewer.firstChild) {
      var a = document.createElement("a");
      a.href = "/" + s.viewer;
      a.textContent = "finished: open the deep-zoom viewer";
      viewer.appendChild(a);
    } else if (s.finished && !s.viewer) {
      text("gigasid-live-viewer", "finished (no deep-zoom viewer in this run: " +
           "gigasid export RUN --format dzi --format viewer writes one)");
    }
    document.title = (s.finished ? "finished" : pct.toFixed(0) + " %") + " \u00b7 gigasid live";
  }
  function swap(version) {
    // Load off-screen, then replace the element: the old picture stays until the new one
    // is complete.
    var next = new Image();
    live.pending = version;
    next.onload = function () {
      if (live.pending !== version) { return; }
      next.id = "gigasid-live-image";
      next.alt = "snapshot " + version;
      el("gigasid-live-image").replaceWith(next);
      live.shown = version;
      live.pending = null;
      live.swaps += 1;
      // which picture came in, and what the run was doing then
      live.swapped.push({ version: version, state: live.status && live.status.state });
    };
    next.onerror = function () {
      live.errors.push("snapshot " + version + " did not load");
      if (live.pending === version) { live.pending = null; }
    };
    next.src = "snapshot.png?v=" + encodeURIComponent(version);
  }
  function poll() {
    fetch("status.json", { cache: "no-store" }).then(function (r) {
      if (!r.ok) { throw new Error("status.json: HTTP " + r.status); }
      return r.json();
    }).then(function (s) {
      live.polls += 1;
      live.status = s;
      text("gigasid-live-error", "");
      render(s);
      if (s.snapshot !== live.shown && s.snapshot !== live.pending) { swap(s.snapshot); }
      if (s.finished && live.shown === s.snapshot) {
        live.done = true;  // nothing will change any more
      } else {
        setTimeout(poll, POLL_MS);
      }
    }).catch(function (err) {
      live.errors.push(String(err));
      text("gigasid-live-error", "lost contact with the server (" + err + "); retrying");
      setTimeout(poll, 2 * POLL_MS);
    });
  }
  poll();
})();
</script>
</body>
</html>
"""


def live_routes(status: Callable[[], dict[str, Any]], snapshot: Callable[[], bytes],
                prefix: str = LIVE_PREFIX) -> dict[str, Route]:
    """The server routes of the live page.

    Parameters
    ----------
    status
        Returns the JSON status. The page reads ``state``, ``run``, ``app``, ``percent``,
        ``eta``, ``finished``, ``snapshot`` (a version that changes with the picture) and,
        when present, ``sample``/``num_samples``, ``scale``/``num_scales``/``scale_shape``,
        ``step``/``steps``, ``tiles_done``/``tiles_total``, ``note`` and ``viewer`` (the
        deep-zoom viewer's path on the server).
    snapshot
        Returns the current picture as PNG bytes.
    prefix
        URL path of the page (ending with ``/``).

    Returns
    -------
    dict
        ``{path: route}`` for :func:`gigasid.io.serve.serve`'s ``routes``.
    """

    def page(_query: str) -> Response:
        return 200, "text/html; charset=utf-8", _PAGE.encode("utf-8")

    def status_json(_query: str) -> Response:
        return 200, "application/json", json.dumps(status(), default=str).encode("utf-8")

    def snapshot_png(_query: str) -> Response:
        return 200, "image/png", snapshot()

    return {prefix: page, prefix + "index.html": page, prefix + "status.json": status_json,
            prefix + "snapshot.png": snapshot_png}
