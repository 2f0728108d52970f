// Starts Swagger UI on the docs page. A file of its own, not an inline script, so
// the page's Content-Security-Policy can refuse every inline script.
"use strict";

(function () {
  var root = document.getElementById("swagger-ui");
  SwaggerUIBundle({
    domNode: root,
    // The page names the document's URL, so this file needs no route of its own.
    url: root.dataset.openapiUrl,
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    // No badge from the public validator: it would send the document's address to
    // a third party (and the policy refuses images from elsewhere).
    validatorUrl: null,
  });
})();
