/* hub.js: first-party browser snippet for hub (README, "Browser snippet"). No dependencies, ES2017.
 * <script src="/hub/static/hub.js" data-endpoint="/hub/api/v1/events" data-key="BROWSER_INGEST_KEY" defer></script>
 * hub.track(name, properties, {eventId, user, region, pixel: {event, data, custom}}) -> Promise<eventId>
 * The same event_id goes to the Pixel (fbq eventID) and to hub, so Meta deduplicates the two copies. */
(function (w, d) {
  "use strict";
  var s = d.currentScript || {};
  var ds = s.dataset || {};
  var cfg = w.hubConfig || {};
  var endpoint = cfg.endpoint || ds.endpoint || "/api/v1/events";
  var key = cfg.key || ds.key || "";

  function cookie(name) {
    var m = d.cookie.match(new RegExp("(?:^|; )" + name + "=([^;]*)"));
    return m ? decodeURIComponent(m[1]) : undefined;
  }

  function uuid() {
    var c = w.crypto;
    if (c && c.randomUUID) return c.randomUUID();
    var b = c.getRandomValues(new Uint8Array(16));
    return Array.prototype.map.call(b, function (x) { return (x + 256).toString(16).slice(1); }).join("");
  }

  function track(name, properties, options) {
    var o = options || {};
    var eventId = String(o.eventId || uuid());
    var user = Object.assign({}, o.user);
    // Meta's browser cookies: hub forwards them as fbp/fbc (Meta: send them on every event).
    var fbp = cookie("_fbp");
    var fbc = cookie("_fbc");
    if (fbp && !user.fbp) user.fbp = fbp;
    if (fbc && !user.fbc) user.fbc = fbc;
    if (o.pixel && typeof w.fbq === "function") {
      // Meta dedup key = event name + event_id: the Pixel's eventID must equal hub's event_id.
      w.fbq(o.pixel.custom ? "trackCustom" : "track", o.pixel.event, o.pixel.data || {}, { eventID: eventId });
    }
    var context = {};
    if (typeof navigator.globalPrivacyControl === "boolean") context.gpc = navigator.globalPrivacyControl;
    if (o.region) context.region = o.region;
    var body = {
      event_id: eventId,
      event: name,
      occurred_at: Math.floor(Date.now() / 1000),
      action_source: "website",
      source_url: w.location.href,
      user: user,
      properties: properties || {},
      context: context
    };
    // keepalive: the request survives a navigation away (a click on "buy" that leaves the page).
    return fetch(endpoint, {
      method: "POST",
      keepalive: true,
      credentials: "omit",
      headers: { "Content-Type": "application/json", Authorization: "Bearer " + key, "X-Hub-Client": "browser" },
      body: JSON.stringify(body)
    }).then(function () { return eventId; }, function () { return eventId; });
  }

  w.hub = { track: track, eventId: uuid };
})(window, document);
