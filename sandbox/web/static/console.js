// Jinyu console: the little JavaScript the pages use. Everything works without it.
(function () {
  "use strict";
  // Filter selects submit their form when changed.
  document.querySelectorAll("select.autosubmit").forEach(function (el) {
    el.addEventListener("change", function () { if (el.form) { el.form.submit(); } });
  });
  // A decision form is sent once: its buttons are disabled after the first submit.
  var form = document.getElementById("decision-form");
  if (form) {
    form.addEventListener("submit", function (event) {
      var pressed = event.submitter;
      if (pressed && pressed.name) {
        var keep = document.createElement("input");
        keep.type = "hidden";
        keep.name = pressed.name;
        keep.value = pressed.value;
        form.appendChild(keep);
      }
      form.querySelectorAll("button").forEach(function (b) { b.disabled = true; });
    });
  }
})();
