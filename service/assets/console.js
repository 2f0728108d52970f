// The console's only script (service/console): live updates of the parts of a page
// marked data-live, and focus on the message after an action. The pages work without
// it: every action is a form that posts and comes back with a message.
//
// A page that changes lives says how on <body>: data-live-stream, the service's
// event stream to follow (an EventSource; the browser sends the console's cookie),
// with data-live-events, the event types; data-live-poll, seconds between two
// refreshes anyway (the only way when the service has no stream, or it fails).
// A refresh fetches the page again and replaces each live part whose content
// changed, keeping the keyboard focus where it was.
"use strict";

(function () {
  var message = document.querySelector("[data-flash]");
  if (message) {
    message.focus();
  }

  var parts = document.querySelectorAll("[data-live]");
  if (!parts.length) {
    return;
  }
  var body = document.body;
  var url = body.dataset.liveUrl || window.location.href;
  var pollSeconds = Number(body.dataset.livePoll) || 5;
  var busy = false;
  var again = false;
  var timer = null;

  function swap(html) {
    var fresh = new DOMParser().parseFromString(html, "text/html");
    parts.forEach(function (part) {
      var replacement = fresh.getElementById(part.id);
      if (!replacement || replacement.innerHTML === part.innerHTML) {
        return;
      }
      var focused = document.activeElement;
      var focusId = focused && part.contains(focused) ? focused.id : null;
      part.innerHTML = replacement.innerHTML;
      if (focusId) {
        var same = document.getElementById(focusId);
        if (same) {
          same.focus();
        }
      }
    });
  }

  function refresh() {
    if (busy) {
      again = true;
      return;
    }
    busy = true;
    fetch(url, { credentials: "same-origin", cache: "no-store", headers: { "X-Console-Live": "1" } })
      .then(function (response) {
        if (response.redirected) {
          // Signed out meanwhile: the page itself now leads to the sign-in.
          window.location.reload();
          return null;
        }
        return response.ok ? response.text() : null;
      })
      .then(function (html) {
        if (html) {
          swap(html);
        }
      })
      .catch(function () {
        // The service is out of reach for now; the next refresh tries again.
      })
      .then(function () {
        busy = false;
        if (again) {
          again = false;
          refresh();
        }
      });
  }

  function poll() {
    if (timer) {
      window.clearInterval(timer);
    }
    timer = window.setInterval(function () {
      if (!document.hidden) {
        refresh();
      }
    }, pollSeconds * 1000);
  }

  var streamUrl = body.dataset.liveStream;
  var source = null;

  function follow() {
    source = new EventSource(streamUrl);
    var pending = null;
    var onEvent = function () {
      // Many events at once (a top-up of 15) make one refresh.
      if (pending === null) {
        pending = window.setTimeout(function () {
          pending = null;
          refresh();
        }, 150);
      }
    };
    (body.dataset.liveEvents || "").split(" ").forEach(function (type) {
      if (type) {
        source.addEventListener(type, onEvent);
      }
    });
    source.onmessage = onEvent;
    source.onerror = function () {
      if (source.readyState === EventSource.CLOSED) {
        // Refused (a session that ended or expired: a refresh renews it) or gone:
        // poll faster, and try the stream again in a while.
        source = null;
        pollSeconds = 3;
        poll();
        window.setTimeout(function () {
          if (source === null) {
            follow();
          }
        }, 30000);
      }
    };
  }

  if (streamUrl && window.EventSource) {
    follow();
  }
  poll();
  document.addEventListener("visibilitychange", function () {
    if (!document.hidden) {
      refresh();
    }
  });
})();
