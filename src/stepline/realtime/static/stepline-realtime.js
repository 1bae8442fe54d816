/* Stepline realtime for web pages: no build step, no dependency. Load it with
 *   <script src="http://127.0.0.1:8288/v1/realtime/stepline-realtime.js"></script>
 * then subscribe with a token your backend minted (client.realtime_token(channel, topics) in Python):
 *   const sub = SteplineRealtime.subscribe({
 *     token: () => fetch("/token").then(r => r.text()),  // or a token string; a function is called again to reconnect
 *     since: 0,               // replay the messages still kept first (0: all; an id: those after it; omit: live only)
 *     onMessage(msg) {},      // {id, kind, channel, topic, data, run_id, created_at}
 *     onStatus(state, why) {} // "open", "reconnecting" (why: the server's reason, if it gave one), "closed"
 *   });
 *   sub.close();
 * Options: server (default: where this script came from), channel and topics (narrow the token's topics).
 * The connection is server-sent events; after a drop it reconnects with a fresh token from after the last message
 * received, so nothing is missed or repeated within the server's replay window (docs/realtime.md); a live-only
 * subscription that received nothing yet reconnects live-only. */
(function (global) {
  "use strict";
  var here = document.currentScript && document.currentScript.src ? new URL(document.currentScript.src).origin : "";

  function subscribe(options) {
    var server = (options.server || here || "").replace(/\/+$/, "");
    var lastId = options.since === undefined || options.since === null ? null : Number(options.since);
    var seen = new Set();
    var source = null;
    var closed = false;
    var reason = null;
    var delay = 500;
    var timer = null;

    function status(state, why) {
      if (options.onStatus) options.onStatus(state, why);
    }

    function token() {
      return Promise.resolve(typeof options.token === "function" ? options.token() : options.token);
    }

    function connect() {
      timer = null;
      if (closed) return;
      token().then(function (key) {
        if (closed) return;
        var url = new URL(server + "/v1/realtime/sse");
        if (key) url.searchParams.set("token", key);
        if (options.channel) url.searchParams.set("channel", options.channel);
        (options.topics || []).forEach(function (t) { url.searchParams.append("topic", t); });
        if (lastId !== null) url.searchParams.set("since", String(lastId));
        source = new EventSource(url.toString());
        source.onopen = function () { delay = 500; reason = null; status("open"); };
        source.onmessage = function (event) {
          var msg;
          try { msg = JSON.parse(event.data); } catch (e) { return; }
          if (msg.kind === "closing") { reason = msg.data && msg.data.reason; return; }
          if (typeof msg.id === "number") {
            if (seen.has(msg.id)) return;
            seen.add(msg.id);
            if (seen.size > 5000) seen.delete(seen.values().next().value);
            lastId = lastId === null ? msg.id : Math.max(lastId, msg.id);
          }
          if (options.onMessage) options.onMessage(msg);
        };
        source.onerror = function () { retry(); };
      }, function (err) { retry(String(err)); });
    }

    function retry(why) {
      if (source) { source.close(); source = null; }
      if (closed || timer) return;
      status("reconnecting", why || reason);
      timer = setTimeout(connect, delay);
      delay = Math.min(delay * 2, 15000);
    }

    connect();
    return {
      close: function () {
        closed = true;
        if (timer) clearTimeout(timer);
        if (source) source.close();
        status("closed");
      },
      get lastId() { return lastId; }
    };
  }

  global.SteplineRealtime = { subscribe: subscribe };
})(window);
