// The OpenAPI document of this server in the vendored Swagger UI (no CDN).
(function () {
  "use strict";
  var token = new URLSearchParams(window.location.search).get("token");
  window.ui = SwaggerUIBundle({
    url: "/openapi.json" + (token ? "?token=" + encodeURIComponent(token) : ""),
    dom_id: "#swagger-ui",
    deepLinking: true,
    requestInterceptor: function (req) {
      if (token) { req.headers.Authorization = "Bearer " + token; }
      return req;
    }
  });
})();
