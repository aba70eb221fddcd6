// zoomwire admin page: the one script of our own (no inline code: the CSP forbids it).
//
// Browsers keep a page they leave in their back/forward cache with its
// Server-Sent Events stream still open, and allow only six connections to one
// server over HTTP/1.1: a few pages visited, and the next one waits for a
// free connection. So the page's streams close when it is hidden, and a page
// brought back from that cache reloads (it is stale anyway).
(function () {
  "use strict";
  var open = htmx.createEventSource;
  var sources = [];
  htmx.createEventSource = function (url) {
    var source = open(url);
    sources.push(source);
    return source;
  };
  window.addEventListener("pagehide", function () {
    sources.forEach(function (source) { source.close(); });
    sources = [];
  });
  window.addEventListener("pageshow", function (event) {
    if (event.persisted) {
      window.location.reload();
    }
  });
})();

// A run that changes between the page's render and the opening of its
// stream sends its news to nobody, and the page would show the old state
// until the next change: once the stream is open, each live part is
// fetched once more.
(function () {
  "use strict";
  document.addEventListener("htmx:sseOpen", function () {
    document.querySelectorAll("[hx-get][hx-trigger*='sse:']").forEach(function (part) {
      htmx.ajax("GET", part.getAttribute("hx-get"), { target: part, swap: "innerHTML" });
    });
  });
})();
